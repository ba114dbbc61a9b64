//! The agent's Registry V2 read API in process, without a swarm: blobs the agent already holds
//! are served from its store, and a tracker stand-in that knows no metainfo makes every other
//! blob "absent everywhere". A build-index stand-in holds the tags.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use axum::extract::{Path, State};
use axum::routing::get;
use futures::StreamExt;
use reqwest::StatusCode;
use shoal_agent::{AgentConfig, Listeners};
use shoal_core::{Digest, Name};
use shoal_proto::v1::tracker_server::{Tracker, TrackerServer};
use shoal_proto::v1::{AnnounceRequest, AnnounceResponse, MetainfoRequest, MetainfoResponse};
use shoal_service::CancellationToken;
use shoal_storage::BlobStore;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// Generous for a loaded CI machine; the 404 latency check uses its own tighter bound.
const DEADLINE: Duration = Duration::from_secs(20);

/// A tracker whose swarm is empty and which knows no metainfo.
struct EmptyTracker;

#[tonic::async_trait]
impl Tracker for EmptyTracker {
    async fn announce(
        &self,
        _: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceResponse>, Status> {
        Ok(Response::new(AnnounceResponse {
            peers: Vec::new(),
            interval_ms: 60_000,
            swarm_size: 1,
        }))
    }

    async fn get_metainfo(
        &self,
        request: Request<MetainfoRequest>,
    ) -> Result<Response<MetainfoResponse>, Status> {
        Err(Status::not_found(format!(
            "no origin has {}",
            request.into_inner().digest
        )))
    }
}

type Tags = Arc<HashMap<(String, String), String>>;

async fn tag(
    State(tags): State<Tags>,
    Path((repo, tag)): Path<(String, String)>,
) -> (StatusCode, String) {
    match tags.get(&(repo, tag)) {
        Some(digest) => (StatusCode::OK, digest.clone()),
        None => (StatusCode::NOT_FOUND, String::new()),
    }
}

/// A manifest is recorded in a repository while one of its tags points at it.
async fn record(
    State(tags): State<Tags>,
    Path((repo, digest)): Path<(String, String)>,
) -> (StatusCode, String) {
    if tags.iter().any(|((r, _), d)| *r == repo && *d == digest) {
        let record = r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        (StatusCode::OK, record.to_owned())
    } else {
        (StatusCode::NOT_FOUND, String::new())
    }
}

async fn serve(app: axum::Router) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// An image the agent already holds: a manifest, its config and one layer.
struct Image {
    manifest: Vec<u8>,
    manifest_digest: Digest,
    layer: Vec<u8>,
    layer_digest: Digest,
}

fn image() -> Image {
    let layer: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let (layer_digest, config_digest) = (Digest::of(&layer), Digest::of(config));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest.to_string(), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    Image {
        manifest_digest: Digest::of(&manifest),
        manifest,
        layer,
        layer_digest,
    }
}

struct Agent {
    base: String,
    http: reqwest::Client,
    image: Image,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_agent() -> Result<Agent> {
    let dir = tempfile::tempdir()?;
    let image = image();
    let store = BlobStore::open(dir.path().join("store")).await?;
    for bytes in [&image.manifest, &image.layer] {
        let digest = Digest::of(bytes);
        let body = futures::stream::iter([Ok(bytes::Bytes::from(bytes.clone()))]);
        store.put(&digest, body.boxed()).await?;
    }
    drop(store);

    let digest = image.manifest_digest.to_string();
    let tags: Tags = Arc::new(HashMap::from([
        (("test/smoke".into(), "v1".into()), digest.clone()),
        (("library/smoke".into(), "v1".into()), digest.clone()),
        (("mirror/example/app".into(), "v1".into()), digest),
    ]));
    let build_index = serve(
        axum::Router::new()
            .route("/v1/repositories/{repo}/tags/{tag}", get(tag))
            .route("/v1/repositories/{repo}/manifests/{digest}", get(record))
            .with_state(tags),
    )
    .await?;
    let tracker =
        serve(tonic::service::Routes::new(TrackerServer::new(EmptyTracker)).into_axum_router())
            .await?;

    let mut config = AgentConfig {
        data_dir: dir.path().to_path_buf(),
        tracker: shoal_core::Addresses::one(tracker.to_string()),
        build_index: shoal_core::Addresses::one(build_index.to_string()),
        ..AgentConfig::default()
    };
    config.namespaces.hosts.insert(
        "registry.example:5000".into(),
        Name::parse("mirror/example")?,
    );
    let listeners = Listeners {
        http: TcpListener::bind("127.0.0.1:0").await?,
        peer: TcpListener::bind("127.0.0.1:0").await?,
    };
    let base = format!("http://{}", listeners.http.local_addr()?);
    let shutdown = CancellationToken::new();
    tokio::spawn(shoal_agent::run(config, listeners, shutdown.clone()));

    let http = shoal_service::client::builder().build()?;
    let start = Instant::now();
    while !http
        .get(format!("{base}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        ensure!(
            start.elapsed() < DEADLINE,
            "the agent did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Agent {
        base,
        http,
        image,
        shutdown,
        _dir: dir,
    })
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn error_code(response: reqwest::Response) -> Result<String> {
    let body: serde_json::Value = response.json().await.context("error body is not JSON")?;
    Ok(body["errors"][0]["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn the_version_check_answers_with_the_api_version() -> Result<()> {
    let agent = start_agent().await?;
    let response = agent.http.get(format!("{}/v2/", agent.base)).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-distribution-api-version"),
        "registry/2.0"
    );
    Ok(())
}

#[tokio::test]
async fn manifests_by_tag_and_digest_carry_digest_type_and_length() -> Result<()> {
    let agent = start_agent().await?;
    let digest = agent.image.manifest_digest.to_string();
    let len = agent.image.manifest.len().to_string();
    // containerd's HEAD by tag with ?ns= (an unmapped host is ignored), docker's Hub-mirror path,
    // and a mapped host that prefixes the repository.
    for path in [
        "/v2/test/smoke/manifests/v1?ns=127.0.0.1%3A5999",
        "/v2/library/smoke/manifests/v1",
        "/v2/app/manifests/v1?ns=registry.example%3A5000",
    ] {
        let response = agent
            .http
            .head(format!("{}{path}", agent.base))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&response, "docker-content-digest"), digest, "{path}");
        assert_eq!(
            header(&response, "content-type"),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(header(&response, "content-length"), len, "{path}");
    }
    let response = agent
        .http
        .get(format!(
            "{}/v2/test/smoke/manifests/{digest}?ns=127.0.0.1%3A5999",
            agent.base
        ))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "docker-content-digest"), digest);
    assert_eq!(response.bytes().await?, agent.image.manifest);
    Ok(())
}

#[tokio::test]
async fn unknown_tags_and_layers_named_as_manifests_are_manifest_unknown() -> Result<()> {
    let agent = start_agent().await?;
    let layer = agent.image.layer_digest;
    for path in [
        "/v2/test/smoke/manifests/nope".to_owned(),
        // The mapped prefix changes the repository, so this tag does not exist there.
        "/v2/test/smoke/manifests/v1?ns=registry.example%3A5000".to_owned(),
        format!("/v2/test/smoke/manifests/{layer}"),
    ] {
        let response = agent
            .http
            .get(format!("{}{path}", agent.base))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(response).await?, "MANIFEST_UNKNOWN", "{path}");
    }
    Ok(())
}

#[tokio::test]
async fn blobs_stream_whole_or_by_range() -> Result<()> {
    let agent = start_agent().await?;
    let digest = agent.image.layer_digest;
    let layer = &agent.image.layer;
    let url = format!(
        "{}/v2/library/smoke/blobs/{digest}?ns=docker.io",
        agent.base
    );

    let response = agent.http.get(&url).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-content-digest"),
        digest.to_string()
    );
    assert_eq!(header(&response, "content-length"), layer.len().to_string());
    assert_eq!(response.bytes().await?, layer.as_slice());

    let response = agent
        .http
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&response, "content-range"),
        format!("bytes 10-19/{}", layer.len())
    );
    assert_eq!(response.bytes().await?, &layer[10..20]);

    let response = agent
        .http
        .get(&url)
        .header("range", "bytes=-5")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await?, &layer[layer.len() - 5..]);

    let past_end = format!("bytes={}-", layer.len());
    let response = agent
        .http
        .get(&url)
        .header("range", past_end)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header(&response, "content-range"),
        format!("bytes */{}", layer.len())
    );

    let response = agent
        .http
        .get(&url)
        .header("range", "bytes=9-1")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(error_code(response).await?, "RANGE_INVALID");

    let response = agent.http.head(&url).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-length"), layer.len().to_string());
    assert_eq!(
        header(&response, "docker-content-digest"),
        digest.to_string()
    );

    let metrics = agent
        .http
        .get(format!("{}/metrics", agent.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("shoal_agent_blob_requests_total{result=\"hit\"} 5"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn blobs_that_exist_nowhere_are_a_prompt_404() -> Result<()> {
    let agent = start_agent().await?;
    let missing = Digest::of(b"exists nowhere");
    let url = format!("{}/v2/test/smoke/blobs/{missing}", agent.base);
    let start = Instant::now();
    let response = agent.http.head(&url).send().await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let response = agent.http.get(&url).send().await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await?, "BLOB_UNKNOWN");
    let metrics = agent
        .http
        .get(format!("{}/metrics", agent.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("shoal_agent_blob_requests_total{result=\"not_found\"} 2"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn pushes_and_other_writes_are_unsupported() -> Result<()> {
    let agent = start_agent().await?;
    let digest = agent.image.layer_digest;
    let base = &agent.base;
    let requests = [
        agent
            .http
            .post(format!("{base}/v2/test/smoke/blobs/uploads/")),
        agent
            .http
            .patch(format!("{base}/v2/test/smoke/blobs/uploads/abc")),
        agent.http.put(format!(
            "{base}/v2/test/smoke/blobs/uploads/abc?digest={digest}"
        )),
        agent
            .http
            .put(format!("{base}/v2/test/smoke/manifests/v1"))
            .body("{}"),
        agent
            .http
            .delete(format!("{base}/v2/test/smoke/manifests/v1")),
        agent
            .http
            .delete(format!("{base}/v2/test/smoke/blobs/{digest}")),
        agent
            .http
            .post(format!("{base}/v2/test/smoke/blobs/uploads/?ns=docker.io")),
    ];
    for request in requests {
        let response = request.send().await?;
        let url = response.url().to_string();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{url}");
        assert_eq!(error_code(response).await?, "UNSUPPORTED", "{url}");
    }
    Ok(())
}

#[tokio::test]
async fn malformed_paths_get_their_registry_error() -> Result<()> {
    let agent = start_agent().await?;
    for (path, code) in [
        ("/v2/UPPER/blobs/sha256:00", "NAME_INVALID"),
        ("/v2/test/smoke/blobs/sha256:nothex", "DIGEST_INVALID"),
        ("/v2/test/smoke/manifests/bad%20tag", "TAG_INVALID"),
    ] {
        let response = agent
            .http
            .get(format!("{}{path}", agent.base))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(error_code(response).await?, code, "{path}");
    }
    Ok(())
}
