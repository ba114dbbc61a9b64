//! Garbage collection's calls to one origin and to the build-index (`docs/internal-api.md`, "Garbage collection"; the
//! protocol and the race it closes: `docs/gc.md`): touching a blob a manifest is about to be
//! recorded with, listing the blobs the origin's store and the backend hold, condemning a blob
//! (from then on a touch of it fails), deleting a condemned blob, and releasing it.

use reqwest::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use shoal_core::{Digest, Name};

use crate::error::ApiError;
use crate::transport::{check_from, read_limited, send_to};
use crate::wire::encode;

const SERVICE: &str = "origin";

/// A condemnation that takes longer fails (the blob is kept). The collector adds it to a run's
/// window: an origin measures the window from when the request arrives, at most this late.
pub const CONDEMN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A blob listing holds one short JSON object per blob; this bounds a listing at millions.
const LISTING_LIMIT: usize = 512 * 1024 * 1024;

/// One blob an origin's store or the backend holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedBlob {
    pub digest: Digest,
    pub size: u64,
}

/// `POST /gc/blobs/{digest}/condemn`: condemn the blob unless it was touched, uploaded or
/// stored in the last `untouched_for_ms` milliseconds; with `dry_run`, only say whether it
/// would be.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CondemnRequest {
    /// The collection run condemning it: only that run may delete or release it.
    pub run: String,
    pub untouched_for_ms: u64,
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to a condemnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Condemned {
    /// Condemned (or, in a dry run, would be): the sizes of the origin's copy and of the
    /// backend's, where they exist.
    Condemned {
        store: Option<u64>,
        backend: Option<u64>,
    },
    /// Kept, and why (touched recently, condemned by another run, restarted recently).
    Kept { reason: String },
}

/// What a delete removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Deleted {
    /// Bytes removed from the origin's store.
    pub store: u64,
    /// Bytes removed from the backend (only when asked to delete there).
    pub backend: u64,
}

/// Garbage collection's view of one origin.
#[derive(Debug, Clone)]
pub struct OriginGc {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
}

impl OriginGc {
    /// The blob's length, noting that a manifest is about to reference it (`POST
    /// /blobs/{digest}/touch`): a sweep then keeps it for its grace period. `None` when the
    /// origin and its backend lack it, or it is being swept.
    pub async fn touch(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
    ) -> Result<Option<u64>, ApiError> {
        let mut url = format!("{}/blobs/{digest}/touch", self.base);
        if let Some(namespace) = namespace {
            url = format!("{url}?namespace={}", encode(namespace.as_str()));
        }
        let resp = send(self.http.post(url)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let listed: ListedBlob = json(check(resp).await?).await?;
        Ok(Some(listed.size))
    }

    /// Every blob committed in the origin's store.
    pub async fn store_blobs(&self) -> Result<Vec<ListedBlob>, ApiError> {
        let resp = send(self.http.get(format!("{}/gc/store", self.base))).await?;
        json(check(resp).await?).await
    }

    /// Every blob in the origin's backends (each key-value backend's `blobs/` keys).
    pub async fn backend_blobs(&self) -> Result<Vec<ListedBlob>, ApiError> {
        let resp = send(self.http.get(format!("{}/gc/backend", self.base))).await?;
        json(check(resp).await?).await
    }

    pub async fn condemn(
        &self,
        digest: &Digest,
        request: &CondemnRequest,
    ) -> Result<Condemned, ApiError> {
        let url = format!("{}/gc/blobs/{digest}/condemn", self.base);
        let resp = send(self.http.post(url).json(request).timeout(CONDEMN_TIMEOUT)).await?;
        json(check(resp).await?).await
    }

    /// Deletes a blob `run` condemned here: the store's copy, its queued write-back and replica
    /// pushes, and with `backend` the backends' copies.
    pub async fn delete(
        &self,
        digest: &Digest,
        run: &str,
        backend: bool,
    ) -> Result<Deleted, ApiError> {
        let url = format!(
            "{}/gc/blobs/{digest}?run={}&backend={backend}",
            self.base,
            encode(run)
        );
        let resp = send(self.http.delete(url)).await?;
        json(check(resp).await?).await
    }

    /// Ends `run`'s condemnation of the blob (touches succeed again).
    pub async fn release(&self, digest: &Digest, run: &str) -> Result<(), ApiError> {
        let url = format!(
            "{}/gc/blobs/{digest}/condemn?run={}",
            self.base,
            encode(run)
        );
        check(send(self.http.delete(url)).await?).await.map(drop)
    }
}

async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, ApiError> {
    parse(SERVICE, resp).await
}

async fn send(req: reqwest::RequestBuilder) -> Result<Response, ApiError> {
    send_to(SERVICE, req).await
}

async fn check(resp: Response) -> Result<Response, ApiError> {
    check_from(SERVICE, resp).await
}

/// One blob a collection run swept (or, in a dry run, would sweep).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweptBlob {
    pub digest: Digest,
    /// The blob's length (0 when no copy was found, only a condemnation).
    pub size: u64,
}

/// One unreferenced blob a run kept, and why (touched within the grace period, an origin that
/// did not answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptBlob {
    pub digest: Digest,
    pub reason: String,
}

/// What a collection run did: `POST /v1/gc` on the build-index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub run: String,
    pub dry_run: bool,
    /// Manifests read by the mark (every tag target and recorded manifest, their children).
    pub manifests: usize,
    /// Blobs those manifests reference, themselves included.
    pub marked: usize,
    /// Blobs found on the origins and in the backend.
    pub found: usize,
    /// Unreferenced blobs removed (dry run: that would be removed), with their lengths.
    pub swept: Vec<SweptBlob>,
    /// Unreferenced blobs kept.
    pub kept: Vec<KeptBlob>,
    /// The sum of `swept`'s lengths.
    pub bytes: u64,
}

/// What `DELETE /v1/blobs/{digest}` removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobDeleted {
    pub digest: Digest,
    pub size: u64,
}

/// Garbage collection's calls to the build-index.
#[derive(Debug, Clone)]
pub struct BuildIndexGc {
    pub(crate) client: crate::BuildIndexClient,
}

const BUILD_INDEX: &str = "build-index";

impl BuildIndexGc {
    /// Runs a collection now (`POST /v1/gc?dry_run=`) and returns its report; it may take long.
    /// Asked of the replica that answered last only: a run is not started on a second replica
    /// while the first may still be collecting (runs on two replicas at once are not safe).
    pub async fn collect(&self, dry_run: bool) -> Result<GcReport, ApiError> {
        let url = format!("{}/v1/gc?dry_run={dry_run}", self.client.current_base());
        let resp = send_to(BUILD_INDEX, self.client.http().post(url)).await?;
        let resp = check_from(BUILD_INDEX, resp).await?;
        parse(BUILD_INDEX, resp).await
    }

    /// Deletes a blob no recorded manifest references (`DELETE /v1/blobs/{digest}`), at the
    /// replicas in turn as every tag request.
    pub async fn delete_blob(&self, digest: &Digest) -> Result<BlobDeleted, ApiError> {
        let http = self.client.http();
        let url = |base: &str| format!("{base}/v1/blobs/{digest}");
        let resp = self.client.send(|base| http.delete(url(base))).await?;
        let resp = check_from(BUILD_INDEX, resp).await?;
        parse(BUILD_INDEX, resp).await
    }
}

async fn parse<T: serde::de::DeserializeOwned>(
    service: &str,
    resp: Response,
) -> Result<T, ApiError> {
    let body = read_limited(service, resp, LISTING_LIMIT).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::Protocol {
        service: service.into(),
        reason: format!("bad garbage-collection answer: {e}"),
    })
}
