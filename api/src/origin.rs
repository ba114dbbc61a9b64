//! Client for the origin's blob and upload API (`docs/internal-api.md`, "Origin HTTP API").

use bytes::Bytes;
use reqwest::{RequestBuilder, Response, StatusCode, header};
use shoal_core::{Digest, Metainfo, Name};

use crate::error::ApiError;
use crate::transport::{check_from, read_limited, send_to};
use crate::wire::{CHUNK_LENGTH, CLIENT_ADDR, UPLOAD_ID, UPLOAD_OFFSET, encode};

const SERVICE: &str = "origin";

/// One origin node's HTTP API.
#[derive(Debug, Clone)]
pub struct OriginClient {
    http: reqwest::Client,
    base: String,
}

impl OriginClient {
    /// `addr` is `host:port` or a full `http://…` base URL.
    pub fn new(http: reqwest::Client, addr: &str) -> Self {
        Self {
            http,
            base: shoal_http_client::base_url(addr, false),
        }
    }

    /// The base URL requests go to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Garbage collection's calls to this origin.
    pub fn gc(&self) -> crate::gc::OriginGc {
        crate::gc::OriginGc {
            http: self.http.clone(),
            base: self.base.clone(),
        }
    }

    /// Opens an upload session bound to `namespace` and returns its id. `client` is the
    /// address of the client a proxy opens it for (counted against the origin's per-client
    /// bound when the origin trusts this caller to name it; a 429 TOOMANYREQUESTS beyond).
    pub async fn start_upload(
        &self,
        namespace: Option<&Name>,
        client: Option<std::net::IpAddr>,
    ) -> Result<String, ApiError> {
        let url = with_namespace(format!("{}/uploads", self.base), namespace, '?');
        let mut req = self.http.post(url);
        if let Some(client) = client {
            req = req.header(CLIENT_ADDR, client.to_string());
        }
        let resp = send(req).await?;
        let resp = check(resp).await?;
        header_str(&resp, UPLOAD_ID).map(str::to_owned)
    }

    /// Appends `body` to an upload of `namespace` (the one it was opened for). With
    /// `expected_offset`, the origin refuses (416) a chunk that does not start where the upload
    /// currently ends; with `chunk_length` too, one whose body is not exactly that long.
    /// Returns the upload's new length.
    pub async fn patch_upload(
        &self,
        id: &str,
        namespace: Option<&Name>,
        expected_offset: Option<u64>,
        chunk_length: Option<u64>,
        body: reqwest::Body,
    ) -> Result<u64, ApiError> {
        let url = with_namespace(
            format!("{}/uploads/{}", self.base, encode(id)),
            namespace,
            '?',
        );
        let mut req = self.http.patch(url).body(body);
        if let Some(offset) = expected_offset {
            req = req.header(UPLOAD_OFFSET, offset);
        }
        if let Some(length) = chunk_length {
            req = req.header(CHUNK_LENGTH, length);
        }
        let resp = check(send(req).await?).await?;
        upload_offset(&resp)
    }

    /// The number of bytes an upload of `namespace` holds.
    pub async fn upload_status(&self, id: &str, namespace: Option<&Name>) -> Result<u64, ApiError> {
        let url = with_namespace(
            format!("{}/uploads/{}", self.base, encode(id)),
            namespace,
            '?',
        );
        let req = self.http.get(url);
        let resp = check(send(req).await?).await?;
        upload_offset(&resp)
    }

    /// Commits an upload (with an optional final chunk) as `digest`. The origin verifies the digest and
    /// answers only once the blob is durable.
    pub async fn commit_upload(
        &self,
        id: &str,
        digest: &Digest,
        namespace: Option<&Name>,
        body: Option<reqwest::Body>,
    ) -> Result<(), ApiError> {
        let url = format!(
            "{}/uploads/{}?digest={}",
            self.base,
            encode(id),
            encode(&digest.to_string())
        );
        let mut req = self.http.put(with_namespace(url, namespace, '&'));
        if let Some(body) = body {
            req = req.body(body);
        }
        check(send(req).await?).await.map(drop)
    }

    /// Abandons an upload of `namespace`.
    pub async fn cancel_upload(&self, id: &str, namespace: Option<&Name>) -> Result<(), ApiError> {
        let url = with_namespace(
            format!("{}/uploads/{}", self.base, encode(id)),
            namespace,
            '?',
        );
        let req = self.http.delete(url);
        check(send(req).await?).await.map(drop)
    }

    /// Stores a whole blob in one request.
    pub async fn put_blob(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
        body: reqwest::Body,
    ) -> Result<(), ApiError> {
        let req = self
            .http
            .put(self.blob_url(digest, "", namespace))
            .body(body);
        check(send(req).await?).await.map(drop)
    }

    /// Stores a replica of a blob committed on another origin (`?replica=true`): the receiver
    /// verifies and stores it but does not replicate it further.
    pub async fn put_replica(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
        body: reqwest::Body,
    ) -> Result<(), ApiError> {
        let url = self.blob_url(digest, "", namespace);
        let sep = if url.contains('?') { '&' } else { '?' };
        let req = self.http.put(format!("{url}{sep}replica=true")).body(body);
        check(send(req).await?).await.map(drop)
    }

    /// The blob's length, or `None` when neither the origin nor its backend has it. Never downloads.
    pub async fn stat_blob(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
    ) -> Result<Option<u64>, ApiError> {
        let req = self.http.head(self.blob_url(digest, "", namespace));
        let resp = send(req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(resp).await?;
        let len = header_str(&resp, header::CONTENT_LENGTH.as_str())?;
        len.parse()
            .map(Some)
            .map_err(|_| protocol("bad Content-Length"))
    }

    /// Starts a blob download. `range` is a raw `Range` header value, passed through. The response (200 or
    /// 206) is returned unread so the caller can stream it.
    pub async fn get_blob(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
        range: Option<&str>,
    ) -> Result<Response, ApiError> {
        let mut req = self.http.get(self.blob_url(digest, "", namespace));
        if let Some(range) = range {
            req = req.header(header::RANGE, range);
        }
        let resp = send(req).await?;
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            let length = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes */"))
                .and_then(|v| v.parse().ok());
            return Err(ApiError::RangeNotSatisfiable {
                service: SERVICE.into(),
                length,
            });
        }
        check(resp).await
    }

    /// Starts a download of a blob (or of `range` of it, a raw `Range` value) from this
    /// origin's store only (`?replica=true`: no pull-through), for a peer origin filling in.
    /// `None` when the store lacks it.
    pub async fn get_replica(
        &self,
        digest: &Digest,
        range: Option<&str>,
    ) -> Result<Option<Response>, ApiError> {
        let url = format!("{}?replica=true", self.blob_url(digest, "", None));
        let mut req = self.http.get(url);
        if let Some(range) = range {
            req = req.header(header::RANGE, range);
        }
        let resp = send(req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check(resp).await.map(Some)
    }

    /// Reads a small blob (a manifest) into memory, refusing anything over `limit` bytes. `None` when absent.
    pub async fn get_small_blob(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
        limit: usize,
    ) -> Result<Option<Bytes>, ApiError> {
        let resp = match self.get_blob(digest, namespace, None).await {
            Ok(resp) => resp,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        read_limited(SERVICE, resp, limit).await.map(Some)
    }

    /// The blob's metainfo (piece hashes), computed by the origin on first request.
    pub async fn metainfo(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
    ) -> Result<Option<Metainfo>, ApiError> {
        let req = self.http.get(self.blob_url(digest, "/metainfo", namespace));
        let resp = send(req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = read_limited(SERVICE, check(resp).await?, METAINFO_LIMIT).await?;
        Metainfo::from_json(&body)
            .map(Some)
            .map_err(|e| protocol(&format!("bad metainfo: {e}")))
    }

    fn blob_url(&self, digest: &Digest, suffix: &str, namespace: Option<&Name>) -> String {
        with_namespace(
            format!("{}/blobs/{digest}{suffix}", self.base),
            namespace,
            '?',
        )
    }
}

/// Metainfo holds at most a few thousand 32-byte hashes in hex; this leaves ample room.
const METAINFO_LIMIT: usize = 2 * 1024 * 1024;

fn is_not_found(e: &ApiError) -> bool {
    matches!(e, ApiError::Remote { status: 404, .. })
}

fn with_namespace(url: String, namespace: Option<&Name>, sep: char) -> String {
    match namespace {
        Some(ns) => format!("{url}{sep}namespace={}", encode(ns.as_str())),
        None => url,
    }
}

fn upload_offset(resp: &Response) -> Result<u64, ApiError> {
    header_str(resp, UPLOAD_OFFSET)?
        .parse()
        .map_err(|_| protocol("bad Upload-Offset"))
}

fn protocol(reason: &str) -> ApiError {
    ApiError::Protocol {
        service: SERVICE.into(),
        reason: reason.into(),
    }
}

fn header_str<'a>(resp: &'a Response, name: &str) -> Result<&'a str, ApiError> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| protocol(&format!("missing {name} header")))
}

async fn send(req: RequestBuilder) -> Result<Response, ApiError> {
    send_to(SERVICE, req).await
}

async fn check(resp: Response) -> Result<Response, ApiError> {
    check_from(SERVICE, resp).await
}
