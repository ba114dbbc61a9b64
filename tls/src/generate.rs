//! Issuing a cluster CA and a certificate per component, for `shoal devcluster --tls` and for
//! tests. Production clusters use cert-manager or their own PKI; the layout written here is a
//! Kubernetes TLS Secret's (`tls.crt`, `tls.key`, `ca.crt`).

use std::path::Path;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType,
};

use crate::{Role, TlsConfig};

/// A freshly generated CA.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// One issued certificate and its key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Authority {
    pub fn new() -> Result<Authority, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = common_name("Shoal cluster CA");
        let pem = params.self_signed(&key)?.pem();
        Ok(Authority {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `names` (DNS names or IP addresses) naming `role` as
    /// `spiffe://shoal/<role>` (no role: a certificate of the CA that names none).
    pub fn issue(&self, role: Option<Role>, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        // rcgen gives every certificate the same default subject; a leaf whose subject equals
        // its issuer's looks self-signed to OpenSSL (curl refuses it), so each gets its own.
        params.distinguished_name =
            common_name(role.map_or("Shoal component", |role| role.as_str()));
        if let Some(role) = role {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(role.default_uri())?));
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `role` on 127.0.0.1 and localhost into `dir` (`tls.crt`,
    /// `tls.key`, `ca.crt`) and returns the `tls:` config that uses it with mutual TLS.
    pub fn write(&self, dir: &Path, role: Role) -> std::io::Result<TlsConfig> {
        let issued = self
            .issue(Some(role), &["127.0.0.1", "localhost"])
            .map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let config = TlsConfig::in_dir(dir);
        if let Some(ca) = &config.ca {
            std::fs::write(ca, &self.pem)?;
        }
        std::fs::write(&config.cert, issued.cert_pem)?;
        std::fs::write(&config.key, issued.key_pem)?;
        Ok(config)
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}
