//! The proxy's listener over TLS (`tls: {cert, key}`): skopeo pushes and pulls with
//! certificate verification on, plain HTTP to the TLS port is refused without stopping the
//! proxy, HTTP/2 and HTTP/1.1 are both served, and a bad certificate or key stops the proxy at
//! start with the config field named.
//!
//! The tests run on a multi-threaded runtime: `Process::terminate` blocks its thread, and the
//! proxy's graceful shutdown waits for our HTTP/2 client connections to answer its GOAWAY ping.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use shoal_tests::images::{generate, image_spec};
use shoal_tests::ports::free_loopback_addr;
use shoal_tests::process::{POLL_INTERVAL, Process, ProcessSpec};
use shoal_tests::swarm::ensure_same_layout;
use shoal_tests::tools::skopeo;
use shoal_tests::{Cluster, ClusterOptions, Component, binaries, configs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(30);

/// A CA (alone in `ca/ca.crt`, the layout of a containers-image cert dir) and a server
/// certificate for 127.0.0.1 and localhost signed by it (`tls.crt`, `tls.key`).
struct Certs {
    dir: PathBuf,
    ca_pem: String,
}

impl Certs {
    fn generate(dir: &Path) -> Result<Certs> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(["127.0.0.1".to_owned(), "localhost".to_owned()])?
            .signed_by(&key, &issuer)?;
        std::fs::create_dir_all(dir.join("ca"))?;
        std::fs::write(dir.join("ca/ca.crt"), &ca_pem)?;
        std::fs::write(dir.join("tls.crt"), cert.pem())?;
        std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
        Ok(Certs {
            dir: dir.to_owned(),
            ca_pem,
        })
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    fn tls(&self) -> Value {
        json!({
            "cert": self.dir.join("tls.crt").display().to_string(),
            "key": self.dir.join("tls.key").display().to_string(),
        })
    }

    /// A client trusting only the CA.
    fn client(&self) -> Result<reqwest::ClientBuilder> {
        Ok(shoal_service::client::builder()
            .timeout(Duration::from_secs(5))
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?]))
    }
}

/// Writes the cluster proxy's config with `listen` and `tls` to `name` and starts a proxy
/// with it, logging to `name`.log.
fn spawn_proxy(cluster: &Cluster, name: &str, listen: SocketAddr, tls: Value) -> Result<Process> {
    let base = std::fs::read_to_string(cluster.config_path(Component::Proxy))?;
    let mut config: Value = serde_yaml_ng::from_str(&base)?;
    configs::merge(
        &mut config,
        json!({
            "listen": listen.to_string(),
            "tls": tls,
            "preheat": {"state_dir": cluster.dir().join(format!("{name}-jobs")).display().to_string()},
        }),
    );
    let path = cluster.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, configs::to_yaml(&config)?)?;
    Process::spawn(ProcessSpec {
        name: name.to_owned(),
        program: binaries::path("shoal-proxy"),
        args: vec!["--config".to_owned(), path.display().to_string()],
        env: vec![("RUST_LOG".to_owned(), "info".to_owned())],
        log: cluster.dir().join(format!("{name}.log")),
    })
}

/// Polls `https://…/health` with a client trusting the CA until it answers 200.
async fn wait_until_ready(process: &mut Process, http: &reqwest::Client, url: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Some(status) = process.try_exit_status()? {
            bail!("the proxy exited with {status}\n{}", process.log_tail());
        }
        if let Ok(response) = http.get(url).send().await
            && response.status() == 200
        {
            return Ok(());
        }
        if start.elapsed() > DEADLINE {
            bail!("{url} did not answer 200\n{}", process.log_tail());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits for `process` to exit, failing if it is still running after the deadline.
async fn wait_for_exit(process: &mut Process) -> Result<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = process.try_exit_status()? {
            return Ok(status);
        }
        if start.elapsed() > DEADLINE {
            bail!("the proxy is still running\n{}", process.log_tail());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_and_pulls_through_a_tls_proxy_with_verification_on() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let certs = Certs::generate(&cluster.dir().join("certs"))?;
    let listen = free_loopback_addr()?;
    let mut proxy = spawn_proxy(&cluster, "tls-proxy", listen, certs.tls())?;
    let http = certs.client()?.build()?;
    let base = format!("https://{listen}");
    wait_until_ready(&mut proxy, &http, &format!("{base}/health")).await?;

    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![300_000, 2_000_000], 41, "v1"),
    )
    .await?;
    let ca_dir = certs.ca_dir().display().to_string();
    skopeo([
        "copy",
        "--preserve-digests",
        "--dest-cert-dir",
        &ca_dir,
        &format!("oci:{}:v1", image.dir.display()),
        &format!("docker://{listen}/tls/app:v1"),
    ])
    .await
    .context("skopeo push over TLS")?;
    let pulled = work.path().join("pulled");
    skopeo([
        "copy",
        "--preserve-digests",
        "--src-cert-dir",
        &ca_dir,
        &format!("docker://{listen}/tls/app:v1"),
        &format!("oci:{}:v1", pulled.display()),
    ])
    .await
    .context("skopeo pull over TLS")?;
    ensure_same_layout(&image, &pulled)?;

    // Without the CA, verification fails: the proxy really presents our certificate and
    // skopeo really checks it.
    ensure!(
        skopeo(["inspect", &format!("docker://{listen}/tls/app:v1")])
            .await
            .is_err(),
        "skopeo trusted the proxy without the CA"
    );
    let untrusted = shoal_service::client::builder().build()?;
    ensure!(
        untrusted.get(format!("{base}/v2/")).send().await.is_err(),
        "a client without the CA was served"
    );
    proxy.terminate(DEADLINE)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_proxy_serves_http2_and_http1_and_survives_plain_http() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let certs = Certs::generate(&cluster.dir().join("certs"))?;
    let listen = free_loopback_addr()?;
    let mut proxy = spawn_proxy(&cluster, "tls-proxy", listen, certs.tls())?;
    let http2 = certs.client()?.build()?;
    let http1 = certs.client()?.http1_only().build()?;
    let base = format!("https://localhost:{}", listen.port());
    wait_until_ready(&mut proxy, &http2, &format!("{base}/health")).await?;

    let mut plain = TcpStream::connect(listen).await?;
    plain
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut reply = Vec::new();
    // The proxy answers with a TLS alert or closes; it never answers in plain HTTP.
    let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut reply)).await?;
    ensure!(
        !reply.starts_with(b"HTTP/"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&reply)
    );
    let plain_client = shoal_service::client::builder().build()?;
    ensure!(
        plain_client
            .get(format!("http://{listen}/health"))
            .send()
            .await
            .is_err(),
        "a plain-HTTP client got a response from the TLS port"
    );

    for (client, version) in [
        (&http2, reqwest::Version::HTTP_2),
        (&http1, reqwest::Version::HTTP_11),
    ] {
        for path in ["/health", "/v2/"] {
            let response = client.get(format!("{base}{path}")).send().await?;
            ensure!(
                response.status() == 200 && response.version() == version,
                "GET {path}: {} over {:?}, wanted 200 over {version:?}",
                response.status(),
                response.version()
            );
        }
    }
    ensure!(
        proxy.try_exit_status()?.is_none(),
        "the proxy exited\n{}",
        proxy.log_tail()
    );
    proxy.terminate(DEADLINE)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_or_a_garbage_certificate_stops_the_proxy_naming_the_field() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let certs = Certs::generate(&cluster.dir().join("certs"))?;
    let garbage = cluster.dir().join("garbage.crt");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n",
    )?;
    let mut missing_key = certs.tls();
    missing_key["key"] = json!(cluster.dir().join("absent.key").display().to_string());
    let mut garbage_cert = certs.tls();
    garbage_cert["cert"] = json!(garbage.display().to_string());

    for (name, tls, field) in [
        ("missing-key", missing_key, "`tls.key`"),
        ("garbage-cert", garbage_cert, "`tls.cert`"),
    ] {
        let mut proxy = spawn_proxy(&cluster, name, free_loopback_addr()?, tls)?;
        let status = wait_for_exit(&mut proxy).await?;
        let log = proxy.log_tail();
        ensure!(!status.success(), "{name}: exited with {status}\n{log}");
        ensure!(
            log.contains(field),
            "{name}: the error does not name {field}\n{log}"
        );
    }
    Ok(())
}
