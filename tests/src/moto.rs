//! moto's S3-compatible server as a real process for end-to-end backend tests: started on a
//! free loopback port with one bucket, stopped with SIGKILL to simulate an outage, and started
//! again on the same port. moto keeps everything in memory, so a restarted server is empty; the
//! bucket is created again and whatever the cluster writes afterwards is what the test reads.
//!
//! `scripts/install-deps` installs it into `~/.cache/shoal/moto-venv` (override the program
//! with `SHOAL_MOTO_SERVER`), as the storage crate's S3 tests expect.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use shoal_backends::{BackendConfig, S3Backend, S3Config};
use tempfile::TempDir;

use crate::ports::free_loopback_addr;
use crate::process::{POLL_INTERVAL, Process, ProcessSpec};

/// moto imports its whole AWS model on start; a loaded 2-core machine needs a while.
const START_DEADLINE: Duration = Duration::from_secs(90);

/// A moto server holding one bucket.
pub struct Moto {
    addr: SocketAddr,
    bucket: String,
    spec: ProcessSpec,
    process: Option<Process>,
    // Holds the log; removed after the process is gone (fields drop in order).
    _dir: TempDir,
}

fn moto_server() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SHOAL_MOTO_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let path = PathBuf::from(home).join(".cache/shoal/moto-venv/bin/moto_server");
    ensure!(
        path.is_file(),
        "{} is missing: run scripts/install-deps",
        path.display()
    );
    Ok(path)
}

impl Moto {
    /// Starts moto on a free port and creates `bucket`.
    pub async fn start(bucket: &str) -> Result<Moto> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-moto-")
            .tempdir()
            .context("creating moto's temp dir")?;
        let addr = free_loopback_addr()?;
        let spec = ProcessSpec {
            name: "moto_server".to_owned(),
            program: moto_server()?,
            args: vec![
                "-H".to_owned(),
                addr.ip().to_string(),
                "-p".to_owned(),
                addr.port().to_string(),
            ],
            env: Vec::new(),
            log: dir.path().join("moto.log"),
        };
        let mut moto = Moto {
            addr,
            bucket: bucket.to_owned(),
            spec,
            process: None,
            _dir: dir,
        };
        moto.restart().await?;
        Ok(moto)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The S3 settings that reach this server's bucket.
    pub fn s3_config(&self) -> S3Config {
        S3Config {
            bucket: self.bucket.clone(),
            region: Some("us-east-1".to_owned()),
            endpoint: Some(self.endpoint()),
            access_key_id: Some("shoal-test".to_owned()),
            secret_access_key: Some("shoal-test-secret".to_owned()),
            prefix: None,
            allow_http: true,
        }
    }

    /// The `backend:` value of a component config that stores in this bucket.
    pub fn backend_config(&self) -> Result<Value> {
        serde_json::to_value(BackendConfig::S3(self.s3_config()))
            .context("serialising the S3 backend config")
    }

    /// A client of the bucket, to put or read objects behind Shoal's back.
    pub fn backend(&self) -> Result<S3Backend> {
        S3Backend::new(&self.s3_config()).context("building the S3 client")
    }

    /// SIGKILL the server: the backend is down (and its contents are gone).
    pub fn stop(&mut self) -> Result<()> {
        match self.process.take() {
            Some(mut process) => process.kill(),
            None => Ok(()),
        }
    }

    /// Starts the server again on the same port (killing it first if it runs) and creates the
    /// bucket again.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let url = format!("{}/{}", self.endpoint(), self.bucket);
        let http = shoal_service::client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the moto client")?;
        let process = self.process.insert(Process::spawn(self.spec.clone())?);
        let start = Instant::now();
        // Creating the bucket doubles as the readiness probe.
        loop {
            if let Some(status) = process.try_exit_status()? {
                bail!(
                    "moto_server exited with {status} while starting\n{}",
                    process.log_tail()
                );
            }
            match http.put(&url).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => bail!("creating bucket {}: {}", self.bucket, response.status()),
                Err(_) if start.elapsed() < START_DEADLINE => {
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Err(e) => {
                    bail!(
                        "moto_server did not answer within {START_DEADLINE:?}: {e}\n{}",
                        process.log_tail()
                    )
                }
            }
        }
    }
}
