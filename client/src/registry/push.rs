//! The push path: blobs through upload sessions (POST, PATCH chunks streamed from the file with
//! `Content-Range`, PUT `?digest=`), then the manifest.

use std::path::Path;

use futures::StreamExt;
use shoal_core::Digest;
use shoal_registry_client::Upload;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_util::io::ReaderStream;

use super::{Progress, RegistryClient, name};
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
            progress(Progress::finished(digest, size, true));
            return Ok(());
        }
        progress(Progress::Started {
            digest: *digest,
            total: size,
        });

        let mut upload = self.registry.start_upload(&name(repo)?).await?;
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
            patch_chunk(&mut upload, &chunk, progress).await?;
            offset += len;
        }
        upload.commit(digest).await?;
        progress(Progress::finished(digest, size, false));
        Ok(())
    }
}

/// Sends `chunk` as one PATCH of `upload`, reporting progress while the body streams.
async fn patch_chunk(
    upload: &mut Upload,
    chunk: &Chunk<'_>,
    progress: &impl Fn(Progress),
) -> Result<(), Error> {
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
    let request = upload.patch(body, offset, len);
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
    Ok(result?)
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
