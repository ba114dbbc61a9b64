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
        "shoal_p2p_download_duration_seconds_bucket",
        "shoal_agent_blob_first_byte_seconds_bucket",
        "shoal_p2p_downloads_active",
        "shoal_p2p_peers_connected",
        "shoal_origin_egress_bytes_total",
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

/// Runs deploy/helm/check.py into `out` (it fails when the chart does) and returns the objects
/// it rendered for `variant`.
async fn rendered_objects(out: &Path, variant: &str) -> Result<Vec<serde_json::Value>> {
    if !out.join("configs.json").is_file() {
        let mut command = tokio::process::Command::new(helm_python());
        command
            .arg(workspace().join("deploy/helm/check.py"))
            .arg("--out")
            .arg(out);
        run_command(command).await?;
    }
    let path = out.join(variant).join("objects.json");
    let objects: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    objects
        .as_array()
        .cloned()
        .context("objects.json is a list")
}

fn find_object<'a>(
    objects: &'a [serde_json::Value],
    kind: &str,
    name: &str,
) -> Result<&'a serde_json::Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("the chart rendered no {kind} {name}"))
}

/// The rendered agent pod's node-setup container and its ConfigMap's files.
fn node_setup_parts(
    objects: &[serde_json::Value],
) -> Result<(
    serde_json::Value,
    serde_json::Map<String, serde_json::Value>,
)> {
    let agent = find_object(objects, "DaemonSet", "shoal-agent")?;
    let container = agent["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "node-setup"))
        .cloned()
        .context("the agent pod has no node-setup container")?;
    let files = find_object(objects, "ConfigMap", "shoal-node-setup")?["data"]
        .as_object()
        .cloned()
        .context("node-setup ConfigMap data")?;
    Ok((container, files))
}

/// Runs the rendered node-setup script (`install` or `restore`) as the node-setup container
/// does, with the container's environment except the node's paths and the agent's address.
async fn node_setup(
    container: &serde_json::Value,
    scripts: &Path,
    action: &str,
    paths: &[(&str, String)],
) -> Result<String> {
    let mut command = tokio::process::Command::new("sh");
    command
        .arg(scripts.join("node-setup.sh"))
        .arg(action)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for entry in container["env"].as_array().context("node-setup env")? {
        let name = entry["name"].as_str().context("env name")?;
        let value = paths
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
            .or_else(|| entry["value"].as_str().map(str::to_owned));
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    Ok(run_command(command).await?.stdout)
}

/// containerd's catch-all mirror as the chart installs it: with the rendered node-setup script
/// (`_default`, and `config_path` added to a containerd config that has none), `ctr` pulls an
/// image by two registry names nothing serves through the agent (the agent's metrics count the
/// blob requests; the fallback upstream is a closed port), the edited config starts containerd
/// again, and `restore` brings back every file byte for byte.
#[tokio::test]
async fn node_setup_mirrors_any_registry_through_the_agent_on_a_real_containerd() -> Result<()> {
    let out = tempfile::tempdir()?;
    let objects = rendered_objects(out.path(), "default").await?;
    let (container, files) = node_setup_parts(&objects)?;

    let cluster =
        shoal_tests::cluster::Cluster::start(shoal_tests::cluster::ClusterOptions::with_agents(1))
            .await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![2 * MIB, 70_000], 0x0de_5e7, "v1"),
    )
    .await?;
    shoal_tests::tools::skopeo_push(
        &image.dir,
        "v1",
        &format!("{}/chart/app:v1", cluster.proxy_addr()),
    )
    .await?;

    let mut containerd =
        shoal_tests::containerd::Containerd::start(&work.path().join("ctrd")).await?;
    let original_config = std::fs::read(containerd.config())?;
    // The node's own catch-all, which install must keep and restore.
    let certs = work.path().join("certs.d");
    let own = certs.join("_default/hosts.toml");
    std::fs::create_dir_all(own.parent().context("parent")?)?;
    let own_text = b"# the node's own catch-all\n[host.\"https://mirror.example\"]\n";
    std::fs::write(&own, own_text)?;
    let scripts = work.path().join("node-setup");
    std::fs::create_dir_all(&scripts)?;
    for (name, text) in &files {
        std::fs::write(
            scripts.join(name),
            text.as_str().context("ConfigMap value")?,
        )?;
    }
    let paths = [
        ("CERTS_DIR", certs.display().to_string()),
        ("CONTAINERD_CERTS_PATH", certs.display().to_string()),
        (
            "CONTAINERD_CONFIG",
            containerd.config().display().to_string(),
        ),
        (
            "REGISTRIES",
            scripts.join("registries").display().to_string(),
        ),
        ("AGENT_ENDPOINT", cluster.agent_url(0)),
    ];

    let installed = node_setup(&container, &scripts, "install", &paths).await?;
    eprintln!("{installed}");
    let config = std::fs::read_to_string(containerd.config())?;
    ensure!(
        config.contains(&format!("config_path = \"{}\"", certs.display())),
        "install did not set config_path:\n{config}"
    );
    let backup = own.with_file_name("hosts.toml.shoal-backup");
    ensure!(
        std::fs::read(&backup).with_context(|| format!("reading {}", backup.display()))?
            == own_text,
        "the node's own hosts.toml was not kept"
    );
    // containerd reads config_path at start only: the documented restart, which must accept
    // the edited file.
    containerd.restart().await?;

    let agent = shoal_tests::cluster::Component::Agent(0);
    let before = cluster
        .metric(agent, "shoal_agent_blob_requests_total")
        .await?
        .unwrap_or(0.0);
    for _ in 0..2 {
        // An IP literal (no DNS query leaves the machine) on a port where nothing listens: the
        // pull succeeds only through the agent.
        let registry = shoal_tests::ports::free_loopback_addr()?;
        let reference = format!("{registry}/chart/app:v1");
        containerd
            .ctr([
                "images",
                "pull",
                "--hosts-dir",
                &certs.display().to_string(),
                &reference,
            ])
            .await
            .with_context(|| containerd.log_tail())?;
        let listed = containerd.ctr(["images", "ls", "--quiet"]).await?.stdout;
        ensure!(
            listed.lines().any(|l| l == reference),
            "{reference} not in {listed}"
        );
        let digest = containerd
            .ctr(["images", "ls", &format!("name=={reference}")])
            .await?
            .stdout;
        ensure!(
            digest.contains(&image.manifest_digest.to_string()),
            "{reference} is not the pushed manifest {}:\n{digest}",
            image.manifest_digest
        );
    }
    let after = cluster
        .metric(agent, "shoal_agent_blob_requests_total")
        .await?
        .unwrap_or(0.0);
    ensure!(
        after > before,
        "the agent served no blob request ({before} before, {after} after)"
    );

    let restored = node_setup(&container, &scripts, "restore", &paths).await?;
    eprintln!("{restored}");
    ensure!(
        std::fs::read(containerd.config())? == original_config,
        "containerd's config is not byte-identical after restore"
    );
    ensure!(
        std::fs::read(&own)? == own_text,
        "the node's hosts.toml changed"
    );
    let mut left: Vec<_> = walk(&certs)?;
    left.sort();
    ensure!(left == [own.clone()], "restore left files behind: {left:?}");
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// What a pod's containers get from the downward API here.
const NODE_NAME: &str = "chart-test-node";
/// A container started from the local image comes up in seconds; margin for a loaded machine.
const POD_READY_DEADLINE: Duration = Duration::from_secs(120);

/// The chart's pods emulated with the Docker Engine, as the kubelet would run them: per pod a
/// holder container owns the network namespace (the kubelet's pause container; the pod's
/// Service names are its aliases on a private network), the init containers run to completion
/// in order, then the containers, all joined to it, each with the rendered user, groups
/// (fsGroup as a supplementary group), read-only root, capabilities, no-new-privileges, env
/// (downward API filled in) and volumes (configMap: the rendered data; emptyDir and volume
/// claims: empty directories group-owned by fsGroup with the setgid bit, as the kubelet leaves
/// them; hostPath: root-owned directories, as the kubelet creates them). Every container,
/// the network and the image are named by this run and removed on drop.
struct DockerPods {
    run: String,
    image: String,
    network: String,
    /// The network's gateway: the "node" address (`status.hostIP`).
    gateway: String,
    dir: PathBuf,
    objects: Vec<serde_json::Value>,
    /// Every container created, for the cleanup.
    containers: Vec<String>,
    /// Host directories of hostPath volumes by (pod, volume), for the checks.
    host_paths: Vec<((String, String), PathBuf)>,
}

/// One running pod.
struct DockerPod {
    name: String,
    ip: String,
    spec: serde_json::Value,
    /// Container name in the pod → Docker container name.
    containers: Vec<(String, String)>,
}

impl DockerPods {
    async fn new(
        run: String,
        image: String,
        dir: PathBuf,
        objects: Vec<serde_json::Value>,
    ) -> Result<DockerPods> {
        let network = format!("{run}-net");
        docker(["network", "create", &network]).await?;
        let gateway = docker([
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            &network,
        ])
        .await?
        .stdout
        .trim()
        .to_owned();
        Ok(DockerPods {
            run,
            image,
            network,
            gateway,
            dir,
            objects,
            containers: Vec::new(),
            host_paths: Vec::new(),
        })
    }

    /// Starts pod `name` of `workload` with network aliases `aliases` (its DNS names) and waits
    /// for every container's startup and readiness probes. `host_files` are written into
    /// hostPath volumes first (volume name, file, contents): the node's own files.
    async fn start(
        &mut self,
        workload: &serde_json::Value,
        name: &str,
        aliases: &[String],
        host_files: &[(&str, &str, &[u8])],
    ) -> Result<DockerPod> {
        let spec = workload["spec"]["template"]["spec"].clone();
        let holder = format!("{}-{name}", self.run);
        let mut args = vec![
            "run".to_owned(),
            "--detach".into(),
            "--name".into(),
            holder.clone(),
            "--network".into(),
            self.network.clone(),
            "--user".into(),
            "65532:65532".into(),
        ];
        for alias in aliases {
            args.extend(["--network-alias".into(), alias.clone()]);
        }
        args.extend([self.image.clone(), "sleep".into(), "1000000".into()]);
        self.containers.push(holder.clone());
        docker(&args).await?;
        let ip = docker([
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &holder,
        ])
        .await?
        .stdout
        .trim()
        .to_owned();
        let mut pod = DockerPod {
            name: name.to_owned(),
            ip,
            spec,
            containers: Vec::new(),
        };
        let mounts = self.volumes(workload, &pod, host_files)?;
        for init in pod.spec["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let args = self.container_args(&pod, &holder, &init, &mounts, None)?;
            docker(&args)
                .await
                .with_context(|| format!("init container {} of {name}", init["name"]))?;
        }
        for container in pod.spec["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let docker_name = format!("{holder}-{}", container["name"].as_str().context("name")?);
            let args =
                self.container_args(&pod, &holder, &container, &mounts, Some(&docker_name))?;
            self.containers.push(docker_name.clone());
            docker(&args).await?;
            pod.containers.push((
                container["name"].as_str().unwrap_or_default().to_owned(),
                docker_name,
            ));
        }
        for container in pod.spec["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                if container.get(probe).is_some() {
                    self.wait_for_probe(&pod, &container, probe, 200).await?;
                }
            }
        }
        Ok(pod)
    }

    /// The pod's volumes as host directories, prepared as the kubelet would, and the mounts of
    /// each volume name.
    fn volumes(
        &mut self,
        workload: &serde_json::Value,
        pod: &DockerPod,
        host_files: &[(&str, &str, &[u8])],
    ) -> Result<Vec<(String, PathBuf)>> {
        use std::os::unix::fs::PermissionsExt;
        let fs_group = pod.spec["securityContext"]["fsGroup"]
            .as_u64()
            .map(|g| g as u32);
        let mut volumes: Vec<serde_json::Value> =
            pod.spec["volumes"].as_array().cloned().unwrap_or_default();
        // A StatefulSet's claims: an empty volume each.
        for claim in workload["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
        {
            volumes.push(
                serde_json::json!({"name": claim["metadata"]["name"], "persistentVolumeClaim": {}}),
            );
        }
        let mut mounts = Vec::new();
        for volume in volumes {
            let name = volume["name"].as_str().context("volume name")?.to_owned();
            let path = self.dir.join(&pod.name).join(&name);
            std::fs::create_dir_all(&path)?;
            if let Some(config_map) = volume.get("configMap") {
                let wanted = config_map["name"].as_str().context("configMap name")?;
                let data = find_object(&self.objects, "ConfigMap", wanted)?["data"]
                    .as_object()
                    .context("ConfigMap data")?;
                for (key, text) in data {
                    std::fs::write(path.join(key), text.as_str().context("data value")?)?;
                }
            } else if volume.get("emptyDir").is_some()
                || volume.get("persistentVolumeClaim").is_some()
            {
                // The kubelet's volume ownership for fsGroup: group fsGroup, group-writable,
                // setgid (an emptyDir is world-writable as well).
                let mode = if volume.get("emptyDir").is_some() {
                    0o2777
                } else {
                    0o2770
                };
                std::os::unix::fs::chown(&path, Some(0), fs_group)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            } else if volume.get("hostPath").is_some() {
                std::os::unix::fs::chown(&path, Some(0), Some(0))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
                for (volume_name, file, contents) in host_files {
                    if *volume_name == name {
                        std::fs::write(path.join(file), contents)?;
                    }
                }
                self.host_paths
                    .push(((pod.name.clone(), name.clone()), path.clone()));
            } else {
                bail!(
                    "volume {name} of {}: a kind this test does not emulate: {volume}",
                    pod.name
                );
            }
            mounts.push((name, path));
        }
        Ok(mounts)
    }

    /// `docker run` arguments for one container of the pod: `detach` names a long-running one,
    /// else it runs to completion (an init container).
    fn container_args(
        &self,
        pod: &DockerPod,
        holder: &str,
        container: &serde_json::Value,
        mounts: &[(String, PathBuf)],
        detach: Option<&str>,
    ) -> Result<Vec<String>> {
        let name = container["name"].as_str().context("container name")?;
        let mut args = vec!["run".to_owned()];
        match detach {
            Some(docker_name) => {
                args.extend(["--detach".into(), "--name".into(), docker_name.into()])
            }
            None => args.push("--rm".into()),
        }
        args.extend(["--network".into(), format!("container:{holder}")]);
        // The container's securityContext over the pod's.
        let pod_context = &pod.spec["securityContext"];
        let context = &container["securityContext"];
        let field = |key: &str| context.get(key).or_else(|| pod_context.get(key)).cloned();
        let uid = field("runAsUser").and_then(|v| v.as_u64()).unwrap_or(0);
        let gid = field("runAsGroup").and_then(|v| v.as_u64()).unwrap_or(0);
        if field("runAsNonRoot").and_then(|v| v.as_bool()) == Some(true) {
            ensure!(
                uid != 0,
                "{name} of {}: runAsNonRoot with uid 0: the kubelet refuses it",
                pod.name
            );
        }
        args.extend(["--user".into(), format!("{uid}:{gid}")]);
        if let Some(group) = pod_context["fsGroup"].as_u64() {
            args.extend(["--group-add".into(), group.to_string()]);
        }
        if context["readOnlyRootFilesystem"] == true {
            args.push("--read-only".into());
        }
        if context["allowPrivilegeEscalation"] == false {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        for cap in context["capabilities"]["drop"]
            .as_array()
            .into_iter()
            .flatten()
        {
            args.extend([
                "--cap-drop".into(),
                cap.as_str().context("capability")?.into(),
            ]);
        }
        for cap in context["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
        {
            args.extend([
                "--cap-add".into(),
                cap.as_str().context("capability")?.into(),
            ]);
        }
        ensure!(
            container.get("envFrom").is_none(),
            "{name}: envFrom needs Secrets this test does not emulate"
        );
        let mut env: Vec<(String, String)> = Vec::new();
        for entry in container["env"].as_array().into_iter().flatten() {
            let key = entry["name"].as_str().context("env name")?.to_owned();
            let value = match (
                &entry["value"],
                &entry["valueFrom"]["fieldRef"]["fieldPath"],
            ) {
                (serde_json::Value::String(value), _) => expand(value, &env),
                (_, serde_json::Value::String(field)) => match field.as_str() {
                    "status.podIP" => pod.ip.clone(),
                    "status.hostIP" => self.gateway.clone(),
                    "spec.nodeName" => NODE_NAME.to_owned(),
                    "metadata.name" => pod.name.clone(),
                    other => bail!("{name}: downward API field {other} is not emulated"),
                },
                _ => bail!("{name}: env {key} from a source this test does not emulate"),
            };
            env.push((key, value));
        }
        for (key, value) in &env {
            args.extend(["--env".into(), format!("{key}={value}")]);
        }
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume = mount["name"].as_str().context("mount name")?;
            let (_, path) = mounts
                .iter()
                .find(|(name, _)| name == volume)
                .with_context(|| format!("{name} mounts {volume}, which the pod does not have"))?;
            let mut spec = format!(
                "type=bind,source={},target={}",
                path.display(),
                mount["mountPath"].as_str().context("mountPath")?
            );
            if mount["readOnly"] == true {
                spec.push_str(",readonly");
            }
            args.extend(["--mount".into(), spec]);
        }
        let command: Vec<String> = container["command"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(container["args"].as_array().into_iter().flatten())
            .map(|part| {
                part.as_str()
                    .map(|p| expand(p, &env))
                    .context("command part")
            })
            .collect::<Result<_>>()?;
        let (entrypoint, rest) = command
            .split_first()
            .context("a container without command")?;
        args.extend([
            "--entrypoint".into(),
            entrypoint.clone(),
            self.image.clone(),
        ]);
        args.extend(rest.iter().cloned());
        Ok(args)
    }

    /// GET of the container's `probe` as the kubelet sends it (HTTP to the pod's address).
    async fn probe(
        &self,
        pod: &DockerPod,
        container: &serde_json::Value,
        probe: &str,
    ) -> Result<u16> {
        let get = &container[probe]["httpGet"];
        ensure!(
            get["scheme"] == "HTTP",
            "{probe}: only HTTP probes are emulated: {get}"
        );
        let port = match &get["port"] {
            serde_json::Value::Number(n) => n.as_u64().context("port")?,
            serde_json::Value::String(name) => container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .with_context(|| format!("no container port named {name}"))?,
            other => bail!("{probe}: port {other}"),
        };
        let url = format!(
            "http://{}:{port}{}",
            pod.ip,
            get["path"].as_str().context("path")?
        );
        let http = shoal_service::client::builder()
            .timeout(Duration::from_secs(3))
            .build()?;
        Ok(http.get(&url).send().await?.status().as_u16())
    }

    async fn wait_for_probe(
        &self,
        pod: &DockerPod,
        container: &serde_json::Value,
        probe: &str,
        status: u16,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            let last = self.probe(pod, container, probe).await;
            if matches!(last, Ok(s) if s == status) {
                return Ok(());
            }
            if start.elapsed() > POD_READY_DEADLINE {
                let mut logs = String::new();
                for (_, docker_name) in &pod.containers {
                    let output = std::process::Command::new("docker")
                        .args(["logs", "--tail", "30", docker_name])
                        .output()?;
                    logs.push_str(&format!(
                        "----- {docker_name} -----\n{}{}",
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    ));
                }
                bail!(
                    "{} {probe} of {} did not answer {status} within {POD_READY_DEADLINE:?} (last: {last:?})\n{logs}",
                    container["name"],
                    pod.name
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn host_path(&self, pod: &str, volume: &str) -> Result<&Path> {
        self.host_paths
            .iter()
            .find(|((p, v), _)| p == pod && v == volume)
            .map(|(_, path)| path.as_path())
            .with_context(|| format!("pod {pod} has no hostPath volume {volume}"))
    }

    /// Removes every container, the network and the image this run created, by name.
    fn cleanup(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        let mut remove =
            |args: &[&str]| match std::process::Command::new("docker").args(args).output() {
                Ok(output) if output.status.success() => {}
                Ok(output) => problems.push(format!(
                    "docker {args:?}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                )),
                Err(e) => problems.push(format!("docker {args:?}: {e}")),
            };
        for container in std::mem::take(&mut self.containers).iter().rev() {
            remove(&["rm", "--force", "--volumes", container.as_str()]);
        }
        if !self.network.is_empty() {
            remove(&["network", "rm", self.network.as_str()]);
            self.network.clear();
        }
        if !self.image.is_empty() {
            remove(&["rmi", "--force", self.image.as_str()]);
            self.image.clear();
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("cleanup: {}", problems.join("; "))
        }
    }
}

impl Drop for DockerPods {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("{e:#}");
        }
    }
}

/// `$(VAR)` references to earlier variables, expanded as the kubelet does.
fn expand(value: &str, env: &[(String, String)]) -> String {
    env.iter().fold(value.to_owned(), |text, (key, value)| {
        text.replace(&format!("$({key})"), value)
    })
}

/// The container named `name` of a pod spec.
fn container_of<'a>(spec: &'a serde_json::Value, name: &str) -> Result<&'a serde_json::Value> {
    spec["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .with_context(|| format!("no container {name}"))
}

/// The chart's default install, pod by pod under the Docker Engine with the rendered container
/// specs (see [`DockerPods`]) on the image `Dockerfile.local` builds: the pods start and pass
/// their probes as uid 65532 (the agent on a root-owned hostPath cache its init container hands
/// over, the origins on empty fsGroup volumes), an image pushed through the proxy pulls through
/// the agent byte for byte, the node-setup container writes containerd's files and its preStop
/// puts the node's own back, the PrometheusRule's metrics are ones the pods export, and the
/// agent's /readyz turns 503 once the tracker is stopped while /livez stays 200.
#[tokio::test]
async fn chart_pods_run_as_rendered_under_docker_as_uid_65532() -> Result<()> {
    docker(["info"])
        .await
        .context("the Docker daemon must be running")?;
    let out = tempfile::tempdir()?;
    let objects = rendered_objects(out.path(), "default").await?;
    let rules = rendered_objects(out.path(), "all-options").await?;

    // The image the values name is what build-local.sh tags by default (shoal:<appVersion>);
    // this run builds the same image under its own tag.
    let chart: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
        workspace().join("deploy/helm/shoal/Chart.yaml"),
    )?)?;
    let app_version = chart["appVersion"].as_str().context("appVersion")?;
    let agent_ds = find_object(&objects, "DaemonSet", "shoal-agent")?;
    let rendered_image =
        container_of(&agent_ds["spec"]["template"]["spec"], "agent")?["image"].clone();
    ensure!(
        rendered_image == format!("shoal:{app_version}").as_str(),
        "the default values name {rendered_image}, build-local.sh builds shoal:{app_version}"
    );
    let run = format!("shoal-chart-{}", std::process::id());
    let work = tempfile::tempdir()?;
    let image = format!("{run}:test");
    let profile = binaries::path("shoal-agent")
        .parent()
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .context("the binaries' profile directory")?
        .to_owned();
    let mut pods = DockerPods::new(
        run.clone(),
        image.clone(),
        work.path().join("volumes"),
        objects.clone(),
    )
    .await?;
    let mut build = tokio::process::Command::new(workspace().join("deploy/docker/build-local.sh"));
    build
        .args(["--profile", &profile, "--tag", &image, "--context"])
        .arg(work.path().join("context"));
    run_command(build).await?;

    let origins = find_object(&objects, "StatefulSet", "shoal-origin")?;
    let service = origins["spec"]["serviceName"]
        .as_str()
        .context("serviceName")?;
    let mut started = Vec::new();
    for i in 0..origins["spec"]["replicas"].as_u64().context("replicas")? {
        let name = format!("shoal-origin-{i}");
        let alias = format!("{name}.{service}");
        started.push(pods.start(origins, &name, &[alias], &[]).await?);
    }
    let mut deployments = Vec::new();
    for component in ["tracker", "build-index", "proxy"] {
        let name = format!("shoal-{component}");
        let deployment = find_object(&objects, "Deployment", &name)?;
        deployments.push(
            pods.start(
                deployment,
                &format!("{name}-0"),
                std::slice::from_ref(&name),
                &[],
            )
            .await?,
        );
    }
    // The node's own containerd config, which node setup edits and its preStop restores.
    let node_config =
        b"version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"\"\n";
    let agent = pods
        .start(
            agent_ds,
            "shoal-agent-node",
            &[],
            &[("containerd-config", "config.toml", node_config)],
        )
        .await?;

    // Owned by the image's user: the hostPath cache (chowned by the init container) and what
    // the agent wrote into it.
    use std::os::unix::fs::MetadataExt;
    let cache = pods.host_path("shoal-agent-node", "cache")?;
    for path in std::iter::once(cache.to_path_buf()).chain(walk(cache)?) {
        let meta = std::fs::metadata(&path)?;
        ensure!(
            meta.uid() == 65532,
            "{} is owned by uid {}, not the agent's 65532",
            path.display(),
            meta.uid()
        );
    }

    // Push through the proxy, pull through the agent.
    let proxy_ip = &deployments[2].ip;
    let generated = generate(
        &work.path().join("image"),
        image_spec(vec![3 * MIB, 90_000], 0xc4a27, "v1"),
    )
    .await?;
    skopeo([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", generated.dir.display()),
        &format!("docker://{proxy_ip}:15000/chart/app:v1"),
    ])
    .await?;
    let pulled = work.path().join("pulled");
    skopeo([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{}:16000/chart/app:v1", agent.ip),
        &format!("oci:{}:v1", pulled.display()),
    ])
    .await?;
    ensure!(
        layout_blobs(&pulled)? == layout_blobs(&generated.dir)?,
        "the blobs pulled through the agent differ from the pushed ones"
    );
    for origin in &started {
        let data = pods.dir.join(&origin.name).join("data");
        ensure!(
            walk(&data)?
                .iter()
                .any(|p| std::fs::metadata(p).is_ok_and(|m| m.uid() == 65532)),
            "{} wrote nothing as 65532 into its volume",
            origin.name
        );
    }

    // Node setup wrote containerd's catch-all mirror and config_path; preStop restores.
    let certs = pods.host_path("shoal-agent-node", "certs")?;
    let default_hosts = std::fs::read_to_string(certs.join("_default/hosts.toml"))?;
    ensure!(
        default_hosts.contains(&format!("[host.\"http://{}:16000\"]", pods.gateway)),
        "the catch-all mirror does not point at the node's agent port:\n{default_hosts}"
    );
    let config_dir = pods
        .host_path("shoal-agent-node", "containerd-config")?
        .to_path_buf();
    let edited = std::fs::read_to_string(config_dir.join("config.toml"))?;
    ensure!(
        edited.contains("config_path = \"/etc/containerd/certs.d\""),
        "config_path not set:\n{edited}"
    );
    let setup = container_of(&agent.spec, "node-setup")?;
    let pre_stop: Vec<String> = setup["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .context("node-setup has a preStop command")?
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_owned())
        .collect();
    let setup_container = &agent
        .containers
        .iter()
        .find(|(name, _)| name == "node-setup")
        .context("node-setup running")?
        .1;
    let mut exec = vec!["exec".to_owned(), setup_container.clone()];
    exec.extend(pre_stop);
    docker(&exec).await?;
    ensure!(
        std::fs::read(config_dir.join("config.toml"))? == node_config,
        "preStop did not restore containerd's config byte for byte"
    );
    ensure!(
        walk(certs)?.is_empty(),
        "preStop left {:?} in certs.d",
        walk(certs)?
    );

    // The alerts query metrics the pods export (`up` is Prometheus' own).
    let http = shoal_service::client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut exported = BTreeSet::new();
    for pod in started.iter().chain(&deployments).chain([&agent]) {
        let port = pods_metrics_port(&pods.objects, &pod.name)?;
        let text = http
            .get(format!("http://{}:{port}/metrics", pod.ip))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        metric_names(&text, &mut exported);
    }
    let rule = find_object(&rules, "PrometheusRule", "shoal")?;
    let mut queried = BTreeSet::new();
    dashboard_metrics(rule, &mut queried);
    // ShoalTrackerDown queries `up` only.
    ensure!(
        queried
            == BTreeSet::from([
                "shoal_agent_blob_requests_total".to_owned(),
                "shoal_origin_writeback_oldest_age_seconds".to_owned(),
            ]),
        "the alerts query {queried:?}"
    );
    let unknown: Vec<_> = queried.difference(&exported).collect();
    ensure!(
        unknown.is_empty(),
        "the alerts query metrics no pod exports: {unknown:?}"
    );

    // Readiness follows the tracker; liveness does not.
    let agent_container = container_of(&agent.spec, "agent")?;
    let tracker = &deployments[0];
    docker(["stop", "--time", "20", &tracker.containers[0].1]).await?;
    pods.wait_for_probe(&agent, agent_container, "readinessProbe", 503)
        .await?;
    ensure!(
        pods.probe(&agent, agent_container, "livenessProbe").await? == 200,
        "the agent's liveness failed with the tracker stopped"
    );

    pods.cleanup()?;
    ensure!(
        docker(["image", "inspect", &image]).await.is_err(),
        "the test image {image} survived the cleanup"
    );
    Ok(())
}

/// The metrics port a pod's scrape annotation names (pods are named after their workload).
fn pods_metrics_port(objects: &[serde_json::Value], pod: &str) -> Result<u64> {
    objects
        .iter()
        .filter(|o| {
            ["Deployment", "StatefulSet", "DaemonSet"]
                .contains(&o["kind"].as_str().unwrap_or_default())
        })
        .find(|o| pod.starts_with(o["metadata"]["name"].as_str().unwrap_or_default()))
        .and_then(|o| {
            o["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].as_str()
        })
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no scrape port for {pod}"))
}
