//! Plumbing every Shoal binary shares: config loading, tracing, the metrics registry and HTTP
//! metrics middleware, serving with `/health` and `/metrics` (over plain HTTP or TLS), shutdown on
//! signals, TLS listener config, common CLI arguments, and the shared-secret check of operator
//! endpoints. The HTTP client builder and the rustls
//! provider live in `shoal-http-client`, re-exported here as [`client`] and
//! [`tls::install_crypto_provider`] for the components, which use both halves.

pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod ready;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use bytesize::ByteSize;
pub use config::{ConfigError, LogConfig, LogFormat};
pub use http::RouteLabel;
pub use metrics::{Metrics, MetricsBuilder};
pub use ready::Readiness;
pub use secret::SharedSecret;
pub use shoal_http_client as client;
pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;
