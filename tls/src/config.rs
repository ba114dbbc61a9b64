//! The `tls:` section of a component's config, and the rustls configs it yields for the
//! component's listeners ([`ServerTls`]) and for its calls to other components.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

use crate::identity::{Identities, Role, Roles};
use crate::keys::{KeyFiles, read_certs};
use crate::verify::RoleVerifier;

/// `tls:` — serve HTTPS (and gRPC over TLS) with this certificate; absent, listeners speak
/// plain HTTP. With `ca`, mutual TLS inside the cluster: the component asks its clients for a
/// certificate of that CA (endpoints then admit callers by role), and presents this
/// certificate when it calls other components, whom it verifies against the same CA.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first (a Kubernetes TLS secret's `tls.crt`).
    pub cert: PathBuf,
    /// PEM private key, PKCS#8, PKCS#1 or SEC1 (a Kubernetes TLS secret's `tls.key`).
    pub key: PathBuf,
    /// PEM bundle of the cluster CA (a cert-manager secret's `ca.crt`): turns on mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Extra subject alternative names (URI or DNS) → role, besides `spiffe://shoal/<role>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub identities: BTreeMap<String, Role>,
}

/// Why a `tls:` section cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("config field `tls.{field}`: cannot read {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("config field `tls.{field}`: {} is not valid PEM: {source}", path.display())]
    Pem {
        field: &'static str,
        path: PathBuf,
        source: pem::Error,
    },
    #[error("config field `tls.{field}`: {} holds no PEM certificate", path.display())]
    NoCertificate { field: &'static str, path: PathBuf },
    #[error("config field `tls.key`: {} holds no PEM private key", path.display())]
    NoKey { path: PathBuf },
    #[error("config field `tls`: the certificate and key cannot be used together: {0}")]
    Rejected(#[source] rustls::Error),
    #[error("config field `tls.ca`: {0}")]
    Ca(String),
}

/// What a listener needs to serve TLS: the rustls config (certificate reloaded on change) and,
/// with mutual TLS, how to read a client's roles from its certificate.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// `Some` when client certificates are checked against the cluster CA.
    pub identities: Option<Arc<Identities>>,
}

/// A `tls:` section with its files read once: every listener and client built from it shares
/// one certificate pair (one reload watch) and one CA bundle.
#[derive(Debug, Clone)]
pub struct LoadedTls {
    config: TlsConfig,
    keys: Arc<KeyFiles>,
    roots: Option<Arc<RootCertStore>>,
}

impl LoadedTls {
    /// Reads the certificate pair and the CA bundle; a missing or bad file is an error naming
    /// its field.
    pub fn load(config: &TlsConfig) -> Result<LoadedTls, TlsError> {
        crate::install_crypto_provider();
        Ok(LoadedTls {
            keys: Arc::new(KeyFiles::load(&config.cert, &config.key)?),
            roots: config
                .ca
                .as_deref()
                .map(|ca| config.roots(ca))
                .transpose()?,
            config: config.clone(),
        })
    }

    /// The listener config: HTTP/2 and HTTP/1.1 by ALPN, the certificate reloaded when its
    /// files change. With `ca`, clients are asked for a certificate of the CA; one that offers
    /// none still connects (health probes, metrics scrapers), and endpoints decide by
    /// [`crate::Caller`] what it may do.
    pub fn server(&self) -> Result<ServerTls, TlsError> {
        let keys = Arc::clone(&self.keys);
        let (mut config, identities) = match &self.roots {
            None => (
                ServerConfig::builder()
                    .with_no_client_auth()
                    .with_cert_resolver(keys),
                None,
            ),
            Some(roots) => {
                let verifier = WebPkiClientVerifier::builder(Arc::clone(roots))
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Ca(e.to_string()))?;
                let config = ServerConfig::builder()
                    .with_client_cert_verifier(verifier)
                    .with_cert_resolver(keys);
                (config, Some(Arc::new(self.config.identities())))
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            identities,
        })
    }

    /// The config for calling other components, or `None` without `ca` (no mutual TLS: calls
    /// go as their URLs say). Servers must chain to the CA and name one of `servers`; this
    /// component presents its certificate (reloaded on change). `alpn` is what the caller
    /// speaks (`h2` only for gRPC).
    pub fn client(&self, servers: Roles, alpn: &[&[u8]]) -> Option<Arc<ClientConfig>> {
        let roots = self.roots.as_ref()?;
        let verifier = RoleVerifier::new(Arc::clone(roots), self.config.identities(), servers);
        let mut config = ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::clone(&self.keys) as _);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Some(Arc::new(config))
    }

    /// Whether calls to other components use TLS with the cluster CA.
    pub fn mutual(&self) -> bool {
        self.roots.is_some()
    }
}

impl TlsConfig {
    /// The files of a Kubernetes TLS Secret mounted at `dir` (`tls.crt`, `tls.key`, `ca.crt`),
    /// with mutual TLS.
    pub fn in_dir(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: Some(dir.join("ca.crt")),
            identities: BTreeMap::new(),
        }
    }

    /// [`LoadedTls::server`] of this section, its files read now.
    pub fn server(&self) -> Result<ServerTls, TlsError> {
        LoadedTls::load(self)?.server()
    }

    /// [`LoadedTls::client`] of this section, its files read now.
    pub fn client(
        &self,
        servers: Roles,
        alpn: &[&[u8]],
    ) -> Result<Option<Arc<ClientConfig>>, TlsError> {
        Ok(LoadedTls::load(self)?.client(servers, alpn))
    }

    /// Whether calls to other components use TLS with the cluster CA.
    pub fn mutual(&self) -> bool {
        self.ca.is_some()
    }

    fn identities(&self) -> Identities {
        Identities::new(self.identities.clone())
    }

    pub(crate) fn roots(&self, ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs("ca", ca)? {
            roots
                .add(cert)
                .map_err(|e| TlsError::Ca(format!("{}: {e}", ca.display())))?;
        }
        Ok(Arc::new(roots))
    }
}

pub(crate) fn pem_error(field: &'static str, path: &Path, error: pem::Error) -> TlsError {
    match error {
        pem::Error::Io(source) => TlsError::Read {
            field,
            path: path.to_owned(),
            source,
        },
        source => TlsError::Pem {
            field,
            path: path.to_owned(),
            source,
        },
    }
}
