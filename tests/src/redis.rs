//! A private `redis-server` for tests and benches: loopback only, no persistence, its files in
//! a directory of the caller's.

use std::net::SocketAddr;
use std::path::Path;

use crate::process::ProcessSpec;

/// How to run `redis-server` on `addr` with its files (and log, `redis.log`) in `dir`; the same
/// spec starts it again on the same port after a kill.
pub fn spec(dir: &Path, addr: SocketAddr) -> ProcessSpec {
    let args = [
        "--bind",
        "127.0.0.1",
        "--port",
        &addr.port().to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ];
    ProcessSpec {
        name: "redis-server".to_owned(),
        program: "redis-server".into(),
        args: args.map(str::to_owned).to_vec(),
        env: Vec::new(),
        log: dir.join("redis.log"),
    }
}
