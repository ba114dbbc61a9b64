//! A certificate chain and key read from PEM files and read again when the files change, so a
//! rotated certificate (cert-manager renews into the same Secret) is used by the next handshake
//! without a restart. Used as the server's certificate and as the client's identity.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{TlsError, pem_error};
use crate::watch::FileWatch;

pub(crate) struct KeyFiles {
    cert: PathBuf,
    key: PathBuf,
    watch: FileWatch,
    current: Mutex<Arc<CertifiedKey>>,
}

impl KeyFiles {
    /// Reads the pair now; a missing, unreadable or mismatched pair is an error.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<KeyFiles, TlsError> {
        let watch = FileWatch::new([cert.to_owned(), key.to_owned()]);
        let loaded = read_pair(cert, key)?;
        Ok(KeyFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            watch,
            current: Mutex::new(Arc::new(loaded)),
        })
    }

    /// The pair to present now, read again first if the files changed since the last look.
    /// A changed pair that does not load (half written, key and certificate not matching yet)
    /// keeps the previous one in use until the files change again.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        if self.watch.changed() {
            self.reload();
        }
        Arc::clone(&shoal_core::lock(&self.current))
    }

    /// Looks at the files now, whenever they were last looked at.
    #[cfg(test)]
    pub(crate) fn check_now(&self) {
        if self.watch.changed_now() {
            self.reload();
        }
    }

    fn reload(&self) {
        match read_pair(&self.cert, &self.key) {
            Ok(key) => {
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                *shoal_core::lock(&self.current) = Arc::new(key);
            }
            Err(error) => tracing::warn!(
                %error,
                "TLS certificate files changed but do not load; keeping the previous pair"
            ),
        }
    }
}

impl fmt::Debug for KeyFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for KeyFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for KeyFiles {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs("cert", cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: key.to_owned(),
        },
        error => pem_error("key", key, error),
    })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    // Also checks that the key belongs to the first certificate.
    CertifiedKey::from_der(certs, private, &provider).map_err(TlsError::Rejected)
}

/// Every certificate of a PEM file; none is an error naming `field`.
pub(crate) fn read_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| pem_error(field, path, error))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            field,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}
