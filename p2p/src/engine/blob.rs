//! [`Blob`]: what a requester gets from [`Engine::fetch`](super::Engine::fetch) — a committed
//! blob in the store, or a download whose bytes are streamed in order as pieces are verified.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use shoal_core::Digest;
use shoal_storage::{BlobStore, ByteStream};

use super::download::{Download, State};

/// A blob, complete or downloading. Cheap to clone.
#[derive(Clone)]
pub struct Blob {
    length: u64,
    source: Source,
}

#[derive(Clone)]
enum Source {
    Stored {
        store: Arc<BlobStore>,
        digest: Digest,
    },
    Downloading(Arc<Download>),
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (digest, downloading) = match &self.source {
            Source::Stored { digest, .. } => (*digest, false),
            Source::Downloading(download) => (download.digest, true),
        };
        f.debug_struct("Blob")
            .field("digest", &digest)
            .field("length", &self.length)
            .field("downloading", &downloading)
            .finish()
    }
}

impl Blob {
    pub(crate) fn stored(store: Arc<BlobStore>, digest: Digest, length: u64) -> Blob {
        Blob {
            length,
            source: Source::Stored { store, digest },
        }
    }

    pub(crate) fn downloading(download: Arc<Download>) -> Blob {
        Blob {
            length: download.partial.metainfo().length(),
            source: Source::Downloading(download),
        }
    }

    /// The blob's length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The bytes of `range` (clamped to the blob), in order, each piece as soon as it is
    /// verified (waits for missing pieces). A download that fails ends the stream with an error.
    pub fn stream(&self, range: Range<u64>) -> ByteStream {
        let end = range.end.min(self.length);
        let start = range.start.min(end);
        match &self.source {
            Source::Stored { store, digest } => {
                let (store, digest) = (store.clone(), *digest);
                futures::stream::once(async move {
                    match store.open_blob(&digest).await {
                        Ok(Some(file)) => Ok(file.stream(start..end)),
                        Ok(None) => Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("blob {digest} left the store"),
                        )),
                        Err(e) => Err(io::Error::other(e)),
                    }
                })
                .try_flatten()
                .boxed()
            }
            Source::Downloading(download) => {
                if start == end {
                    return futures::stream::empty().boxed();
                }
                let piece_length = download.partial.metainfo().piece_length();
                let (first, last) = (start / piece_length, (end - 1) / piece_length);
                let download = download.clone();
                futures::stream::iter(first..=last)
                    .then(move |piece| {
                        let download = download.clone();
                        async move {
                            // Piece indices are bounded by MAX_PIECES, far below u32::MAX.
                            let piece = u32::try_from(piece).unwrap_or(u32::MAX);
                            wait_for(&download, piece).await?;
                            let piece_start = u64::from(piece) * piece_length;
                            let range = start.max(piece_start)..end.min(piece_start + piece_length);
                            download.partial.read(range).map_err(io::Error::other)
                        }
                    })
                    .try_flatten()
                    .boxed()
            }
        }
    }
}

/// Waits until `piece` is verified, or fails when the download does.
async fn wait_for(download: &Download, piece: u32) -> io::Result<()> {
    let mut have = download.partial.subscribe();
    let mut state = download.state.subscribe();
    loop {
        if have.borrow_and_update().get(piece) {
            return Ok(());
        }
        if let State::Failed(reason) = &*state.borrow_and_update() {
            return Err(io::Error::other(format!(
                "download of {} failed: {reason}",
                download.digest
            )));
        }
        // Both senders live as long as the download, which we hold.
        tokio::select! {
            changed = have.changed() => changed.map_err(io::Error::other)?,
            changed = state.changed() => changed.map_err(io::Error::other)?,
        }
    }
}
