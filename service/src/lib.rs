//! Plumbing every Shoal binary shares: config loading, tracing, the metrics registry and HTTP
//! metrics middleware, serving with `/health` and `/metrics` (over plain HTTP or TLS), shutdown on
//! signals, the rustls provider, the HTTP client builder and common CLI arguments.

pub mod cli;
pub mod client;
pub mod config;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use bytesize::ByteSize;
pub use config::{ConfigError, LogConfig, LogFormat};
pub use http::RouteLabel;
pub use metrics::{Metrics, MetricsBuilder};
pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;
