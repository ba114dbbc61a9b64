//! One spawned component process: its command line, its log file, and its lifetime. A
//! [`Process`] is killed and reaped when dropped, so a failing test never leaves a server
//! behind; only PIDs this harness started are ever signalled.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How often a deadline-bounded wait re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How much of a log file to show when something fails.
const LOG_TAIL_BYTES: u64 = 8 * 1024;

/// How to start a process: the same spec restarts it with the same config and log file.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// stdout and stderr both go here, appended across restarts.
    pub log: PathBuf,
}

/// A running (or exited, not yet reaped) child process.
#[derive(Debug)]
pub struct Process {
    spec: ProcessSpec,
    child: Option<Child>,
}

impl Process {
    pub fn spawn(spec: ProcessSpec) -> Result<Process> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening log {}", spec.log.display()))?;
        let log_err = log.try_clone().context("duplicating the log handle")?;
        let child = Command::new(&spec.program)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| format!("spawning {} ({})", spec.name, spec.program.display()))?;
        Ok(Process {
            spec,
            child: Some(child),
        })
    }

    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    /// The PID, while the process has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited (reaping it), `None` while it runs.
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was already reaped", self.spec.name);
        };
        let status = child
            .try_wait()
            .with_context(|| format!("checking whether {} exited", self.spec.name))?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// SIGKILL and reap. A no-op when the process is already gone.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // `kill` fails only when the process already exited; reaping below still applies.
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("reaping {}", self.spec.name))?;
        }
        Ok(())
    }

    /// SIGTERM, then wait up to `deadline` for the exit status. Kills the process if it does
    /// not exit in time and reports that as an error.
    pub fn terminate(&mut self, deadline: Duration) -> Result<ExitStatus> {
        self.send_sigterm()?;
        self.wait_exit(deadline)
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&mut self) -> Result<()> {
        let Some(pid) = self.pid() else {
            bail!("{} is not running", self.spec.name);
        };
        // The PID is our own unreaped child, so it cannot name another process.
        let pid = Pid::from_raw(i32::try_from(pid).context("PID out of range")?);
        kill(pid, Signal::SIGTERM).with_context(|| format!("sending SIGTERM to {}", self.spec.name))
    }

    /// Waits up to `deadline` for the exit status. Kills the process if it does not exit in
    /// time and reports that as an error.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Ok(status);
            }
            if start.elapsed() > deadline {
                self.kill()?;
                bail!(
                    "{} did not exit within {deadline:?} of SIGTERM\n{}",
                    self.spec.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The last few KiB of the process's log, labelled, for failure messages.
    pub fn log_tail(&self) -> String {
        format!(
            "----- {} log ({}) -----\n{}",
            self.spec.name,
            self.spec.log.display(),
            tail(&self.spec.log)
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("{e:#}");
        }
    }
}

/// Polls `url` until it answers 200, failing early (with the log tail) when `process` exits
/// and late when `deadline` passes.
pub async fn wait_until_ready(process: &mut Process, url: &str, deadline: Duration) -> Result<()> {
    wait_until_answers(process, url, reqwest::StatusCode::OK, deadline).await
}

/// Polls `url` until it answers `expected` (an authenticating registry is up once it answers
/// 401), failing early (with the log tail) when `process` exits and late when `deadline` passes.
pub async fn wait_until_answers(
    process: &mut Process,
    url: &str,
    expected: reqwest::StatusCode,
    deadline: Duration,
) -> Result<()> {
    let http = shoal_service::client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building the readiness client")?;
    wait_until_answers_via(&http, process, url, expected, deadline).await
}

/// [`wait_until_answers`] with the client `http` (one trusting a test CA, say).
pub async fn wait_until_answers_via(
    http: &reqwest::Client,
    process: &mut Process,
    url: &str,
    expected: reqwest::StatusCode,
    deadline: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Some(status) = process.try_exit_status()? {
            bail!(
                "{} exited with {status} while starting\n{}",
                process.spec.name,
                process.log_tail()
            );
        }
        if let Ok(response) = http.get(url).send().await
            && response.status() == expected
        {
            return Ok(());
        }
        if start.elapsed() > deadline {
            bail!(
                "{} did not answer {expected} on {url} within {deadline:?}\n{}",
                process.spec.name,
                process.log_tail()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The last [`LOG_TAIL_BYTES`] of `path`, or why it could not be read.
pub fn tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// Processes stopped with SIGSTOP (hung: their sockets stay open and their kernel still accepts
/// connections), continued when dropped, also when a test or bench fails midway, so that the
/// cluster's teardown can stop them.
pub struct Stopped(Vec<Pid>);

impl Stopped {
    pub fn stop(pids: impl IntoIterator<Item = u32>) -> Result<Stopped> {
        let mut stopped = Stopped(Vec::new());
        for pid in pids {
            let pid = Pid::from_raw(i32::try_from(pid)?);
            kill(pid, Signal::SIGSTOP).with_context(|| format!("stopping {pid}"))?;
            stopped.0.push(pid);
        }
        Ok(stopped)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // Fails only when the process already exited.
            let _ = kill(pid, Signal::SIGCONT);
        }
    }
}
