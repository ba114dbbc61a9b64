//! The deployment artefacts in `deploy/` work: the Helm chart renders, lints and validates
//! offline (a real Helm v4 renderer from PyPI) and every component config it renders starts the
//! real binary (with mutual TLS, on generated certificates of its role; with the proxy's auth,
//! challenging and admitting as rendered); the compose cluster, built from the local scratch image, serves a `docker pull`
//! through an agent container; and the Grafana dashboard queries only metrics that the running
//! components export.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reqwest::StatusCode;
use rustls::pki_types::ServerName;
use serde_yaml_ng::{Mapping, Value};
use shoal_tests::binaries;
use shoal_tests::images::{generate, image_spec, layout_blobs};
use shoal_tests::ports::free_loopback_addr_list;
use shoal_tests::process::{Process, ProcessSpec, wait_until_answers_via};
use shoal_tests::tls::TestCerts;
use shoal_tests::tools::{
    docker, docker_image_id, ensure_docker_daemon_shares_our_loopback, run_command, skopeo,
};
use shoal_tls::generate::Authority;
use shoal_tls::{Role, Roles, TlsConfig};
use tokio::net::TcpStream;

/// A debug binary starts in well under a second; the margin covers a loaded 2-core machine.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Containers start from a local image in seconds; the margin covers a busy machine.
const COMPOSE_READY_DEADLINE: Duration = Duration::from_secs(90);
const MIB: u64 = 1 << 20;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The venv scripts/install-deps puts helm-python-sdk and kubernetes-validate in.
fn helm_python() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let python = PathBuf::from(home).join(".cache/shoal/helm-venv/bin/python");
    assert!(
        python.is_file(),
        "{} not found: run scripts/install-deps (it installs helm-python-sdk and \
         kubernetes-validate there)",
        python.display()
    );
    python
}

/// The YAML mapping at `key`, created when absent.
fn mapping_at<'a>(map: &'a mut Mapping, key: &str) -> Result<&'a mut Mapping> {
    let entry = map
        .entry(Value::from(key))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    entry
        .as_mapping_mut()
        .with_context(|| format!("`{key}` is not a mapping"))
}

/// The user the proxy's rendered `auth.htpasswd` admits here (the Secret exists only in a pod).
const USER: (&str, &str) = ("chart-test", "chart-test-password");

/// The Secrets a rendered config reads exist only in a pod: write stand-ins into `work` and
/// point the config at them. The `tls:` section gets a certificate of the component's role from
/// a fresh cluster CA when it asks for mutual TLS (`ca`), else a server certificate for the
/// proxy's public listener; `auth` gets an htpasswd file admitting [`USER`] or a token root
/// bundle.
fn stand_in_secrets(component: &str, map: &mut Mapping, work: &Path) -> Result<StandIns> {
    let client = shoal_service::client::builder().timeout(Duration::from_secs(2));
    // HTTP/1.1: see TestCerts::wait_until_ready (a server shutting down closes idle HTTP/1.1
    // connections by itself).
    let mut mtls = None;
    let client = match map.get_mut("tls").and_then(Value::as_mapping_mut) {
        Some(tls) if tls.contains_key("ca") => {
            let role = Role::ALL
                .into_iter()
                .find(|role| role.as_str() == component)
                .with_context(|| format!("no role for {component}"))?;
            let authority = Authority::new()?;
            let files = authority.write(&work.join("mtls"), role)?;
            let ca = files.ca.as_ref().context("Authority::write sets ca")?;
            tls.insert("cert".into(), files.cert.display().to_string().into());
            tls.insert("key".into(), files.key.display().to_string().into());
            tls.insert("ca".into(), ca.display().to_string().into());
            mtls = Some((files, role));
            let root = reqwest::Certificate::from_pem(authority.ca_pem().as_bytes())?;
            client.tls_certs_only([root]).http1_only()
        }
        Some(tls) => {
            let certs = TestCerts::generate(&work.join("tls"))?;
            tls.insert("cert".into(), certs.cert().display().to_string().into());
            tls.insert("key".into(), certs.key().display().to_string().into());
            certs.client()?.http1_only()
        }
        None => client,
    };
    if let Some(auth) = map.get_mut("auth").and_then(Value::as_mapping_mut) {
        if let Some(htpasswd) = auth.get_mut("htpasswd").and_then(Value::as_mapping_mut) {
            let hash =
                bcrypt::hash_with_result(USER.1, 4)?.format_for_version(bcrypt::Version::TwoY);
            let path = work.join("htpasswd");
            std::fs::write(&path, format!("{}:{hash}\n", USER.0))?;
            htpasswd.insert("path".into(), path.display().to_string().into());
        }
        if let Some(token) = auth.get_mut("token").and_then(Value::as_mapping_mut) {
            let path = work.join("token-root.pem");
            std::fs::write(&path, Authority::new()?.ca_pem())?;
            token.insert("root_cert_bundle".into(), path.display().to_string().into());
        }
    }
    Ok(StandIns {
        http: client.build()?,
        mtls,
    })
}

/// What [`stand_in_secrets`] wrote.
struct StandIns {
    /// Trusts the listener's CA; no client certificate, as the probes have none.
    http: reqwest::Client,
    /// With mutual TLS, the component's certificate files and its role.
    mtls: Option<(TlsConfig, Role)>,
}

/// The peer port (gRPC) serves TLS with a certificate of `role` from the cluster CA: a client
/// presenting the component's own certificate completes the handshake, verifying the server as
/// components verify each other (CA and role).
async fn check_peer_tls(addr: SocketAddr, files: &TlsConfig, role: Role) -> Result<()> {
    let client = files
        .client(Roles::of(&[role]), &[b"h2"])?
        .context("the config has a CA")?;
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("127.0.0.1")?, tcp)
        .await
        .with_context(|| format!("TLS handshake with the {role} peer port {addr}"))?;
    Ok(())
}

/// The proxy's rendered `auth` is in force: `/v2/` without credentials is a 401 whose challenge
/// names the rendered realm, and with htpasswd [`USER`] logs in.
async fn check_auth(http: &reqwest::Client, base: &str, auth: &Mapping) -> Result<()> {
    let url = format!("{base}/v2/");
    let anonymous = http.get(&url).send().await?;
    let challenge = anonymous
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (scheme, section) = match auth.get("htpasswd") {
        Some(htpasswd) => ("Basic", htpasswd),
        None => (
            "Bearer",
            auth.get("token").context("auth has htpasswd or token")?,
        ),
    };
    let realm = section["realm"].as_str().context("auth realm")?;
    ensure!(
        anonymous.status() == 401 && challenge.starts_with(&format!("{scheme} realm=\"{realm}\"")),
        "anonymous /v2/ answered {} with challenge {challenge:?}",
        anonymous.status()
    );
    if scheme == "Basic" {
        let login = http
            .get(&url)
            .basic_auth(USER.0, Some(USER.1))
            .send()
            .await?;
        ensure!(
            login.status() == 200,
            "{} logging in as {}",
            login.status(),
            USER.0
        );
    }
    Ok(())
}

/// Starts `shoal-<component>` with a config the chart rendered, changing only what cannot work
/// on this machine (listen addresses, data and backend directories, the Secrets' files), and
/// waits for `/health`.
async fn start_with_rendered_config(component: &str, rendered: &Path, work: &Path) -> Result<()> {
    let text = std::fs::read_to_string(rendered)
        .with_context(|| format!("reading {}", rendered.display()))?;
    let mut config: Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{} is not YAML", rendered.display()))?;
    let map = config
        .as_mapping_mut()
        .with_context(|| format!("{} is not a mapping", rendered.display()))?;
    let addrs = free_loopback_addr_list(2)?;
    map.insert("listen".into(), addrs[0].to_string().into());
    if map.contains_key("peer_listen") {
        map.insert("peer_listen".into(), addrs[1].to_string().into());
    }
    for dir in ["data_dir", "pending_dir"] {
        if map.contains_key(dir) {
            let data = work.join(dir);
            map.insert(dir.into(), data.display().to_string().into());
        }
    }
    // A DNS membership source asks a local port where nothing answers, never the machine's
    // resolver: the rendered cluster names exist only inside Kubernetes.
    if let Some(origins) = map.get_mut("origins").and_then(Value::as_mapping_mut)
        && let Some(dns) = origins.get_mut("dns").and_then(Value::as_mapping_mut)
    {
        let nowhere = free_loopback_addr_list(1)?[0].to_string();
        dns.insert("nameserver".into(), nowhere.into());
    }
    // The proxy's preheat jobs and the agents it preheats into, likewise.
    if let Some(preheat) = map.get_mut("preheat").and_then(Value::as_mapping_mut) {
        if preheat.contains_key("state_dir") {
            let jobs = work.join("preheat").display().to_string();
            preheat.insert("state_dir".into(), jobs.into());
        }
        if let Some(dns) = preheat
            .get_mut("agents")
            .and_then(|agents| agents.get_mut("members"))
            .and_then(|members| members.get_mut("dns"))
            .and_then(Value::as_mapping_mut)
        {
            let nowhere = free_loopback_addr_list(1)?[0].to_string();
            dns.insert("nameserver".into(), nowhere.into());
        }
    }
    if map.contains_key("backend") {
        let backend = mapping_at(map, "backend")?;
        if backend.contains_key("filesystem") {
            let root = work.join("backend").display().to_string();
            mapping_at(backend, "filesystem")?.insert("root".into(), root.into());
        }
    }
    let stand_ins = stand_in_secrets(component, map, work)?;
    let http = &stand_ins.http;
    // The agent's `listen` is its registry port, which stays plain HTTP under mutual TLS.
    let base = match map.contains_key("tls") && component != "agent" {
        true => format!("https://{}", addrs[0]),
        false => format!("http://{}", addrs[0]),
    };
    let auth = map.get("auth").and_then(Value::as_mapping).cloned();
    let peer_tls = stand_ins
        .mtls
        .as_ref()
        .filter(|_| map.contains_key("peer_listen"));
    let path = work.join("config.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&config)?)?;

    let name = format!("shoal-{component}");
    let mut process = Process::spawn(ProcessSpec {
        name: format!("{name} ({})", rendered.display()),
        program: binaries::path(&name),
        args: vec!["--config".into(), path.display().to_string()],
        env: vec![("RUST_LOG".into(), "warn".into())],
        log: work.join("log"),
    })?;
    let health = format!("{base}/health");
    wait_until_answers_via(
        http,
        &mut process,
        &health,
        StatusCode::OK,
        STARTUP_DEADLINE,
    )
    .await?;
    if let Some(auth) = &auth {
        check_auth(http, &base, auth).await?;
    }
    if let Some((files, role)) = peer_tls {
        check_peer_tls(addrs[1], files, *role).await?;
    }
    let status = process.terminate(Duration::from_secs(15))?;
    ensure!(
        status.success(),
        "{name} exited with {status} after SIGTERM\n{}",
        process.log_tail()
    );
    Ok(())
}

#[tokio::test]
async fn helm_chart_renders_validates_and_its_configs_start_the_binaries() -> Result<()> {
    let out = tempfile::tempdir()?;
    let mut command = tokio::process::Command::new(helm_python());
    command
        .arg(workspace().join("deploy/helm/check.py"))
        .arg("--out")
        .arg(out.path());
    let output = run_command(command).await?;
    eprintln!("{}", output.stdout.trim_end());

    let listing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("configs.json"))?)?;
    let configs = listing.as_array().context("configs.json is a list")?;
    let mut seen = BTreeSet::new();
    for (i, entry) in configs.iter().enumerate() {
        let component = entry["component"].as_str().context("component")?;
        let path = PathBuf::from(entry["path"].as_str().context("path")?);
        let variant = entry["variant"].as_str().context("variant")?;
        seen.insert((variant.to_owned(), component));
        let work = out.path().join(format!("run-{i}"));
        std::fs::create_dir_all(&work)?;
        start_with_rendered_config(component, &path, &work)
            .await
            .with_context(|| format!("the chart's {component} config {}", path.display()))?;
    }
    let all = ["origin", "build-index", "proxy", "tracker", "agent"];
    let expected = [
        ("default", &all[..]),
        ("all-options", &all[..]),
        ("dns", &["build-index", "proxy", "tracker"][..]),
        ("mtls-cert-manager", &all[..]),
        ("mtls-secrets", &all[..]),
    ];
    for (variant, components) in expected {
        for component in components {
            ensure!(
                seen.contains(&(variant.to_owned(), *component)),
                "check.py rendered no {component} config for {variant}"
            );
        }
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `docker-compose` (v1) when installed, else the `docker compose` plugin.
fn compose_command(project: &str, env: &[(&str, String)]) -> std::process::Command {
    let file = workspace().join("deploy/compose/compose.yaml");
    let mut command = if on_path("docker-compose") {
        std::process::Command::new("docker-compose")
    } else {
        let mut command = std::process::Command::new("docker");
        command.arg("compose");
        command
    };
    command
        .arg("--project-name")
        .arg(project)
        .arg("--file")
        .arg(file)
        .envs(env.iter().map(|(k, v)| (*k, v)));
    command
}

async fn compose(project: &str, env: &[(&str, String)], args: &[&str]) -> Result<String> {
    let mut command = tokio::process::Command::from(compose_command(project, env));
    command.args(args);
    Ok(run_command(command).await?.stdout)
}

/// Takes the compose project down (containers, network, volumes) and removes the images the test
/// built and pulled, on success and on failure alike. Everything is named by this run only.
struct ComposeCleanup {
    project: String,
    env: Vec<(&'static str, String)>,
    images: Vec<String>,
    context: PathBuf,
}

impl ComposeCleanup {
    fn run(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        let down = compose_command(&self.project, &self.env)
            .args(["down", "--volumes", "--remove-orphans", "--timeout", "20"])
            .output();
        match down {
            Ok(output) if output.status.success() => {}
            Ok(output) => problems.push(format!(
                "compose down failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )),
            Err(e) => problems.push(format!("running compose down: {e}")),
        }
        for image in std::mem::take(&mut self.images) {
            let exists = std::process::Command::new("docker")
                .args(["image", "inspect", &image])
                .output()
                .is_ok_and(|o| o.status.success());
            if !exists {
                continue;
            }
            match std::process::Command::new("docker")
                .args(["rmi", "--force", &image])
                .output()
            {
                Ok(output) if output.status.success() => {}
                Ok(output) => problems.push(format!(
                    "docker rmi {image}: {}",
                    String::from_utf8_lossy(&output.stderr)
                )),
                Err(e) => problems.push(format!("docker rmi {image}: {e}")),
            }
        }
        let _ = std::fs::remove_dir_all(&self.context);
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("cleanup: {}", problems.join("; "))
        }
    }
}

impl Drop for ComposeCleanup {
    fn drop(&mut self) {
        if let Err(e) = self.run() {
            eprintln!("{e:#}");
        }
    }
}

async fn wait_for_health(url: &str, project: &str, env: &[(&str, String)]) -> Result<()> {
    let http = shoal_service::client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let start = Instant::now();
    loop {
        if let Ok(response) = http.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if start.elapsed() > COMPOSE_READY_DEADLINE {
            let logs = compose(project, env, &["logs", "--no-color", "--tail", "40"])
                .await
                .unwrap_or_else(|e| format!("{e:#}"));
            bail!("{url} did not answer within {COMPOSE_READY_DEADLINE:?}\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every metric sample and family name a component's `/metrics` lists.
fn metric_names(text: &str, names: &mut BTreeSet<String>) {
    for line in text.lines() {
        let name = if let Some(rest) = line.strip_prefix("# TYPE ") {
            rest.split_whitespace().next()
        } else if line.starts_with('#') {
            None
        } else {
            line.split(['{', ' ']).next()
        };
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            names.insert(name.to_owned());
        }
    }
}

/// Every `shoal_…` identifier in the dashboard's PromQL expressions.
fn dashboard_metrics(dashboard: &serde_json::Value, found: &mut BTreeSet<String>) {
    match dashboard {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if key == "expr"
                    && let Some(expr) = value.as_str()
                {
                    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
                    let mut rest = expr;
                    while let Some(start) = rest.find("shoal_") {
                        let preceded = rest[..start].chars().next_back().is_some_and(is_ident);
                        let tail = &rest[start..];
                        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
                        if !preceded {
                            found.insert(tail[..end].to_owned());
                        }
                        rest = &tail[end..];
                    }
                } else {
                    dashboard_metrics(value, found);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_metrics(v, found)),
        _ => {}
    }
}

#[tokio::test]
async fn compose_cluster_serves_a_docker_pull_through_an_agent_and_the_dashboard_metrics()
-> Result<()> {
    docker(["info"])
        .await
        .context("the Docker daemon must be running")?;
    ensure_docker_daemon_shares_our_loopback()?;

    // Names unique to this run: the Docker Engine is shared by every test and every run.
    let run = std::process::id();
    let project = format!("shoaldeploytest{run}");
    let image_tag = format!("shoal-deploy-test:{run}");
    let ports = free_loopback_addr_list(3)?;
    let env: Vec<(&'static str, String)> = vec![
        ("SHOAL_IMAGE", image_tag.clone()),
        ("SHOAL_PROXY_PORT", ports[0].port().to_string()),
        ("SHOAL_AGENT0_PORT", ports[1].port().to_string()),
        ("SHOAL_AGENT1_PORT", ports[2].port().to_string()),
    ];
    let work = tempfile::tempdir()?;
    let mut cleanup = ComposeCleanup {
        project: project.clone(),
        env: env.clone(),
        images: vec![image_tag.clone()],
        context: work.path().join("docker-context"),
    };

    // The image, from the binaries this test run uses.
    let profile = binaries::path("shoal-agent")
        .parent()
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .context("the binaries' profile directory")?
        .to_owned();
    let mut build = tokio::process::Command::new(workspace().join("deploy/docker/build-local.sh"));
    build
        .args(["--profile", &profile, "--tag", &image_tag, "--context"])
        .arg(&cleanup.context);
    run_command(build).await?;

    compose(&project, &env, &["up", "--detach"]).await?;
    for addr in &ports {
        wait_for_health(&format!("http://{addr}/health"), &project, &env).await?;
    }

    // Push through the proxy's published port.
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![4 * MIB, 150_000], 0x5e0_d301, "v1"),
    )
    .await?;
    let tag = format!("r{run}");
    skopeo([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", image.dir.display()),
        &format!("docker://{}/compose/app:{tag}", ports[0]),
    ])
    .await?;

    // docker pulls through agent-0's container; the image id is the config digest.
    let pulled = format!("{}/compose/app:{tag}", ports[1]);
    cleanup.images.push(pulled.clone());
    docker(["pull", &pulled]).await.map_err(|e| {
        let logs = std::process::Command::new("docker")
            .args(["logs", "--tail", "30"])
            .arg(format!("{project}_agent-0_1"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        e.context(logs)
    })?;
    let id = docker_image_id(&pulled).await?;
    ensure!(
        id == image.config.0.to_string(),
        "pulled image id {id}, pushed config {}",
        image.config.0
    );

    // The second agent serves the same bytes.
    let copied = work.path().join("from-agent-1");
    skopeo([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{}/compose/app:{tag}", ports[2]),
        &format!("oci:{}:v1", copied.display()),
    ])
    .await?;
    ensure!(
        layout_blobs(&copied)? == layout_blobs(&image.dir)?,
        "blobs pulled through agent-1 differ from the pushed ones"
    );

    // Scrape every component over the compose network and check the dashboard against it.
    let http = shoal_service::client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut exported = BTreeSet::new();
    for (service, port) in [
        ("origin-0", 15100),
        ("origin-1", 15100),
        ("build-index", 15004),
        ("tracker", 15003),
        ("proxy", 15000),
        ("agent-0", 16000),
        ("agent-1", 16000),
    ] {
        let id = compose(&project, &env, &["ps", "-q", service]).await?;
        let ip = docker([
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            id.trim(),
        ])
        .await?
        .stdout
        .trim()
        .to_owned();
        let text = http
            .get(format!("http://{ip}:{port}/metrics"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("scraping {service} at {ip}:{port}"))?
            .text()
            .await?;
        metric_names(&text, &mut exported);
    }
    let dashboard: serde_json::Value = serde_json::from_slice(&std::fs::read(
        workspace().join("deploy/grafana/shoal.json"),
    )?)
    .context("deploy/grafana/shoal.json is not valid JSON")?;
    let mut queried = BTreeSet::new();
    dashboard_metrics(&dashboard, &mut queried);
    for required in [
        "shoal_http_requests_total",
        "shoal_http_request_duration_seconds_bucket",
        "shoal_origin_blob_bytes_served_total",
        "shoal_p2p_bytes_received_total",
        "shoal_origin_writeback_queue_depth",
        "shoal_origin_writeback_oldest_age_seconds",
        "shoal_tracker_swarm_peers_bucket",
        "shoal_agent_cache_bytes",
    ] {
        ensure!(
            queried.contains(required),
            "the dashboard has no panel over {required}"
        );
    }
    let unknown: Vec<_> = queried.difference(&exported).collect();
    ensure!(
        unknown.is_empty(),
        "the dashboard queries metrics no component exports: {unknown:?}\nexported: {exported:?}"
    );

    cleanup.run()?;
    ensure!(
        docker(["image", "inspect", &image_tag]).await.is_err(),
        "the test image {image_tag} survived the cleanup"
    );
    Ok(())
}
