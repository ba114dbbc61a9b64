//! The one way Shoal builds outgoing HTTP clients, so that timeouts and TLS setup are the same
//! everywhere, and the process-wide rustls crypto provider they (and `shoal-service`'s TLS
//! listeners) use. A crate of its own so that libraries which only make requests (backends,
//! registry and origin clients) do not depend on the serving half in `shoal-service`.
//!
//! The workspace builds rustls with `ring` only (no aws-lc), so nothing picks a provider
//! automatically; every binary installs this one before it builds a TLS client or server.

use std::time::Duration;

/// Fail fast on unreachable peers; the caller then tries another origin or replica.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep idle connections for reuse between bursts of piece and blob requests.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub use shoal_tls::install_crypto_provider;

/// A client builder with Shoal's defaults: rustls (ring) installed, 5 s connect timeout,
/// `TCP_NODELAY`, 90 s idle pool timeout, user agent `shoal/<version>`. There is deliberately
/// no overall request timeout: blob bodies may stream for minutes. Callers add per-request
/// timeouts where a bound makes sense.
pub fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
}

/// [`builder`] for calls to other components: with mutual TLS (`tls.ca` set), over the
/// cluster's TLS (servers verified by CA and role, this component's certificate presented);
/// without, as the URLs say.
pub fn cluster_builder(
    tls: Option<&shoal_tls::LoadedTls>,
    servers: shoal_tls::Roles,
) -> reqwest::ClientBuilder {
    let builder = builder();
    match tls.and_then(|tls| tls.client(servers, &[b"h2", b"http/1.1"])) {
        Some(config) => builder.tls_backend_preconfigured(rustls::ClientConfig::clone(&config)),
        None => builder,
    }
}

/// The base URL, without a trailing slash, of a component written `host:port` or with its
/// scheme. A bare address means `https` where the caller knows the component serves TLS
/// (`https`), `http` otherwise; a written scheme always wins.
pub fn base_url(addr: &str, https: bool) -> String {
    let addr = addr.trim_end_matches('/');
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else if https {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_accept_both_address_forms() {
        assert_eq!(base_url("a:1", false), "http://a:1");
        assert_eq!(base_url("a:1/", true), "https://a:1");
        assert_eq!(base_url("http://a:1/", true), "http://a:1");
        assert_eq!(base_url("https://a:1", false), "https://a:1");
        assert_eq!(base_url("[::1]:1", false), "http://[::1]:1");
    }

    #[test]
    fn installing_twice_leaves_a_provider() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn builds_a_client_with_tls_available() {
        builder()
            .build()
            .expect("client builds with the ring provider");
    }
}
