//! The CNCF distribution registry (`docker-registry serve`) as a reference: the same tests run
//! against it tell a Shoal bug apart from a test or client bug.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::ports::free_loopback_addr;
use crate::process::{Process, ProcessSpec, wait_until_ready};
use crate::tools::require;

const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// A running `docker-registry` with filesystem storage in a temp dir.
pub struct ReferenceRegistry {
    process: Process,
    addr: SocketAddr,
    // Declared last so it is removed after the process is gone.
    dir: TempDir,
}

impl ReferenceRegistry {
    pub async fn start() -> Result<ReferenceRegistry> {
        let program = require("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("shoal-reference-registry-")
            .tempdir()
            .context("creating the registry temp dir")?;
        let addr = free_loopback_addr()?;
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                serde_json::Value::String(storage.display().to_string())
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let process = Process::spawn(ProcessSpec {
            name: "docker-registry".to_owned(),
            program,
            args: vec!["serve".to_owned(), config.display().to_string()],
            env: Vec::new(),
            log: dir.path().join("registry.log"),
        })?;
        let mut registry = ReferenceRegistry { process, addr, dir };
        let url = format!("{}/v2/", registry.url());
        wait_until_ready(&mut registry.process, &url, STARTUP_DEADLINE).await?;
        Ok(registry)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the registry stores its data.
    pub fn storage_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("storage")
    }
}
