//! The proxy's listener over TLS (`tls: {cert, key}`): skopeo pushes and pulls with
//! certificate verification on, plain HTTP to the TLS port is refused without stopping the
//! proxy, HTTP/2 and HTTP/1.1 are both served, and a bad certificate or key stops the proxy at
//! start with the config field named.
//!
//! The tests run on a multi-threaded runtime: `Process::terminate` blocks its thread, and the
//! proxy's graceful shutdown waits for our HTTP/2 client connections to answer its GOAWAY ping.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_tests::images::{generate, image_spec};
use shoal_tests::ports::free_loopback_addr;
use shoal_tests::process::{POLL_INTERVAL, Process, ProcessSpec};
use shoal_tests::swarm::ensure_same_layout;
use shoal_tests::tls::TestCerts;
use shoal_tests::tools::skopeo;
use shoal_tests::{Cluster, ClusterOptions, Component, binaries, configs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(30);

fn tls(certs: &TestCerts) -> Value {
    json!({
        "cert": certs.cert().display().to_string(),
        "key": certs.key().display().to_string(),
    })
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
    let certs = TestCerts::generate(&cluster.dir().join("certs"))?;
    let listen = free_loopback_addr()?;
    let mut proxy = spawn_proxy(&cluster, "tls-proxy", listen, tls(&certs))?;
    let base = format!("https://{listen}");
    certs
        .wait_until_ready(&mut proxy, &format!("{base}/health"), DEADLINE)
        .await?;

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
    let certs = TestCerts::generate(&cluster.dir().join("certs"))?;
    let listen = free_loopback_addr()?;
    let mut proxy = spawn_proxy(&cluster, "tls-proxy", listen, tls(&certs))?;
    let http2 = certs.client()?.build()?;
    let http1 = certs.client()?.http1_only().build()?;
    let base = format!("https://localhost:{}", listen.port());
    certs
        .wait_until_ready(&mut proxy, &format!("{base}/health"), DEADLINE)
        .await?;

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
    let certs = TestCerts::generate(&cluster.dir().join("certs"))?;
    let garbage = cluster.dir().join("garbage.crt");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n",
    )?;
    let mut missing_key = tls(&certs);
    missing_key["key"] = json!(cluster.dir().join("absent.key").display().to_string());
    let mut garbage_cert = tls(&certs);
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
