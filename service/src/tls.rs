//! The process-wide rustls crypto provider.
//!
//! The workspace builds rustls with `ring` only (no aws-lc), so nothing picks a provider
//! automatically; every binary installs this one before it builds a TLS client or server.

/// Installs rustls' `ring` provider as the process default. Safe to call any number of times.
pub fn install_crypto_provider() {
    // `Err` only means a provider is already installed, which is exactly what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_leaves_a_provider() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
