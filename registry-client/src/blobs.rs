//! Blobs: `HEAD`, streamed (and ranged) `GET`, and uploads. An upload session is opened by a
//! bodiless `POST` (which also answers any authentication challenge, since a streamed body
//! cannot be sent twice), then filled by `PATCH` chunks and committed by `PUT ?digest=`, or
//! filled and committed by one streamed `PUT`. A cross-repository mount is a `POST ?mount=`.

use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, Response, StatusCode, Url};
use shoal_core::{Digest, Name};

use crate::auth::Scope;
use crate::error::{Error, unexpected};
use crate::{RegistryClient, content_length, location};

/// A blob being served: its body is read as a stream.
#[derive(Debug)]
pub struct Blob {
    response: Response,
    url: Url,
    /// Whether the registry honoured the requested range (206); a registry that ignores
    /// `Range` sends the whole blob from byte 0.
    pub partial: bool,
}

impl Blob {
    /// The body's length, when the registry said.
    pub fn content_length(&self) -> Option<u64> {
        content_length(self.response.headers())
    }

    /// The body as it arrives; a failure mid-stream names the request.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Error>> + Send + 'static {
        let url = self.url.to_string();
        self.response
            .bytes_stream()
            .map_err(move |source| Error::Transport {
                method: Method::GET,
                url: url.clone(),
                source,
            })
    }
}

/// What a mount request did.
#[derive(Debug)]
pub enum Mount {
    /// The blob is now in the repository.
    Mounted,
    /// The registry could not mount it and opened an upload session instead.
    Upload(Upload),
}

/// An open upload session.
#[derive(Debug)]
pub struct Upload {
    client: RegistryClient,
    scope: Scope,
    /// Where the next request of the session goes.
    location: Url,
}

impl RegistryClient {
    /// `HEAD` a blob: its size when the repository has it, `None` on 404.
    pub async fn head_blob(&self, repo: &Name, digest: &Digest) -> Result<Option<u64>, Error> {
        let url = self.url(&format!("{repo}/blobs/{digest}"))?;
        let scope = Scope::repository(repo.as_str(), "pull");
        let response = self.send(Method::HEAD, &url, &scope, |r| r).await?;
        match response.status() {
            StatusCode::OK => {
                content_length(response.headers())
                    .map(Some)
                    .ok_or_else(|| Error::BadResponse {
                        context: format!("HEAD {url}"),
                        reason: "no valid Content-Length".to_owned(),
                    })
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(unexpected(Method::HEAD, &url, response).await),
        }
    }

    /// `GET` a blob, or the bytes `range` of it; `None` on 404. A range the registry ignored
    /// comes back whole ([`Blob::partial`] false); one starting past the end is
    /// [`Error::RangeNotSatisfiable`].
    pub async fn get_blob(
        &self,
        repo: &Name,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<Blob>, Error> {
        let url = self.url(&format!("{repo}/blobs/{digest}"))?;
        let scope = Scope::repository(repo.as_str(), "pull");
        let response = self
            .send(Method::GET, &url, &scope, |request| match &range {
                Some(range) => request.header(
                    RANGE,
                    format!("bytes={}-{}", range.start, range.end.saturating_sub(1)),
                ),
                None => request,
            })
            .await?;
        let partial = match (response.status(), &range) {
            (StatusCode::NOT_FOUND, _) => return Ok(None),
            (StatusCode::OK, _) => false,
            (StatusCode::PARTIAL_CONTENT, Some(_)) => true,
            (StatusCode::RANGE_NOT_SATISFIABLE, Some(range)) => {
                return Err(Error::RangeNotSatisfiable {
                    url: url.to_string(),
                    start: range.start,
                    len: total_length(&response),
                });
            }
            _ => return Err(unexpected(Method::GET, &url, response).await),
        };
        Ok(Some(Blob {
            response,
            url,
            partial,
        }))
    }

    /// Opens an upload session in `repo`.
    pub async fn start_upload(&self, repo: &Name) -> Result<Upload, Error> {
        let url = self.url(&format!("{repo}/blobs/uploads/"))?;
        let scope = Scope::repository(repo.as_str(), "pull,push");
        let response = self
            .send(Method::POST, &url, &scope, |r| r.header(CONTENT_LENGTH, 0))
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(unexpected(Method::POST, &url, response).await);
        }
        Ok(Upload {
            client: self.clone(),
            scope,
            location: location(&url, response.headers())?,
        })
    }

    /// Asks the registry to link blob `digest` of repository `from` into `repo` without
    /// sending its bytes.
    pub async fn mount_blob(
        &self,
        repo: &Name,
        digest: &Digest,
        from: &Name,
    ) -> Result<Mount, Error> {
        let mut url = self.url(&format!("{repo}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from.as_str());
        let scope = Scope::repository(repo.as_str(), "pull,push")
            .and(Scope::repository(from.as_str(), "pull"));
        let response = self
            .send(Method::POST, &url, &scope, |r| r.header(CONTENT_LENGTH, 0))
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(Upload {
                client: self.clone(),
                scope,
                location: location(&url, response.headers())?,
            })),
            _ => Err(unexpected(Method::POST, &url, response).await),
        }
    }

    /// Uploads blob `digest` from `body` in one streamed `PUT` (of `length` bytes, when known).
    /// A body that fails or is not `length` bytes long is never committed, and the session is
    /// abandoned on any failure.
    pub async fn push_blob(
        &self,
        repo: &Name,
        digest: &Digest,
        body: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
        length: Option<u64>,
    ) -> Result<(), Error> {
        let upload = self.start_upload(repo).await?;
        let location = upload.location.clone();
        let result = upload.put(digest, body, length).await;
        if result.is_err() {
            self.cancel_upload(&location, &Scope::repository(repo.as_str(), "pull,push"))
                .await;
        }
        result
    }

    /// Abandons an upload session; a failure only leaves a session the registry expires.
    async fn cancel_upload(&self, location: &Url, scope: &Scope) {
        if let Err(e) = self.send(Method::DELETE, location, scope, |r| r).await {
            tracing::debug!(error = %e, "cancelling a registry upload failed");
        }
    }
}

impl Upload {
    /// Where the session's next request goes.
    pub fn location(&self) -> &Url {
        &self.location
    }

    /// Appends bytes `offset..offset + len` of the blob, streamed from `body`, as one `PATCH`.
    pub async fn patch(
        &mut self,
        body: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
        offset: u64,
        len: u64,
    ) -> Result<(), Error> {
        let url = self.location.clone();
        let request = self
            .client
            .shared
            .http
            .patch(url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .header(
                CONTENT_RANGE,
                format!("{offset}-{}", (offset + len).saturating_sub(1)),
            )
            .body(reqwest::Body::wrap_stream(body));
        let response = self
            .client
            .send_once(Method::PATCH, &url, &self.scope, request)
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(unexpected(Method::PATCH, &url, response).await);
        }
        self.location = location(&url, response.headers())?;
        Ok(())
    }

    /// Commits the bytes sent so far as blob `digest`.
    pub async fn commit(self, digest: &Digest) -> Result<(), Error> {
        let url = self.commit_url(digest);
        let response = self
            .client
            .send(Method::PUT, &url, &self.scope, |r| {
                r.header(CONTENT_LENGTH, 0)
            })
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(unexpected(Method::PUT, &url, response).await);
        }
        Ok(())
    }

    /// Sends the whole blob from `body` and commits it as `digest` in one `PUT`. A body that
    /// fails to read or is not `length` bytes long fails the request, so the registry never
    /// commits it.
    pub async fn put(
        self,
        digest: &Digest,
        body: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
        length: Option<u64>,
    ) -> Result<(), Error> {
        let url = self.commit_url(digest);
        let fault = Arc::new(Mutex::new(None));
        let checked = checked(body.boxed(), length, fault.clone());
        let mut request = self
            .client
            .shared
            .http
            .put(url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(checked));
        if let Some(length) = length {
            request = request.header(CONTENT_LENGTH, length);
        }
        let result = self
            .client
            .send_once(Method::PUT, &url, &self.scope, request)
            .await;
        let fault = shoal_core::lock(&fault).take();
        match (fault, result) {
            (Some(BodyFault::Read(source)), _) => Err(Error::Body(source)),
            (Some(BodyFault::Length(actual)), _) => Err(Error::LengthMismatch {
                expected: length.unwrap_or_default(),
                actual,
            }),
            (None, Err(e)) => Err(e),
            (None, Ok(response)) if response.status() == StatusCode::CREATED => Ok(()),
            (None, Ok(response)) => Err(unexpected(Method::PUT, &url, response).await),
        }
    }

    fn commit_url(&self, digest: &Digest) -> Url {
        let mut url = self.location.clone();
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        url
    }
}

/// The total length in a `Content-Range: bytes */<len>` (or `a-b/<len>`) header.
fn total_length(response: &Response) -> Option<u64> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    value.rsplit('/').next()?.parse().ok()
}

/// What went wrong with a body while it streamed to the registry.
enum BodyFault {
    Read(io::Error),
    Length(u64),
}

type BodyStream = futures::stream::BoxStream<'static, io::Result<Bytes>>;

/// Passes `body` through, recording a read error or a length other than `expected` in `fault`
/// and failing the stream so the registry never commits it.
fn checked(
    body: BodyStream,
    expected: Option<u64>,
    fault: Arc<Mutex<Option<BodyFault>>>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let record = move |what: BodyFault| {
        *shoal_core::lock(&fault) = Some(what);
    };
    futures::stream::unfold(
        (body, 0u64, Some(record)),
        move |(mut body, seen, record)| async move {
            let record = record?;
            match body.next().await {
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    if expected.is_some_and(|expected| seen > expected) {
                        record(BodyFault::Length(seen));
                        return Some((
                            Err(io::Error::other("body longer than promised")),
                            (body, seen, None),
                        ));
                    }
                    Some((Ok(chunk), (body, seen, Some(record))))
                }
                Some(Err(e)) => {
                    let message = e.to_string();
                    record(BodyFault::Read(e));
                    Some((Err(io::Error::other(message)), (body, seen, None)))
                }
                None if expected.is_some_and(|expected| seen != expected) => {
                    record(BodyFault::Length(seen));
                    Some((
                        Err(io::Error::other("body shorter than promised")),
                        (body, seen, None),
                    ))
                }
                None => None,
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> BodyStream {
        let parts: Vec<io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        futures::stream::iter(parts).boxed()
    }

    async fn run(body: BodyStream, expected: Option<u64>) -> (Vec<io::Result<Bytes>>, bool) {
        let fault = Arc::new(Mutex::new(None));
        let out: Vec<_> = checked(body, expected, fault.clone()).collect().await;
        let faulted = fault.lock().expect("fault").is_some();
        (out, faulted)
    }

    #[tokio::test]
    async fn a_body_of_the_promised_length_passes_untouched() {
        let (out, faulted) = run(chunks(&[b"abc", b"de"]), Some(5)).await;
        assert!(!faulted);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn short_long_and_failing_bodies_end_in_an_error_and_are_recorded() {
        for (body, expected) in [
            (chunks(&[b"abc"]), Some(5)),
            (chunks(&[b"abc", b"def"]), Some(5)),
        ] {
            let (out, faulted) = run(body, expected).await;
            assert!(faulted);
            assert!(out.last().expect("an item").is_err());
        }
        let failing: BodyStream = futures::stream::iter([
            Ok(Bytes::from_static(b"ab")),
            Err(io::Error::other("disk gone")),
        ])
        .boxed();
        let (out, faulted) = run(failing, None).await;
        assert!(faulted);
        assert!(out[1].is_err());
    }
}
