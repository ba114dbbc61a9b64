//! [`ListenerLimits`]: how long a connection may take over a request's headers or sit idle,
//! and how many connections one listener holds at once. The defaults are the only values the
//! components use today; the struct deserializes so a component can expose it in its config.

use std::time::Duration;

use serde::Deserialize;

/// Headers are a few hundred bytes; a real client on a slow or lossy link sends them in well
/// under a second. Slowloris clients (one header line every few seconds) are cut off here.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Longer than the idle pool timeout of our clients (90 s for reqwest in `shoal_http_client` and for
/// Go's `http.Transport`, used by docker and containerd), so that a client drops an idle
/// connection before the server does and never sends a request on one being closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Enough for thousands of agents each holding one HTTP/2 connection to an origin, while
/// bounding the file descriptors and memory a flood of connections can take. The process's
/// file descriptor limit must be above the sum over its listeners, plus its own files.
const MAX_CONNECTIONS: usize = 8192;

/// Limits a listener enforces on its connections (`serve`, `serve_tls` and `serve_with` in
/// [`crate::http`]).
///
/// No timeout applies while a request is in flight: a multi-GiB blob download or a long gRPC
/// stream runs as long as it needs. Only connections that stall before a request or sit idle
/// between requests are closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerLimits {
    /// A new connection must have sent its first request's headers within this time, and on
    /// HTTP/1.1 a request's headers must be complete this long after its first byte. Exceeded,
    /// the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight (HTTP/1.1 keep-alive between requests, HTTP/2 with
    /// no open stream) is closed after this long; HTTP/2 clients get a GOAWAY first.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections served at once. Beyond it a new connection is answered with 503 and closed.
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_in_human_form_and_default_when_absent() {
        let limits: ListenerLimits =
            crate::config::parse("header_read_timeout: 5s\nmax_connections: 100\n", "test")
                .unwrap();
        assert_eq!(
            limits,
            ListenerLimits {
                header_read_timeout: Duration::from_secs(5),
                idle_timeout: IDLE_TIMEOUT,
                max_connections: 100,
            }
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let error = crate::config::parse::<ListenerLimits>("idle: 5s\n", "test")
            .unwrap_err()
            .to_string();
        assert!(error.contains("idle"), "{error}");
    }
}
