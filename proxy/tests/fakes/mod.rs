//! TEST DOUBLES for the internal HTTP APIs the proxy talks to (`docs/internal-api.md`): an
//! in-memory origin and an in-memory build-index. They implement just the request/response
//! tables the proxy uses, buffer everything in memory and check nothing beyond what the proxy's
//! behaviour depends on. They are not the real components (those live in origin/ and
//! build-index/ and are exercised together in the workspace's tests/ crate).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use shoal_api::wire::{DOCKER_CONTENT_DIGEST, ErrorBody, UPLOAD_ID, UPLOAD_OFFSET};
use shoal_core::{ByteRange, Digest, ErrorCode};
use tokio::net::TcpListener;

fn error(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap();
    let body = ErrorBody::new(code, message).to_json();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// In-memory origin: upload sessions and a blob map.
#[derive(Clone, Default)]
pub struct FakeOrigin {
    uploads: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    blobs: Arc<Mutex<HashMap<Digest, Bytes>>>,
    next_id: Arc<Mutex<u64>>,
}

#[derive(Deserialize)]
struct DigestQuery {
    digest: Option<String>,
}

impl FakeOrigin {
    pub async fn start() -> (FakeOrigin, SocketAddr) {
        let origin = FakeOrigin::default();
        let app = Router::new()
            .route("/uploads", post(Self::start_upload))
            .route(
                "/uploads/{id}",
                get(Self::upload_status)
                    .patch(Self::patch_upload)
                    .put(Self::commit_upload)
                    .delete(Self::cancel_upload),
            )
            .route("/blobs/{digest}", put(Self::put_blob).get(Self::get_blob))
            .with_state(origin.clone());
        (origin, serve(app).await)
    }

    pub fn insert(&self, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        let bytes = Bytes::copy_from_slice(bytes);
        self.blobs.lock().unwrap().insert(digest, bytes);
        digest
    }

    pub fn blob(&self, digest: &Digest) -> Option<Bytes> {
        self.blobs.lock().unwrap().get(digest).cloned()
    }

    pub fn upload_count(&self) -> usize {
        self.uploads.lock().unwrap().len()
    }

    async fn start_upload(State(origin): State<FakeOrigin>) -> Response {
        let id = {
            let mut next = origin.next_id.lock().unwrap();
            *next += 1;
            format!("u{next}")
        };
        origin
            .uploads
            .lock()
            .unwrap()
            .insert(id.clone(), Vec::new());
        let location = format!("/uploads/{id}");
        let headers = [
            (UPLOAD_ID, id),
            (header::LOCATION.as_str(), location),
            (UPLOAD_OFFSET, "0".to_owned()),
        ];
        (StatusCode::ACCEPTED, headers).into_response()
    }

    async fn patch_upload(
        State(origin): State<FakeOrigin>,
        Path(id): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let mut uploads = origin.uploads.lock().unwrap();
        let Some(upload) = uploads.get_mut(&id) else {
            return error(ErrorCode::BlobUploadUnknown, "no such upload");
        };
        let expected = headers
            .get(UPLOAD_OFFSET)
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        if expected.is_some_and(|offset| offset != upload.len() as u64) {
            let mut response = error(ErrorCode::RangeInvalid, "chunk out of order");
            response
                .headers_mut()
                .insert(UPLOAD_OFFSET, upload.len().into());
            return response;
        }
        upload.extend_from_slice(&body);
        (
            StatusCode::ACCEPTED,
            [(UPLOAD_OFFSET, upload.len().to_string())],
        )
            .into_response()
    }

    async fn upload_status(State(origin): State<FakeOrigin>, Path(id): Path<String>) -> Response {
        match origin.uploads.lock().unwrap().get(&id) {
            Some(upload) => (
                StatusCode::NO_CONTENT,
                [(UPLOAD_OFFSET, upload.len().to_string())],
            )
                .into_response(),
            None => error(ErrorCode::BlobUploadUnknown, "no such upload"),
        }
    }

    async fn commit_upload(
        State(origin): State<FakeOrigin>,
        Path(id): Path<String>,
        Query(query): Query<DigestQuery>,
        body: Bytes,
    ) -> Response {
        let Some(mut bytes) = origin.uploads.lock().unwrap().remove(&id) else {
            return error(ErrorCode::BlobUploadUnknown, "no such upload");
        };
        bytes.extend_from_slice(&body);
        origin.store(query.digest.as_deref(), bytes.into())
    }

    async fn cancel_upload(State(origin): State<FakeOrigin>, Path(id): Path<String>) -> Response {
        match origin.uploads.lock().unwrap().remove(&id) {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => error(ErrorCode::BlobUploadUnknown, "no such upload"),
        }
    }

    async fn put_blob(
        State(origin): State<FakeOrigin>,
        Path(digest): Path<String>,
        body: Bytes,
    ) -> Response {
        origin.store(Some(&digest), body)
    }

    fn store(&self, digest: Option<&str>, bytes: Bytes) -> Response {
        let Some(Ok(digest)) = digest.map(Digest::parse) else {
            return error(ErrorCode::DigestInvalid, "bad digest");
        };
        if Digest::of(&bytes) != digest {
            return error(ErrorCode::DigestInvalid, "digest mismatch");
        }
        self.blobs.lock().unwrap().insert(digest, bytes);
        (
            StatusCode::CREATED,
            [(DOCKER_CONTENT_DIGEST, digest.to_string())],
        )
            .into_response()
    }

    /// GET and (through axum's HEAD handling) HEAD.
    async fn get_blob(
        State(origin): State<FakeOrigin>,
        Path(digest): Path<String>,
        headers: HeaderMap,
    ) -> Response {
        let blob = Digest::parse(&digest)
            .ok()
            .and_then(|d| origin.blobs.lock().unwrap().get(&d).cloned());
        let Some(blob) = blob else {
            return error(ErrorCode::BlobUnknown, "no such blob");
        };
        let len = blob.len() as u64;
        let common = [
            (DOCKER_CONTENT_DIGEST, digest),
            (header::ACCEPT_RANGES.as_str(), "bytes".to_owned()),
        ];
        let Some(range) = headers.get(header::RANGE) else {
            return (common, blob).into_response();
        };
        let range = ByteRange::parse(range.to_str().unwrap()).unwrap();
        match range.resolve(len) {
            Ok(span) => {
                let content_range = format!("bytes {}-{}/{len}", span.start, span.end - 1);
                let part = blob.slice(span.start as usize..span.end as usize);
                let extra = [(header::CONTENT_RANGE, content_range)];
                (StatusCode::PARTIAL_CONTENT, common, extra, part).into_response()
            }
            Err(_) => {
                let mut response = error(ErrorCode::RangeInvalid, "unsatisfiable");
                let value = format!("bytes */{len}").parse().unwrap();
                response.headers_mut().insert(header::CONTENT_RANGE, value);
                response
            }
        }
    }
}

/// In-memory build-index: `repo → tag → digest`, sorted for paging, and the manifest records
/// `(repo, digest)` (a tag put records its manifest, as the real one does).
#[derive(Clone, Default)]
pub struct FakeBuildIndex {
    tags: Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>,
    records: Arc<Mutex<std::collections::BTreeSet<(String, String)>>>,
}

#[derive(Deserialize)]
struct PageQuery {
    n: Option<usize>,
    last: Option<String>,
}

impl FakeBuildIndex {
    pub async fn start() -> (FakeBuildIndex, SocketAddr) {
        let index = FakeBuildIndex::default();
        let app = Router::new()
            .route("/v1/repositories", get(Self::list_repositories))
            .route("/v1/repositories/{repo}/tags", get(Self::list_tags))
            .route(
                "/v1/repositories/{repo}/tags/{tag}",
                put(Self::put_tag)
                    .get(Self::get_tag)
                    .delete(Self::delete_tag),
            )
            .route(
                "/v1/repositories/{repo}/manifests/{digest}",
                put(Self::put_record)
                    .get(Self::get_record)
                    .delete(Self::delete_record),
            )
            .with_state(index.clone());
        (index, serve(app).await)
    }

    pub fn tag(&self, repo: &str, tag: &str) -> Option<String> {
        self.tags.lock().unwrap().get(repo)?.get(tag).cloned()
    }

    async fn put_tag(
        State(index): State<FakeBuildIndex>,
        Path((repo, tag)): Path<(String, String)>,
        body: String,
    ) -> Response {
        let record = (repo.clone(), body.clone());
        index.records.lock().unwrap().insert(record);
        let mut tags = index.tags.lock().unwrap();
        tags.entry(repo).or_default().insert(tag, body);
        StatusCode::CREATED.into_response()
    }

    async fn put_record(
        State(index): State<FakeBuildIndex>,
        Path((repo, digest)): Path<(String, String)>,
    ) -> Response {
        index.records.lock().unwrap().insert((repo, digest));
        StatusCode::CREATED.into_response()
    }

    async fn get_record(
        State(index): State<FakeBuildIndex>,
        Path(record): Path<(String, String)>,
    ) -> Response {
        if index.records.lock().unwrap().contains(&record) {
            Json(serde_json::json!({ "mediaType": "application/vnd.oci.image.manifest.v1+json" }))
                .into_response()
        } else {
            error(ErrorCode::ManifestUnknown, "no such manifest")
        }
    }

    /// Removes the record and every tag of the repository pointing at the digest.
    async fn delete_record(
        State(index): State<FakeBuildIndex>,
        Path((repo, digest)): Path<(String, String)>,
    ) -> Response {
        let recorded = index
            .records
            .lock()
            .unwrap()
            .remove(&(repo.clone(), digest.clone()));
        let mut untagged = Vec::new();
        if let Some(tags) = index.tags.lock().unwrap().get_mut(&repo) {
            tags.retain(|tag, target| {
                let keep = *target != digest;
                if !keep {
                    untagged.push(tag.clone());
                }
                keep
            });
        }
        if !recorded && untagged.is_empty() {
            return error(ErrorCode::ManifestUnknown, "no such manifest");
        }
        Json(serde_json::json!({ "untagged": untagged })).into_response()
    }

    async fn get_tag(
        State(index): State<FakeBuildIndex>,
        Path((repo, tag)): Path<(String, String)>,
    ) -> Response {
        match index.tag(&repo, &tag) {
            Some(digest) => digest.into_response(),
            None => error(ErrorCode::ManifestUnknown, "no such tag"),
        }
    }

    async fn delete_tag(
        State(index): State<FakeBuildIndex>,
        Path((repo, tag)): Path<(String, String)>,
    ) -> Response {
        let mut tags = index.tags.lock().unwrap();
        let removed = tags.get_mut(&repo).and_then(|repo| repo.remove(&tag));
        if tags.get(&repo).is_some_and(BTreeMap::is_empty) {
            tags.remove(&repo);
        }
        match removed {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => error(ErrorCode::ManifestUnknown, "no such tag"),
        }
    }

    async fn list_tags(
        State(index): State<FakeBuildIndex>,
        Path(repo): Path<String>,
        Query(page): Query<PageQuery>,
    ) -> Response {
        let names: Vec<String> = match index.tags.lock().unwrap().get(&repo) {
            Some(tags) => tags.keys().cloned().collect(),
            None => return error(ErrorCode::NameUnknown, "no tags"),
        };
        let path = format!("/v1/repositories/{}/tags", shoal_api::wire::encode(&repo));
        page_response(
            &path,
            names,
            page,
            |items| serde_json::json!({ "name": repo, "tags": items }),
        )
    }

    async fn list_repositories(
        State(index): State<FakeBuildIndex>,
        Query(page): Query<PageQuery>,
    ) -> Response {
        let names: Vec<String> = index.tags.lock().unwrap().keys().cloned().collect();
        page_response(
            "/v1/repositories",
            names,
            page,
            |items| serde_json::json!({ "repositories": items }),
        )
    }
}

fn page_response(
    path: &str,
    sorted: Vec<String>,
    page: PageQuery,
    body: impl FnOnce(&[String]) -> serde_json::Value,
) -> Response {
    let after: Vec<String> = sorted
        .into_iter()
        .filter(|item| page.last.as_ref().is_none_or(|last| item > last))
        .collect();
    let n = page.n.unwrap_or(after.len());
    let items = &after[..n.min(after.len())];
    let json = Json(body(items));
    match items.last() {
        Some(last) if after.len() > n => {
            let link = format!(
                "<{path}?n={n}&last={}>; rel=\"next\"",
                shoal_api::wire::encode(last)
            );
            ([(header::LINK, link)], json).into_response()
        }
        _ => json.into_response(),
    }
}
