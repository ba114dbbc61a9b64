//! Starting, watching and stopping the devcluster's child processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::certs;
use super::layout::{Component, Layout};

/// How long a component may take to answer `/health` after start; generous for debug builds on 2 cores.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a component may take to exit after SIGTERM before it is killed: its servers' drain
/// plus up to `shoal_service::shutdown::DRAIN_DEADLINE` (10 s) for its background tasks.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// A running component.
pub struct Running {
    pub component: Component,
    child: Child,
    pub log: PathBuf,
}

/// All running components; [`Children::stop`] stops them in reverse start order (dropping it
/// only SIGKILLs them, without waiting).
#[derive(Default)]
pub struct Children {
    running: Vec<Running>,
}

impl Children {
    /// Starts every component in order, each once the previous one is healthy (under `--tls`,
    /// after issuing every certificate). Each child is recorded here as soon as it is spawned,
    /// so whether this fails or is cancelled part-way, [`Children::stop`] afterwards stops all
    /// that started; the caller must call it.
    pub async fn start(&mut self, layout: &Layout, bin_dir: &Path) -> anyhow::Result<()> {
        for dir in [layout.config_dir(), layout.log_dir(), layout.backend_dir()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let components = layout.components();
        if layout.tls {
            // Components reload certificate files when they change: a devcluster already
            // running on this data dir would start presenting certificates of the new CA that
            // its peers do not trust. Refuse before writing any.
            for component in &components {
                ensure_port_free(component)?;
            }
            certs::generate(layout)?;
        }
        let http = certs::client(layout)?
            .timeout(Duration::from_secs(2))
            .build()
            .context("building the HTTP client")?;
        for component in components {
            ensure_port_free(&component)?;
            // No await between spawning and recording the child.
            let running = spawn(layout, bin_dir, component)?;
            let (name, url, log) = (
                running.component.name.clone(),
                running.component.url.clone(),
                running.log.clone(),
            );
            self.running.push(running);
            if let Err(e) = self.wait_healthy(&http, &url).await {
                let tail = log_tail(&log);
                bail!(
                    "{name} did not become healthy on {url}: {e:#}\n--- {} ---\n{tail}",
                    log.display()
                );
            }
        }
        Ok(())
    }

    pub fn running(&self) -> &[Running] {
        &self.running
    }

    async fn wait_healthy(&mut self, http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
        let url = format!("{base}/health");
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        loop {
            if let Some(last) = self.running.last_mut()
                && let Some(status) = last.child.try_wait()?
            {
                bail!("exited with {status}");
            }
            if let Ok(resp) = http.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no answer within {START_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM to every component (last started first) and waits; kills what does not exit
    /// in time. Each child is waited for (and so reaped) by its PID before the next is stopped.
    pub async fn stop(&mut self) {
        while let Some(mut running) = self.running.pop() {
            let name = running.component.name.clone();
            if let Some(pid) = running.child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            match tokio::time::timeout(STOP_DEADLINE, running.child.wait()).await {
                Ok(Ok(status)) if status.success() => eprintln!("  stopped {name}"),
                Ok(Ok(status)) => eprintln!("  {name} exited with {status}"),
                Ok(Err(e)) => eprintln!("  waiting for {name}: {e}"),
                Err(_) => {
                    eprintln!("  {name} ignored SIGTERM for {STOP_DEADLINE:?}; killing it");
                    let _ = running.child.kill().await;
                }
            }
        }
    }

    /// The first component that has exited on its own, if any.
    pub fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.running.iter_mut().find_map(|r| {
            r.child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| (r.component.name.clone(), status))
        })
    }
}

fn spawn(layout: &Layout, bin_dir: &Path, component: Component) -> anyhow::Result<Running> {
    let binary = bin_dir.join(component.binary);
    if !binary.exists() {
        bail!(
            "{} not found; build every binary first: cargo build --release --bins",
            binary.display()
        );
    }
    let config = layout.config_dir().join(format!("{}.yaml", component.name));
    std::fs::write(&config, &component.config)
        .with_context(|| format!("writing {}", config.display()))?;
    let log = layout.log_dir().join(format!("{}.log", component.name));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // A devcluster that dies must not leave orphans holding the fixed ports.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(Running {
        component,
        child,
        log,
    })
}

fn ensure_port_free(component: &Component) -> anyhow::Result<()> {
    std::net::TcpListener::bind(component.addr)
        .map(drop)
        .with_context(|| {
            format!(
                "{} needs {}, which is in use (another devcluster running?)",
                component.name, component.addr
            )
        })
}

/// The last lines of a log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
