//! Mutual TLS between every component (`tls: {cert, key, ca}` everywhere, a CA per cluster,
//! certificates naming `spiffe://shoal/<role>`): a cluster pushes and pulls through agents
//! byte-identical; internal write endpoints, the tracker and the peer service refuse a client
//! without a certificate, with one of the wrong role, or of another CA; and certificate files
//! swapped mid-run are served to new connections while the cluster keeps working.
//!
//! Multi-threaded runtimes: `Process::terminate` blocks its thread while components drain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use shoal_client::Image;
use shoal_proto::v1::peer_client::PeerClient;
use shoal_proto::v1::tracker_client::TrackerClient;
use shoal_proto::v1::{MetainfoRequest, PieceRequest};
use shoal_tests::images::{generate, image_spec};
use shoal_tests::process::POLL_INTERVAL;
use shoal_tests::swarm::pull_through_agents_and_check;
use shoal_tests::tools::skopeo;
use shoal_tests::{Cluster, ClusterOptions, Component};
use shoal_tls::generate::Authority;
use shoal_tls::{LoadedTls, Role, Roles, TlsConfig};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(30);

async fn tls_cluster(agents: usize) -> Result<Cluster> {
    Cluster::start(ClusterOptions {
        agents,
        tls: true,
        ..ClusterOptions::default()
    })
    .await
}

/// Generates a two-layer image and pushes it through the HTTPS proxy with skopeo, verifying
/// the proxy's certificate against the cluster CA.
async fn push(cluster: &Cluster, work: &std::path::Path, repo: &str, seed: u64) -> Result<Image> {
    let image = generate(
        &work.join(format!("image-{seed}")),
        image_spec(vec![400_000, 3_000_000], seed, "v1"),
    )
    .await?;
    let proxy = cluster.proxy_addr();
    skopeo([
        "copy".to_owned(),
        "--preserve-digests".to_owned(),
        "--dest-cert-dir".to_owned(),
        cluster.ca_dir().display().to_string(),
        format!("oci:{}:v1", image.dir.display()),
        format!("docker://{proxy}/{repo}:v1"),
    ])
    .await
    .context("skopeo push through the mTLS cluster's proxy")?;
    Ok(image)
}

/// A client presenting `config`'s certificate, trusting servers of its CA that name `servers`.
fn client_as(config: &TlsConfig, servers: &[Role]) -> Result<reqwest::Client> {
    Ok(
        shoal_service::client::cluster_builder(Some(&LoadedTls::load(config)?), Roles::of(servers))
            .timeout(Duration::from_secs(10))
            .build()?,
    )
}

/// A client trusting the cluster CA that presents no certificate.
fn anonymous(cluster: &Cluster) -> Result<reqwest::Client> {
    let ca = std::fs::read(cluster.ca_dir().join("ca.crt"))?;
    Ok(shoal_service::client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca)?])
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// A gRPC channel to `addr` over TLS as `config` (server roles `servers`), or over TLS with
/// no client certificate when `config` has none to present.
fn grpc_channel(
    addr: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel> {
    Ok(shoal_p2p::peer_channel_with(addr, Some(config))?)
}

fn grpc_tls(config: &TlsConfig, servers: &[Role]) -> Result<Arc<rustls::ClientConfig>> {
    config
        .client(Roles::of(servers), &[b"h2"])?
        .context("the config has a CA")
}

/// A rustls client config trusting only the cluster CA, presenting no certificate.
fn grpc_anonymous(cluster: &Cluster) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cluster.ca_dir().join("ca.crt"))? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_mutual_tls_everywhere_pushes_and_pulls_through_agents() -> Result<()> {
    let cluster = tls_cluster(2).await?;
    let work = tempfile::tempdir()?;
    let image = push(&cluster, work.path(), "mtls/app", 61).await?;
    pull_through_agents_and_check(&cluster, 0..2, &image, "mtls/app", "v1", work.path()).await?;
    // The pieces crossed the TLS peer listeners: the origin served some.
    let served = cluster
        .metric_sum(Component::Origin, "p2p_bytes_served_total", &[])
        .await?;
    ensure!(served > 0.0, "the origin served no piece bytes over TLS");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_endpoints_refuse_callers_without_a_certificate_or_of_the_wrong_role() -> Result<()>
{
    let cluster = tls_cluster(1).await?;
    let work = tempfile::tempdir()?;
    let image = push(&cluster, work.path(), "mtls/app", 62).await?;
    let layer = image
        .blobs()
        .map(|(digest, _)| digest.to_string())
        .last()
        .context("a blob")?;
    let origin = format!("https://{}", cluster.origin_addr());
    let build_index = format!("https://{}", cluster.build_index_addr());
    let nobody = anonymous(&cluster)?;
    let agent = client_as(
        &cluster.tls_config(Component::Agent(0)),
        &[Role::Origin, Role::BuildIndex],
    )?;
    let proxy = client_as(
        &cluster.tls_config(Component::Proxy),
        &[Role::Origin, Role::BuildIndex],
    )?;

    // Origin: uploads only from proxies and origins, reads from any cluster role.
    let uploads = format!("{origin}/uploads");
    for (who, client) in [("no certificate", &nobody), ("an agent", &agent)] {
        let status = client.post(&uploads).send().await?.status();
        ensure!(status == 403, "{who} opened an upload session: {status}");
    }
    ensure!(proxy.post(&uploads).send().await?.status().is_success());
    let blob = format!("{origin}/blobs/{layer}");
    ensure!(nobody.head(&blob).send().await?.status() == 403);
    ensure!(agent.head(&blob).send().await?.status() == 200);
    ensure!(
        nobody
            .get(format!("{origin}/health"))
            .send()
            .await?
            .status()
            == 200
    );

    // Build-index: tag writes only from proxies and build-indexes.
    let tag = format!("{build_index}/v1/repositories/mtls%2Fapp/tags/forged");
    for (who, client) in [("no certificate", &nobody), ("an agent", &agent)] {
        let status = client
            .put(&tag)
            .body(image.manifest_digest.to_string())
            .send()
            .await?
            .status();
        ensure!(status == 403, "{who} wrote a tag: {status}");
    }
    let tags = format!("{build_index}/v1/repositories/mtls%2Fapp/tags/v1");
    ensure!(agent.get(&tags).send().await?.status() == 200);

    // Tracker: only agents and origins.
    let tracker = cluster.addr(Component::Tracker).to_string();
    let metainfo = MetainfoRequest {
        digest: layer.clone(),
        namespace: "mtls/app".to_owned(),
    };
    let as_proxy = grpc_tls(&cluster.tls_config(Component::Proxy), &[Role::Tracker])?;
    let as_agent = grpc_tls(&cluster.tls_config(Component::Agent(0)), &[Role::Tracker])?;
    for (who, config) in [
        ("no certificate", grpc_anonymous(&cluster)?),
        ("a proxy", as_proxy),
    ] {
        let refused = TrackerClient::new(grpc_channel(&tracker, &config)?)
            .get_metainfo(metainfo.clone())
            .await
            .expect_err("refused");
        ensure!(
            refused.code() == tonic::Code::PermissionDenied,
            "{who} at the tracker: {refused:?}"
        );
    }
    TrackerClient::new(grpc_channel(&tracker, &as_agent)?)
        .get_metainfo(metainfo)
        .await
        .context("an agent asks the tracker for metainfo")?;
    // The swarm view only reads: a browser without a certificate opens it (docs/swarm-view.md).
    for path in ["/ui", "/v1/swarms"] {
        let status = nobody
            .get(format!("https://{tracker}{path}"))
            .send()
            .await?
            .status();
        ensure!(status == 200, "{path} without a certificate: {status}");
    }

    // Peers: pieces only to agents and origins.
    let peer = cluster
        .peer_addr(Component::Origin)
        .context("peer")?
        .to_string();
    let piece = PieceRequest {
        digest: layer.clone(),
        index: 0,
        peer_id: "mtls-test".to_owned(),
        insist: false,
    };
    let as_proxy = grpc_tls(&cluster.tls_config(Component::Proxy), &[Role::Origin])?;
    let refused = PeerClient::new(grpc_channel(&peer, &as_proxy)?)
        .get_piece(piece.clone())
        .await
        .expect_err("refused");
    ensure!(
        refused.code() == tonic::Code::PermissionDenied,
        "{refused:?}"
    );
    let as_agent = grpc_tls(&cluster.tls_config(Component::Agent(0)), &[Role::Origin])?;
    let mut chunks = PeerClient::new(grpc_channel(&peer, &as_agent)?)
        .get_piece(piece)
        .await
        .context("an agent asks the origin for a piece")?
        .into_inner();
    ensure!(chunks.message().await?.is_some(), "no piece data");

    // A certificate naming the agent role but issued by another CA is refused in the handshake.
    let stranger = Authority::new()?;
    let forged_dir = work.path().join("forged");
    let mut forged = stranger.write(&forged_dir, Role::Proxy)?;
    forged.ca = cluster.tls_config(Component::Proxy).ca;
    let forged = client_as(&forged, &[Role::Origin])?;
    ensure!(
        forged.post(&uploads).send().await.is_err(),
        "a certificate of another CA was accepted"
    );
    Ok(())
}

/// The certificate `addr` presents to a new TLS connection (trusting `config`'s CA).
async fn served_certificate(addr: &str, config: &TlsConfig) -> Result<CertificateDer<'static>> {
    let client = config
        .client(Roles::ANY, &[b"http/1.1"])?
        .context("the config has a CA")?;
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .context("no server certificate")?;
    Ok(cert.clone().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_certificate_files_reach_new_connections_without_a_restart() -> Result<()> {
    let cluster = tls_cluster(1).await?;
    let work = tempfile::tempdir()?;
    let first = push(&cluster, work.path(), "mtls/before", 63).await?;
    let pid = cluster.pid(Component::Origin);
    let origin = cluster.origin_addr().to_string();
    let proxy = cluster.tls_config(Component::Proxy);
    let before = served_certificate(&origin, &proxy).await?;

    let rotated = cluster.rotate_certificate(Component::Origin)?;
    let rotated = CertificateDer::from_pem_slice(rotated.as_bytes())?;
    ensure!(rotated != before);
    let start = Instant::now();
    loop {
        if served_certificate(&origin, &proxy).await? == rotated {
            break;
        }
        if start.elapsed() > DEADLINE {
            bail!("the origin still serves its old certificate after {DEADLINE:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    ensure!(
        cluster.pid(Component::Origin) == pid,
        "the origin restarted"
    );

    // The cluster keeps working across the swap: a new push, and pulls of both images.
    let second = push(&cluster, work.path(), "mtls/after", 64).await?;
    for (image, repo) in [(&first, "mtls/before"), (&second, "mtls/after")] {
        let dest = work.path().join(repo.replace('/', "-"));
        pull_through_agents_and_check(&cluster, [0], image, repo, "v1", &dest).await?;
    }
    Ok(())
}
