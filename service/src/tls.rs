//! TLS: the process-wide rustls crypto provider, the `tls:` config section of a listener
//! (a PEM certificate chain and key) and [`TlsListener`], which serves HTTPS through `axum`.
//!
//! The workspace builds rustls with `ring` only (no aws-lc), so nothing picks a provider
//! automatically; every binary installs this one before it builds a TLS client or server.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client that opens a connection and never finishes the handshake is dropped after this
/// long; a real client on a slow link completes the few round trips well within it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting for the server to take them; more wait in their own tasks.
const ACCEPTED_QUEUE: usize = 64;

/// Pause after an accept error that is not about one connection (out of file descriptors,
/// say), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Installs rustls' `ring` provider as the process default. Safe to call any number of times.
pub fn install_crypto_provider() {
    // `Err` only means a provider is already installed, which is exactly what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

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

/// An `axum` listener that accepts TCP (with `TCP_NODELAY`) and yields connections whose TLS
/// handshake has finished. Each handshake runs in its own task with a deadline, so a slow or
/// silent client cannot hold up accepting the others; failed handshakes are logged and dropped.
/// Dropping the listener stops accepting.
#[derive(Debug)]
pub struct TlsListener {
    local_addr: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `listener`. Must be called within a Tokio runtime.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), sender));
        Ok(Self {
            local_addr,
            accepted,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop only ends once this receiver is gone, so this cannot happen;
            // waiting forever is what a listener with no more connections does.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            () = sender.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                tracing::debug!(%error, "accepting a connection failed");
                if !is_connection_error(&error) {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
                continue;
            }
        };
        // Piece and manifest exchanges are small request/response pairs; Nagle would delay them.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    // A send error means the server stopped; the connection is simply closed.
                    let _ = sender.send((stream, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Errors about one connection only, after which accepting the next one works at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests;
