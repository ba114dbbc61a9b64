//! Test harness: a build-index started in process on `127.0.0.1:0`, and a test double of the
//! origin's blob API (`HEAD`/`GET /blobs/{digest}` from an in-memory map) for it to check against.
//! The real origin is exercised by the cross-component suite in /work/main/tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use shoal_api::{BuildIndexClient, ErrorBody};
use shoal_backends::BackendConfig;
use shoal_build_index::{BuildIndexConfig, Listeners};
use shoal_core::{Digest, ErrorCode};
use shoal_service::CancellationToken;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub fn http_client() -> reqwest::Client {
    shoal_service::client::builder()
        .build()
        .expect("build HTTP client")
}

type Blobs = Arc<Mutex<HashMap<Digest, Bytes>>>;

/// Serves blobs from memory the way the origin's HTTP API does: 200 with the bytes (HEAD: just
/// `Content-Length`), 404 with a `BLOB_UNKNOWN` body when absent.
pub struct FakeOrigin {
    pub addr: SocketAddr,
    blobs: Blobs,
    shutdown: CancellationToken,
}

impl FakeOrigin {
    pub async fn start() -> FakeOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let blobs = Blobs::default();
        let app = Router::new()
            .route("/blobs/{digest}", get(serve_blob))
            .route("/blobs/{digest}/touch", post(touch_blob))
            .with_state(Arc::clone(&blobs));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        FakeOrigin {
            addr,
            blobs,
            shutdown,
        }
    }

    /// Stores `bytes` and returns their digest.
    pub fn put(&self, bytes: impl Into<Bytes>) -> Digest {
        let bytes = bytes.into();
        let digest = Digest::of(&bytes);
        self.blobs.lock().expect("lock").insert(digest, bytes);
        digest
    }

    pub fn remove(&self, digest: &Digest) {
        self.blobs.lock().expect("lock").remove(digest);
    }
}

impl Drop for FakeOrigin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve_blob(State(blobs): State<Blobs>, UrlPath(digest): UrlPath<String>) -> Response {
    let found = Digest::parse(&digest)
        .ok()
        .and_then(|digest| blobs.lock().expect("lock").get(&digest).cloned());
    match found {
        // axum answers HEAD from this GET route with the body's Content-Length and no body.
        Some(bytes) => bytes.into_response(),
        None => (
            StatusCode::NOT_FOUND,
            ErrorBody::new(ErrorCode::BlobUnknown, "blob unknown").to_json(),
        )
            .into_response(),
    }
}

/// `POST /blobs/{digest}/touch` (what a manifest check asks): the length as JSON, or the 404
/// of a `GET`.
async fn touch_blob(State(blobs): State<Blobs>, UrlPath(digest): UrlPath<String>) -> Response {
    let size = Digest::parse(&digest)
        .ok()
        .and_then(|d| blobs.lock().expect("lock").get(&d).map(Bytes::len));
    match size {
        Some(size) => {
            axum::Json(serde_json::json!({"digest": digest, "size": size})).into_response()
        }
        None => serve_blob(State(blobs), UrlPath(digest)).await,
    }
}

/// A build-index running in this process until [`BuildIndex::stop`].
pub struct BuildIndex {
    pub addr: SocketAddr,
    pub client: BuildIndexClient,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl BuildIndex {
    /// Starts a build-index storing tags under `backend_root` and checking against `origins`.
    pub async fn start(backend_root: &Path, origins: Vec<String>) -> BuildIndex {
        BuildIndex::start_with(backend_root, origins, |_| {}).await
    }

    /// Like [`BuildIndex::start`], with the config changed by `edit`.
    pub async fn start_with(
        backend_root: &Path,
        origins: Vec<String>,
        edit: impl FnOnce(&mut BuildIndexConfig),
    ) -> BuildIndex {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut config = BuildIndexConfig {
            listen: addr,
            origins: origins.into(),
            backend: BackendConfig::Filesystem {
                root: backend_root.to_path_buf(),
            },
            ..Default::default()
        };
        edit(&mut config);
        let shutdown = CancellationToken::new();
        // The listener is bound already, so requests queue until `run` accepts them.
        let task = tokio::spawn(shoal_build_index::run(
            config,
            Listeners { http: listener },
            shutdown.clone(),
        ));
        BuildIndex {
            addr,
            client: BuildIndexClient::new(
                http_client(),
                &shoal_core::Addresses::one(addr.to_string()),
            ),
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Cancels the build-index and checks that `run` returned cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("build-index task panicked")
            .expect("build-index run failed");
    }
}

pub fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": Digest::of(bytes).to_string(),
        "size": bytes.len(),
    })
}

/// An OCI image manifest over `config` and `layers` (which the caller may or may not store).
pub fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<Value> = layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": layers,
    }))
    .expect("serialise manifest")
}

/// An OCI index over the given child manifests, each described with the `mediaType` its body
/// declares (so children may be indexes too), or as an OCI image manifest when it declares none.
pub fn index_manifest(children: &[&[u8]]) -> Vec<u8> {
    let manifests: Vec<Value> = children
        .iter()
        .map(|child| {
            let declared = serde_json::from_slice::<Value>(child)
                .ok()
                .and_then(|body| body["mediaType"].as_str().map(str::to_owned));
            descriptor(declared.as_deref().unwrap_or(OCI_MANIFEST), child)
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .expect("serialise index")
}

/// Stores a complete image (config, layers, manifest) on `origin`; returns the manifest bytes.
pub fn push_image(origin: &FakeOrigin, seed: &str) -> Vec<u8> {
    let config = format!("{{\"config\":\"{seed}\"}}").into_bytes();
    let layer_a = format!("layer a of {seed}").into_bytes();
    let layer_b = format!("layer b of {seed}").into_bytes();
    origin.put(config.clone());
    origin.put(layer_a.clone());
    origin.put(layer_b.clone());
    let manifest = image_manifest(&config, &[&layer_a, &layer_b]);
    origin.put(manifest.clone());
    manifest
}

/// Sends a raw request and returns the status, headers and body text.
pub async fn send(
    request: reqwest::RequestBuilder,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.expect("body");
    (status, headers, body)
}

/// The error code of a JSON error body.
pub fn error_code(body: &str) -> ErrorCode {
    serde_json::from_str::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("not an error body ({e}): {body}"))
        .code
}
