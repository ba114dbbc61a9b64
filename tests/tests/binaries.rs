//! The component binaries as an operator meets them: `--help` works, a config typo stops the
//! binary with a message naming the field's full path, and every example config shipped under
//! `deploy/configs/` actually starts its component.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_yaml_ng::{Mapping, Value};
use shoal_tests::binaries;
use shoal_tests::ports::free_loopback_addr;
use shoal_tests::process::{Process, ProcessSpec, wait_until_ready};
use shoal_tests::tools::run;

/// A debug binary starts (or rejects its config) in well under a second; leave room for load.
const START_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn every_binary_prints_help_and_exits_zero() -> Result<()> {
    for name in binaries::ALL.iter().chain(&["shoal"]) {
        let path = binaries::path(name);
        let output = run(
            path.to_str().context("binary path is not UTF-8")?,
            ["--help"],
        )
        .await?;
        ensure!(
            output.stdout.contains("--config") || *name == "shoal",
            "{name} --help does not document --config:\n{}",
            output.stdout
        );
    }
    Ok(())
}

/// Starts `binary` with `config` and expects it to exit non-zero, returning everything it printed.
async fn expect_startup_failure(binary: &str, config: &str, dir: &Path) -> Result<String> {
    let config_path = dir.join(format!("{binary}.yaml"));
    std::fs::write(&config_path, config)?;
    let log = dir.join(format!("{binary}.log"));
    let mut process = Process::spawn(ProcessSpec {
        name: binary.to_owned(),
        program: binaries::path(binary),
        args: vec!["--config".to_owned(), config_path.display().to_string()],
        env: Vec::new(),
        log: log.clone(),
    })?;
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = process.try_exit_status()? {
            ensure!(
                !status.success(),
                "{binary} accepted a bad config and exited 0"
            );
            return std::fs::read_to_string(&log).context("reading the startup log");
        }
        if start.elapsed() > START_DEADLINE {
            bail!(
                "{binary} kept running with an invalid config\n{}",
                process.log_tail()
            );
        }
        tokio::time::sleep(shoal_tests::process::POLL_INTERVAL).await;
    }
}

#[tokio::test]
async fn an_unknown_nested_config_field_stops_the_binary_naming_its_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("backend").display().to_string();
    let listen = free_loopback_addr()?;
    let cases = [
        (
            "shoal-origin",
            format!(
                "listen: {listen}\nbackend:\n  filesystem:\n    root: {root}\n    colour: blue\n"
            ),
            "backend.filesystem.colour",
        ),
        (
            "shoal-build-index",
            format!(
                "listen: {listen}\nbackend:\n  filesystem:\n    root: {root}\n    colour: blue\n"
            ),
            "backend.filesystem.colour",
        ),
        (
            "shoal-proxy",
            format!("listen: {listen}\nlog:\n  format: text\n  colour: blue\n"),
            "log.colour",
        ),
        (
            "shoal-agent",
            format!("listen: {listen}\ncache:\n  ttl: 1h\n  colour: blue\n"),
            "cache.colour",
        ),
        (
            "shoal-tracker",
            format!("listen: {listen}\norigins:\n  - {{http: a:1, peer: a:2, colour: blue}}\n"),
            "origins[0].colour",
        ),
    ];
    for (binary, config, field) in cases {
        let output = expect_startup_failure(binary, &config, dir.path()).await?;
        ensure!(
            output.contains(field),
            "{binary}: the error does not name `{field}`:\n{output}"
        );
    }
    Ok(())
}

/// The component an example config belongs to, from its file name.
fn binary_for(config: &Path) -> Option<String> {
    let stem = config.file_stem()?.to_str()?;
    let binary = format!("shoal-{stem}");
    binaries::ALL.contains(&binary.as_str()).then_some(binary)
}

/// Points every address and directory an example config names at this test's own free ports
/// and temp dirs, leaving the rest of the file as shipped.
fn localise(config: &mut Mapping, dir: &Path) -> Result<std::net::SocketAddr> {
    let listen = free_loopback_addr()?;
    let string = |s: String| Value::String(s);
    config.insert(string("listen".into()), string(listen.to_string()));
    if config.contains_key("data_dir") {
        let data = dir.join("data").display().to_string();
        config.insert(string("data_dir".into()), string(data));
    }
    if let Some(Value::Mapping(preheat)) = config.get_mut("preheat")
        && preheat.contains_key("state_dir")
    {
        let jobs = dir.join("preheat").display().to_string();
        preheat.insert(string("state_dir".into()), string(jobs));
    }
    if let Some(Value::Mapping(backend)) = config.get_mut("backend")
        && let Some(Value::Mapping(filesystem)) = backend.get_mut("filesystem")
    {
        let root = dir.join("backend").display().to_string();
        filesystem.insert(string("root".into()), string(root));
    }
    // Peers the component talks to: unused loopback ports, never a real cluster on this machine.
    if let Some(Value::Sequence(origins)) = config.get_mut("origins") {
        for origin in origins.iter_mut() {
            match origin {
                // The tracker names both of an origin's ports: `{http: …, peer: …}`.
                Value::Mapping(addrs) => {
                    for (_, addr) in addrs.iter_mut() {
                        *addr = string(free_loopback_addr()?.to_string());
                    }
                }
                _ => *origin = string(free_loopback_addr()?.to_string()),
            }
        }
    }
    // Every other address a component binds or dials (the agent's peer listener, its tracker).
    for key in ["build_index", "peer_listen", "tracker"] {
        if config.contains_key(key) {
            config.insert(
                string(key.into()),
                string(free_loopback_addr()?.to_string()),
            );
        }
    }
    Ok(listen)
}

/// Also: with stderr going to a file, log lines carry no ANSI colour codes.
#[tokio::test]
async fn every_example_config_starts_its_component() -> Result<()> {
    let configs_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/configs");
    if !configs_dir.is_dir() {
        eprintln!("skipped: {} does not exist", configs_dir.display());
        return Ok(());
    }
    let mut started = 0;
    for entry in std::fs::read_dir(&configs_dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let Some(binary) = binary_for(&path) else {
            eprintln!("not a component config, skipped: {}", path.display());
            continue;
        };
        let dir = tempfile::tempdir()?;
        let text = std::fs::read_to_string(&path)?;
        let mut config: Mapping = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{} is not a YAML mapping", path.display()))?;
        let listen = localise(&mut config, dir.path())?;
        let localised = dir.path().join("config.yaml");
        std::fs::write(&localised, serde_yaml_ng::to_string(&config)?)?;

        let mut process = Process::spawn(ProcessSpec {
            name: binary.clone(),
            program: binaries::path(&binary),
            args: vec!["--config".to_owned(), localised.display().to_string()],
            env: vec![("RUST_LOG".to_owned(), "info".to_owned())],
            log: dir.path().join("log"),
        })?;
        wait_until_ready(
            &mut process,
            &format!("http://{listen}/health"),
            START_DEADLINE,
        )
        .await
        .with_context(|| format!("starting {binary} with {}", path.display()))?;
        let status = process.terminate(Duration::from_secs(15))?;
        ensure!(
            status.success(),
            "{binary} with {} exited with {status} on SIGTERM\n{}",
            path.display(),
            process.log_tail()
        );
        // Its stderr went to a file: log lines carry no terminal colour codes.
        let log = std::fs::read(dir.path().join("log"))?;
        ensure!(!log.is_empty(), "{binary} logged nothing");
        ensure!(
            !log.contains(&0x1b),
            "{binary} wrote ANSI escape codes to a file\n{}",
            process.log_tail()
        );
        started += 1;
    }
    ensure!(
        started > 0,
        "no component config found in {}",
        configs_dir.display()
    );
    Ok(())
}
