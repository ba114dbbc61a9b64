//! TLS: the `tls:` config section of a listener (a PEM certificate chain and key). Serving HTTPS
//! is [`crate::http::serve_tls`]'s job; the process-wide rustls crypto provider is installed by
//! `shoal-http-client` (re-exported here as [`install_crypto_provider`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

pub use shoal_http_client::install_crypto_provider;

/// A client that opens a connection and never finishes the handshake is dropped after this
/// long; a real client on a slow link completes the few round trips well within it.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `tls:`: serve HTTPS with this certificate. Absent, the listener speaks plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first (a Kubernetes TLS secret's `tls.crt`).
    pub cert: PathBuf,
    /// PEM private key, PKCS#8, PKCS#1 or SEC1 (a Kubernetes TLS secret's `tls.key`).
    pub key: PathBuf,
}

/// Why a `tls:` section cannot be served.
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
    #[error("config field `tls.cert`: {} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("config field `tls.key`: {} holds no PEM private key", path.display())]
    NoKey { path: PathBuf },
    #[error("config field `tls`: the certificate and key cannot be used together: {0}")]
    Rejected(#[source] rustls::Error),
}

impl TlsConfig {
    /// Loads the certificate chain and key into a server config offering HTTP/2 and HTTP/1.1.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        install_crypto_provider();
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|error| pem_error("cert", &self.cert, error))?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|error| match error {
            pem::Error::NoItemsFound => TlsError::NoKey {
                path: self.key.clone(),
            },
            error => pem_error("key", &self.key, error),
        })?;
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            // Also checks that the key belongs to the first certificate.
            .with_single_cert(certs, key)
            .map_err(TlsError::Rejected)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn pem_error(field: &'static str, path: &Path, error: pem::Error) -> TlsError {
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

#[cfg(test)]
mod tests;
