//! The fuzz targets' bodies: one function per parser family that takes network input (or a
//! config file), each calling the entry point the servers call and asserting what is cheap to
//! check. The cargo-fuzz binaries in `fuzz/fuzz_targets/` call these, and so does the corpus
//! replay test (`tests/replay.rs`), so CI replays every committed input through the same code
//! without nightly Rust. How to run them: `scripts/fuzz`, and `docs/SECURITY.md`.

pub mod bitfield;
pub mod config;
pub mod digest;
pub mod manifest;
pub mod metainfo;
pub mod name;
pub mod notification;
pub mod peer_rpc;
pub mod piece_stream;
pub mod range;
pub mod registry_path;
pub mod tracker_rpc;

/// One fuzz target: its name (the cargo-fuzz binary and the corpus directory) and its body.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target; each has a cargo-fuzz binary of its name in `fuzz/fuzz_targets/`.
pub const TARGETS: &[Target] = &[
    Target {
        name: "digest",
        run: digest::run,
    },
    Target {
        name: "name",
        run: name::run,
    },
    Target {
        name: "range",
        run: range::run,
    },
    Target {
        name: "registry_path",
        run: registry_path::run,
    },
    Target {
        name: "manifest",
        run: manifest::run,
    },
    Target {
        name: "notification",
        run: notification::run,
    },
    Target {
        name: "metainfo",
        run: metainfo::run,
    },
    Target {
        name: "bitfield",
        run: bitfield::run,
    },
    Target {
        name: "tracker_rpc",
        run: tracker_rpc::run,
    },
    Target {
        name: "peer_rpc",
        run: peer_rpc::run,
    },
    Target {
        name: "piece_stream",
        run: piece_stream::run,
    },
    Target {
        name: "config",
        run: config::run,
    },
];

/// Splits off the first byte, which several targets use to pick an entry point or a parameter;
/// `None` for an empty input.
fn selector(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(&first, rest)| (first, rest))
}
