//! Upload sessions: a blob pushed in chunks under a server-chosen id, committed under the
//! digest the client names at the end. Session state (file handle, running digest, offset)
//! lives in memory; a restart forgets sessions and `BlobStore::open` deletes their files.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::Digest;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::writer::Staged;
use super::{BlobStore, StoreError, lock};
use crate::ByteStream;

/// Identifies an upload session (a random UUID v4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId(Uuid);

impl UploadId {
    fn new() -> Self {
        UploadId(Uuid::new_v4())
    }

    /// Parses an id as found in a URL. Anything that is not a UUID is an unknown upload.
    pub fn parse(s: &str) -> Result<UploadId, StoreError> {
        Uuid::parse_str(s)
            .map(UploadId)
            .map_err(|_| StoreError::UploadUnknown {
                id: s.chars().take(80).collect(),
            })
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// One session.
#[derive(Debug)]
pub(crate) struct UploadSlot {
    /// `None` once committed, cancelled or expired, so a request that was waiting for the lock
    /// sees the session as gone.
    state: Mutex<Option<Staged>>,
    /// When a request last finished with this session, for expiring abandoned ones.
    touched: std::sync::Mutex<Instant>,
}

impl UploadSlot {
    fn touch(&self) {
        *lock(&self.touched) = Instant::now();
    }
}

impl BlobStore {
    /// Starts an upload session with no bytes.
    pub async fn start_upload(&self) -> Result<UploadId, StoreError> {
        let id = UploadId::new();
        let staged = Staged::create(self.layout.upload_path(&id)).await?;
        let slot = UploadSlot {
            state: Mutex::new(Some(staged)),
            touched: std::sync::Mutex::new(Instant::now()),
        };
        lock(&self.uploads).insert(id, Arc::new(slot));
        Ok(id)
    }

    fn upload_slot(&self, id: &UploadId) -> Result<Arc<UploadSlot>, StoreError> {
        lock(&self.uploads)
            .get(id)
            .cloned()
            .ok_or_else(|| unknown(id))
    }

    /// Appends `body` to the upload. With `expected_offset`, the chunk must start exactly where
    /// the upload currently ends, otherwise nothing changes and
    /// [`StoreError::OffsetMismatch`] reports the actual offset. Returns the new offset.
    ///
    /// If `body` fails midway the whole chunks received so far are kept (the client can ask
    /// for the offset and resume); if writing to disk fails the session is discarded.
    pub async fn append_upload(
        &self,
        id: &UploadId,
        expected_offset: Option<u64>,
        body: ByteStream,
    ) -> Result<u64, StoreError> {
        let slot = self.upload_slot(id)?;
        let mut state = slot.state.lock().await;
        let staged = state.as_mut().ok_or_else(|| unknown(id))?;
        slot.touch();
        if let Some(expected) = expected_offset
            && expected != staged.len()
        {
            return Err(StoreError::OffsetMismatch {
                expected,
                actual: staged.len(),
            });
        }
        let written = staged.write_stream(body).await;
        slot.touch();
        match written {
            Ok(()) => Ok(staged.len()),
            Err(e @ StoreError::Body { .. }) => Err(e),
            Err(e) => {
                state.take();
                lock(&self.uploads).remove(id);
                Err(e)
            }
        }
    }

    /// The number of bytes received so far.
    pub async fn upload_offset(&self, id: &UploadId) -> Result<u64, StoreError> {
        let slot = self.upload_slot(id)?;
        let state = slot.state.lock().await;
        slot.touch();
        state.as_ref().map(Staged::len).ok_or_else(|| unknown(id))
    }

    /// Ends the session and stores its bytes as the blob `expected`. Returns the blob length.
    /// On [`StoreError::DigestMismatch`] the session and its bytes are discarded.
    pub async fn commit_upload(&self, id: &UploadId, expected: &Digest) -> Result<u64, StoreError> {
        let staged = self.take_upload(id).await?;
        self.layout.commit(staged, expected).await
    }

    /// Ends the session and deletes its bytes.
    pub async fn cancel_upload(&self, id: &UploadId) -> Result<(), StoreError> {
        self.take_upload(id).await.map(drop)
    }

    async fn take_upload(&self, id: &UploadId) -> Result<Staged, StoreError> {
        let slot = self.upload_slot(id)?;
        // Waiting for the lock lets an append in progress finish first.
        let staged = slot.state.lock().await.take().ok_or_else(|| unknown(id))?;
        lock(&self.uploads).remove(id);
        Ok(staged)
    }
}

impl BlobStore {
    /// Discards sessions that no request has touched for `idle`, with their bytes (clients that
    /// crashed mid-push never cancel). A session with a request in progress is never expired.
    /// Returns how many were discarded.
    pub fn expire_uploads(&self, idle: Duration) -> usize {
        let mut uploads = lock(&self.uploads);
        let before = uploads.len();
        uploads.retain(|id, slot| {
            if lock(&slot.touched).elapsed() < idle {
                return true;
            }
            // A held lock means a request is using the session right now.
            let Ok(mut state) = slot.state.try_lock() else {
                return true;
            };
            tracing::info!(upload = %id, "discarding idle upload");
            state.take();
            false
        });
        before - uploads.len()
    }
}

fn unknown(id: &UploadId) -> StoreError {
    StoreError::UploadUnknown { id: id.to_string() }
}
