//! Runs third-party tools (skopeo, docker, podman, …) with captured output, a deadline, and a
//! failure message that shows the command line, exit status, stdout and stderr.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// Long enough for skopeo or docker to move a few hundred MiB through a debug-build cluster on
/// a busy 2-core machine; short enough that a hung tool fails the test well inside CI's budget.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(300);

/// Where `program` is on `PATH`. Panics with the install command when it is missing: these
/// tests are part of the suite, and a missing tool is a setup error, not a skip.
pub fn require(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{program}` is not installed: run scripts/install-deps (or scripts/test)")
    })
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args…` with [`TOOL_DEADLINE`]; fails unless it exits 0.
pub async fn run<I, S>(program: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(require(program));
    command.args(args);
    run_command(command).await
}

/// Runs a prepared command (env, working dir already set) with [`TOOL_DEADLINE`]; fails unless it
/// exits 0. The child is killed if the deadline passes.
pub async fn run_command(mut command: Command) -> Result<Output> {
    let line = command_line(&command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("spawning `{line}`"))?;
    let output = tokio::time::timeout(TOOL_DEADLINE, child.wait_with_output())
        .await
        .with_context(|| format!("`{line}` did not finish within {TOOL_DEADLINE:?}"))?
        .with_context(|| format!("waiting for `{line}`"))?;
    let result = Output {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    if !output.status.success() {
        bail!(
            "`{line}` failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            result.stdout.trim_end(),
            result.stderr.trim_end()
        );
    }
    Ok(result)
}

fn command_line(command: &Command) -> String {
    let std = command.as_std();
    std::iter::once(std.get_program())
        .chain(std.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `skopeo …`.
pub async fn skopeo<I, S>(args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run("skopeo", args).await
}

/// Copies tag `tag` of the OCI layout at `layout` to `docker://{remote}` with skopeo, digests
/// preserved, over plain HTTP.
pub async fn skopeo_push(layout: &Path, tag: &str, remote: &str) -> Result<()> {
    skopeo([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{remote}"),
    ])
    .await?;
    Ok(())
}

/// `docker …` against the machine's Docker Engine.
pub async fn docker<I, S>(args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run("docker", args).await
}

/// The Docker daemon pushes and pulls itself, from its own network namespace: a registry on
/// 127.0.0.1 (a cluster's, or a port compose published) is reachable only when that namespace is
/// ours.
pub fn ensure_docker_daemon_shares_our_loopback() -> Result<()> {
    let pid = std::fs::read_to_string("/var/run/docker.pid")
        .context("reading /var/run/docker.pid: is the Docker daemon running on this machine?")?;
    let daemon_ns = std::fs::read_link(format!("/proc/{}/ns/net", pid.trim()))
        .context("reading the Docker daemon's network namespace")?;
    let our_ns = std::fs::read_link("/proc/self/ns/net").context("reading our netns")?;
    if daemon_ns != our_ns {
        bail!(
            "the Docker daemon runs in network namespace {daemon_ns:?}, this test in {our_ns:?}: \
             it cannot reach a registry on 127.0.0.1"
        );
    }
    Ok(())
}

/// The ID (config digest) of the image Docker holds as `reference`.
pub async fn docker_image_id(reference: &str) -> Result<String> {
    Ok(
        docker(["image", "inspect", "--format", "{{.Id}}", reference])
            .await?
            .stdout
            .trim()
            .to_owned(),
    )
}

/// Removes the Docker images a test created, even when it fails half way.
pub struct DockerImages(pub Vec<String>);

impl Drop for DockerImages {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        // Best effort, synchronously: a leftover image costs disk space, not correctness.
        let result = std::process::Command::new("docker")
            .args(["rmi", "--force"])
            .args(&self.0)
            .output();
        if let Err(e) = result {
            eprintln!("cleaning up docker images {:?}: {e}", self.0);
        }
    }
}

/// A podman with its own storage (`--root`, `--runroot`) and an empty registries config inside a
/// directory the test owns, so it neither touches nor depends on the machine's podman state.
#[derive(Debug)]
pub struct Podman {
    root: PathBuf,
    runroot: PathBuf,
    registries_conf: PathBuf,
}

impl Podman {
    /// Prepares podman state under `dir`.
    pub fn new(dir: &Path) -> Result<Podman> {
        // No search registries and no mirrors: only fully qualified references, only the
        // registry the test names.
        Podman::with_registries_conf(dir, "unqualified-search-registries = []\n")
    }

    /// Prepares podman state under `dir` with `registries_conf` as its registries.conf (for
    /// instance a `[[registry.mirror]]` entry).
    pub fn with_registries_conf(dir: &Path, registries_conf: &str) -> Result<Podman> {
        let podman = Podman {
            root: dir.join("root"),
            runroot: dir.join("runroot"),
            registries_conf: dir.join("registries.conf"),
        };
        for path in [&podman.root, &podman.runroot] {
            std::fs::create_dir_all(path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        std::fs::write(&podman.registries_conf, registries_conf)
            .with_context(|| format!("writing {}", podman.registries_conf.display()))?;
        Ok(podman)
    }

    /// `podman --root … --runroot … <args>`. vfs storage needs no kernel overlay support,
    /// and the file events backend needs no journald.
    pub async fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(require("podman"));
        command
            .env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs", "--events-backend", "file"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(args);
        run_command(command).await
    }
}
