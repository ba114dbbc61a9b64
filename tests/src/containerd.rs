//! A private containerd for one test: its own root, state and socket addresses in a temp dir,
//! config version 2 with the CRI plugin disabled (no Kubernetes here), started by the test and
//! killed when dropped. `ctr` talks to it through its socket, so the machine's containerd (if
//! any) is neither used nor touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::process::{POLL_INTERVAL, Process, ProcessSpec};
use crate::tools::{Output, require, run_command};

/// containerd loads its plugins in well under a second; leave room for a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// The namespace the test's images live in.
const NAMESPACE: &str = "shoal-test";

pub struct Containerd {
    socket: PathBuf,
    config: PathBuf,
    // Dropped first: the daemon dies before its directories go.
    process: Process,
}

impl Containerd {
    /// Writes a config under `dir` and starts containerd with it, returning once `ctr` gets an
    /// answer on its socket.
    pub async fn start(dir: &Path) -> Result<Containerd> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let text = format!(
            "version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {socket}\n\
             [ttrpc]\n  address = {ttrpc}\n\
             [debug]\n  address = \"\"\n\
             [metrics]\n  address = \"\"\n",
            root = toml_str(&dir.join("root")),
            state = toml_str(&dir.join("state")),
            socket = toml_str(&socket),
            ttrpc = toml_str(&dir.join("containerd-ttrpc.sock")),
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let process = Process::spawn(ProcessSpec {
            name: "containerd".to_owned(),
            program: require("containerd"),
            args: vec!["--config".to_owned(), config.display().to_string()],
            env: Vec::new(),
            log: dir.join("containerd.log"),
        })?;
        let mut containerd = Containerd {
            socket,
            config,
            process,
        };
        containerd.wait_until_answering().await?;
        Ok(containerd)
    }

    /// The config file containerd reads at start.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Stops containerd (SIGTERM) and starts it again with its config file as it is now, as an
    /// operator restarts it after editing the file.
    pub async fn restart(&mut self) -> Result<()> {
        let status = self.process.terminate(START_DEADLINE)?;
        if !status.success() {
            bail!(
                "containerd exited with {status} on SIGTERM\n{}",
                self.log_tail()
            );
        }
        self.process = Process::spawn(self.process.spec().clone())?;
        self.wait_until_answering().await
    }

    async fn wait_until_answering(&mut self) -> Result<()> {
        let (socket, process) = (&self.socket, &mut self.process);
        let start = Instant::now();
        loop {
            if let Some(status) = process.try_exit_status()? {
                bail!(
                    "containerd exited with {status} while starting\n{}",
                    process.log_tail()
                );
            }
            if socket.exists() {
                let mut version = Command::new(require("ctr"));
                version.arg("--address").arg(socket).arg("version");
                if run_command(version).await.is_ok() {
                    return Ok(());
                }
            }
            if start.elapsed() > START_DEADLINE {
                bail!(
                    "containerd did not answer on {} within {START_DEADLINE:?}\n{}",
                    socket.display(),
                    process.log_tail()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `ctr --address <socket> --namespace shoal-test <args>`.
    pub async fn ctr<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(require("ctr"));
        command
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE])
            .args(args);
        run_command(command).await
    }

    /// Pulls `reference` over plain HTTP with the mirrors configured in `hosts_dir` (containerd's
    /// `hosts.toml` layout) and checks containerd recorded `manifest` for it.
    pub async fn pull_through_mirror(
        &self,
        hosts_dir: &Path,
        reference: &str,
        manifest: &shoal_core::Digest,
    ) -> Result<()> {
        let pulled = self
            .ctr([
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                "native",
                "--hosts-dir",
                &hosts_dir.display().to_string(),
                reference,
            ])
            .await;
        if let Err(e) = pulled {
            bail!("{e:#}\n{}", self.log_tail());
        }
        let listed = self.ctr(["images", "ls"]).await?.stdout;
        let line = listed
            .lines()
            .find(|line| line.starts_with(reference))
            .with_context(|| format!("{reference} not listed by ctr images ls:\n{listed}"))?;
        if !line.contains(&manifest.to_string()) {
            bail!("containerd recorded another manifest for {reference}: {line}");
        }
        Ok(())
    }

    /// The daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// A path as a TOML basic string (JSON string escapes are valid TOML).
fn toml_str(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}
