//! A certificate chain and key read from PEM files and read again when the files change, so a
//! rotated certificate (cert-manager renews into the same Secret) is used by the next handshake
//! without a restart. Used as the server's certificate and as the client's identity.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{TlsError, pem_error};

/// How often the files are looked at (two `stat`s), at most: handshakes in between reuse the
/// last answer, and a rotation is picked up within this long.
const RECHECK: Duration = Duration::from_secs(1);

pub(crate) struct KeyFiles {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

/// What tells that a file changed: its modification time, length and inode (a Kubernetes
/// Secret volume swaps a symlink, which changes the inode the path resolves to).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp([Option<(SystemTime, u64, u64)>; 2]);

impl KeyFiles {
    /// Reads the pair now; a missing, unreadable or mismatched pair is an error.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<KeyFiles, TlsError> {
        let stamp = stamp(cert, key);
        let loaded = read_pair(cert, key)?;
        Ok(KeyFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(Loaded {
                key: Arc::new(loaded),
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair to present now, read again first if the files changed since the last look.
    /// A changed pair that does not load (half written, key and certificate not matching yet)
    /// keeps the previous one in use until the files change again.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(state.checked) >= RECHECK {
            state.checked = now;
            self.reload_if_changed(&mut state);
        }
        Arc::clone(&state.key)
    }

    /// Looks at the files now, whenever they were last looked at.
    #[cfg(test)]
    pub(crate) fn check_now(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.reload_if_changed(&mut state);
    }

    fn reload_if_changed(&self, state: &mut Loaded) {
        let stamp = stamp(&self.cert, &self.key);
        if stamp == state.stamp {
            return;
        }
        state.stamp = stamp;
        match read_pair(&self.cert, &self.key) {
            Ok(key) => {
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                state.key = Arc::new(key);
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

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let of = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len(), meta.ino()))
    };
    Stamp([of(cert), of(key)])
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
