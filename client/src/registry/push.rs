//! The push path: blobs through upload sessions (POST, PATCH chunks streamed from the file with
//! `Content-Range`, PUT `?digest=`), then the manifest.

use std::path::Path;

use futures::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use shoal_core::Digest;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_util::io::ReaderStream;

use super::{Progress, RegistryClient, registry_error};
use crate::error::{Error, io_context};
use crate::oci::Image;

/// Each PATCH carries at most this much: one request per 16 MiB keeps the request overhead
/// negligible while exercising the chunked-upload path for every non-trivial layer.
const PATCH_CHUNK: u64 = 16 << 20;
/// Read size when streaming a file into a request body.
const READ_BUFFER: usize = 256 << 10;

impl RegistryClient {
    /// Pushes every blob of `image` that the registry lacks, then its manifest as `repo:tag`.
    /// Returns the manifest digest the registry acknowledged.
    pub async fn push_image(
        &self,
        image: &Image,
        repo: &str,
        tag: &str,
        progress: impl Fn(Progress),
    ) -> Result<Digest, Error> {
        for (digest, size) in image.blobs() {
            self.push_blob(repo, digest, *size, &image.blob_path(digest), &progress)
                .await?;
        }
        self.put_manifest(
            repo,
            tag,
            image.manifest_media_type().as_str(),
            &image.manifest_bytes,
        )
        .await
    }

    /// Uploads the file at `path` as blob `digest` unless the registry already has it: POST a
    /// session, PATCH the file in chunks with `Content-Range`, PUT `?digest=` to commit.
    pub async fn push_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        path: &Path,
        progress: &impl Fn(Progress),
    ) -> Result<(), Error> {
        if self.blob_size(repo, digest).await?.is_some() {
            progress(Progress::Finished {
                digest: *digest,
                total: size,
                skipped: true,
            });
            return Ok(());
        }
        progress(Progress::Started {
            digest: *digest,
            total: size,
        });

        let start_url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        let response = self
            .send(self.http.post(start_url.clone()), Method::POST, &start_url)
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(registry_error(Method::POST, &start_url, response).await);
        }
        let mut location = self.location(&start_url, response.headers())?;

        let mut offset = 0;
        while offset < size {
            let len = PATCH_CHUNK.min(size - offset);
            let chunk = Chunk {
                digest,
                path,
                offset,
                len,
                total: size,
            };
            location = self.patch_chunk(&location, &chunk, progress).await?;
            offset += len;
        }

        let mut commit_url = location;
        commit_url
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let response = self
            .send(
                self.http.put(commit_url.clone()).header(CONTENT_LENGTH, 0),
                Method::PUT,
                &commit_url,
            )
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(registry_error(Method::PUT, &commit_url, response).await);
        }
        progress(Progress::Finished {
            digest: *digest,
            total: size,
            skipped: false,
        });
        Ok(())
    }

    /// Sends `chunk` as one PATCH, reporting progress while the body streams. Returns the next
    /// upload URL from the registry's `Location`.
    async fn patch_chunk(
        &self,
        url: &Url,
        chunk: &Chunk<'_>,
        progress: &impl Fn(Progress),
    ) -> Result<Url, Error> {
        let Chunk {
            digest,
            path,
            offset,
            len,
            total,
        } = *chunk;
        let mut file = File::open(path).await.map_err(io_context(path))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(io_context(path))?;
        // The body must be 'static, so it reports sent bytes over a channel that this task
        // drains (calling `progress`) while the request is in flight.
        let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<u64>();
        let body = ReaderStream::with_capacity(file.take(len), READ_BUFFER).inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                // The receiver only goes away once the request is finished.
                let _ = sent_tx.send(bytes.len() as u64);
            }
        });
        let request = self
            .http
            .patch(url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .header(CONTENT_RANGE, format!("{offset}-{}", offset + len - 1))
            .body(reqwest::Body::wrap_stream(body))
            .send();
        tokio::pin!(request);
        let mut done = offset;
        let result = loop {
            tokio::select! {
                result = &mut request => break result,
                Some(n) = sent_rx.recv() => {
                    done += n;
                    progress(Progress::Advanced { digest: *digest, done, total });
                }
            }
        };
        // Counts sent just before the response arrived are still queued.
        while let Ok(n) = sent_rx.try_recv() {
            done += n;
            progress(Progress::Advanced {
                digest: *digest,
                done,
                total,
            });
        }
        let response = result.map_err(|source| Error::Transport {
            method: Method::PATCH,
            url: url.to_string(),
            source,
        })?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(registry_error(Method::PATCH, url, response).await);
        }
        self.location(url, response.headers())
    }
}

/// One PATCH worth of a blob file: bytes `offset..offset + len` of the `total` at `path`.
#[derive(Clone, Copy)]
struct Chunk<'a> {
    digest: &'a Digest,
    path: &'a Path,
    offset: u64,
    len: u64,
    total: u64,
}
