//! The one way Shoal components build outgoing HTTP clients, so that timeouts and TLS setup
//! are the same everywhere.

use std::time::Duration;

use crate::tls;

/// Fail fast on unreachable peers; the caller then tries another origin or replica.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep idle connections for reuse between bursts of piece and blob requests.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A client builder with Shoal's defaults: rustls (ring) installed, 5 s connect timeout,
/// `TCP_NODELAY`, 90 s idle pool timeout, user agent `shoal/<version>`. There is deliberately
/// no overall request timeout: blob bodies may stream for minutes. Callers add per-request
/// timeouts where a bound makes sense.
pub fn builder() -> reqwest::ClientBuilder {
    tls::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_client_with_tls_available() {
        builder()
            .build()
            .expect("client builds with the ring provider");
    }
}
