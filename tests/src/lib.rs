//! The cross-component test harness: a [`Cluster`] of real Shoal binaries on loopback ports, the
//! reference CNCF registry, moto's S3 server, helpers that run real clients (skopeo, docker,
//! podman) and raw HTTP, the image and disk-snapshot utilities the acceptance tests in `tests/`
//! share, `/proc` lookups for processes started indirectly, a preheating proxy with its job
//! API, test certificates for TLS listeners, hung (tarpit) peers, a TCP relay that can hold an
//! upload, a small tmpfs for full-disk tests, and the network-namespace test bed with the swarm
//! benchmark that runs on it, and a headless browser driven over WebDriver for page tests.

pub mod binaries;
pub mod browser;
pub mod cluster;
pub mod configs;
pub mod containerd;
pub mod images;
pub mod moto;
pub mod netbed;
pub mod pattern;
pub mod ports;
pub mod preheat;
pub mod process;
pub mod procfs;
pub mod raw_http;
pub mod redis;
pub mod reference_registry;
pub mod relay;
pub mod small_disk;
pub mod snapshot;
pub mod svg_plot;
pub mod swarm;
pub mod swarm_bench;
pub mod tarpit;
pub mod tls;
pub mod token_server;
pub mod tools;
pub mod v2;

pub use cluster::{Cluster, ClusterOptions, Component};
pub use reference_registry::ReferenceRegistry;
