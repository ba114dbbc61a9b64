//! Locates the workspace's component binaries. Integration tests run the real executables that
//! `cargo build --workspace --bins` left in the target directory, next to the test executable.

use std::path::PathBuf;

/// The component binaries the suite starts.
pub const ALL: [&str; 5] = [
    "shoal-origin",
    "shoal-build-index",
    "shoal-proxy",
    "shoal-agent",
    "shoal-tracker",
];

/// The path of binary `name` in the target directory this test executable was built into
/// (`target/debug/deps/<test>` → `target/debug/<name>`).
///
/// Panics with the command to run when the binary is missing: a stale or absent binary would
/// otherwise make every test fail in confusing ways.
pub fn path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's own path");
    let mut dir = exe
        .parent()
        .expect("the test executable lives in a directory")
        .to_path_buf();
    // Test executables live in `deps/`; binaries one level up.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let binary = dir.join(name);
    assert!(
        binary.is_file(),
        "{} not found: run `cargo build --workspace --bins` before the integration tests \
         (scripts/test does both)",
        binary.display()
    );
    binary
}
