//! TLS for Shoal's listeners and for the calls between its components: the `tls:` config
//! section, certificates and keys reloaded when their files change (cert-manager rotates them),
//! and mutual TLS with the cluster's CA, where a client's certificate names its component
//! [`Role`] and each endpoint admits only the roles that have business there.
//!
//! Inside the cluster, components reach each other by IP address (a headless Service's
//! members, an agent's advertised address), for which no certificate can carry the name. So a
//! server is verified by its chain to the cluster CA and by the role its certificate names, not
//! by its host name (as SPIFFE identities are): see [`verify`].

mod config;
mod identity;
mod keys;
mod verify;
pub mod watch;

#[cfg(feature = "generate")]
pub mod generate;

use std::time::Duration;

pub use config::{LoadedTls, ServerTls, TlsConfig, TlsError};
pub use identity::{Caller, Identities, Role, Roles};
pub use watch::FileWatch;

/// A client that opens a connection and never finishes the handshake is dropped after this
/// long; a real client on a slow link completes the few round trips well within it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs rustls' `ring` provider as the process default. Safe to call any number of times.
/// The workspace builds rustls with `ring` only (no aws-lc), so nothing picks a provider
/// automatically; every TLS client or server is built after this.
pub fn install_crypto_provider() {
    // `Err` only means a provider is already installed, which is exactly what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests;
