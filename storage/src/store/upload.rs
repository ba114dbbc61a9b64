//! Upload sessions: a blob pushed in chunks under a server-chosen id, committed under the
//! digest the client names at the end. Session state (running digest, offset, owner) lives in
//! memory; a restart forgets sessions and `BlobStore::open` deletes their files.
//!
//! A session holds no file descriptor between requests: each append opens the staged file,
//! writes at the session's offset and closes it again. Open sessions are bounded per client
//! address and in total ([`UploadLimits`]), and each is bound to the repository it was opened
//! for: a request naming another repository finds no session.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::{Digest, Name};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::writer::Staged;
use super::{BlobStore, StoreError};
use crate::ByteStream;
use shoal_core::lock;

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

/// Who opens a session, and for which repository.
#[derive(Debug, Clone, Default)]
pub struct UploadOwner {
    /// The client's address, counted against [`UploadLimits::per_client`]; `None` counts only
    /// toward the total.
    pub client: Option<IpAddr>,
    /// The repository the session is bound to: every later request must name the same one
    /// (`None` included).
    pub repository: Option<Name>,
}

/// Bounds on open upload sessions. Beyond either, [`BlobStore::start_upload`] fails with
/// [`StoreError::TooManyUploads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Sessions open at once in the store.
    pub total: usize,
    /// Sessions open at once per client address (IPv6 addresses count per /64, the block one
    /// host is usually given).
    pub per_client: usize,
}

impl UploadLimits {
    /// No bound: for stores that only ever see trusted callers (tests, benchmarks).
    pub const UNLIMITED: UploadLimits = UploadLimits {
        total: usize::MAX,
        per_client: usize::MAX,
    };
}

/// One session.
#[derive(Debug)]
pub(crate) struct UploadSlot {
    /// `None` once committed, cancelled or expired, so a request that was waiting for the lock
    /// sees the session as gone.
    state: Mutex<Option<Staged>>,
    /// When a request last finished with this session, for expiring abandoned ones.
    touched: std::sync::Mutex<Instant>,
    /// Fixed at start, so checking it before an operation can never go stale.
    repository: Option<Name>,
    /// The client key the session counts against.
    client: Option<IpAddr>,
}

impl UploadSlot {
    fn touch(&self) {
        *lock(&self.touched) = Instant::now();
    }
}

/// The open sessions and how many each client holds. Every insertion and removal goes through
/// here, so the counts always match the map.
#[derive(Debug)]
pub(crate) struct Sessions {
    slots: HashMap<UploadId, Arc<UploadSlot>>,
    per_client: HashMap<IpAddr, usize>,
    limits: UploadLimits,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            slots: HashMap::new(),
            per_client: HashMap::new(),
            limits: UploadLimits::UNLIMITED,
        }
    }
}

impl Sessions {
    /// Whether `client` may open one more session.
    fn admit(&self, client: Option<IpAddr>) -> Result<(), StoreError> {
        if self.slots.len() >= self.limits.total {
            return Err(StoreError::TooManyUploads {
                scope: "total",
                limit: self.limits.total,
            });
        }
        if let Some(client) = client
            && self.per_client.get(&client).copied().unwrap_or(0) >= self.limits.per_client
        {
            return Err(StoreError::TooManyUploads {
                scope: "client",
                limit: self.limits.per_client,
            });
        }
        Ok(())
    }

    fn insert(&mut self, id: UploadId, slot: Arc<UploadSlot>) -> Result<(), StoreError> {
        self.admit(slot.client)?;
        if let Some(client) = slot.client {
            *self.per_client.entry(client).or_default() += 1;
        }
        self.slots.insert(id, slot);
        Ok(())
    }

    fn remove(&mut self, id: &UploadId) -> Option<Arc<UploadSlot>> {
        let slot = self.slots.remove(id)?;
        if let Some(client) = slot.client
            && let Some(count) = self.per_client.get_mut(&client)
        {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&client);
            }
        }
        Some(slot)
    }
}

/// The key a client's sessions are counted under: an IPv4 address, or an IPv6 address's /64.
fn client_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

impl BlobStore {
    /// Bounds the upload sessions open at once (unbounded until called).
    pub fn set_upload_limits(&self, limits: UploadLimits) {
        lock(&self.uploads).limits = limits;
    }

    /// How many upload sessions are open.
    pub fn open_uploads(&self) -> usize {
        lock(&self.uploads).slots.len()
    }
}

impl BlobStore {
    /// Starts an upload session with no bytes for `owner`, or fails with
    /// [`StoreError::TooManyUploads`] (creating nothing) when the bounds are reached.
    pub async fn start_upload(&self, owner: UploadOwner) -> Result<UploadId, StoreError> {
        let client = owner.client.map(client_key);
        // Refused before any file is made, so a flood of refused starts costs no disk work.
        lock(&self.uploads).admit(client)?;
        let id = UploadId::new();
        let mut staged = Staged::create(self.layout.upload_path(&id)).await?;
        staged.close().await?;
        let slot = UploadSlot {
            state: Mutex::new(Some(staged)),
            touched: std::sync::Mutex::new(Instant::now()),
            repository: owner.repository,
            client,
        };
        // Checked again: other sessions may have started while the file was created. A refusal
        // drops `slot`, and with it the file.
        lock(&self.uploads).insert(id, Arc::new(slot))?;
        Ok(id)
    }

    /// Succeeds when session `id` exists and is bound to `repository`; otherwise the session
    /// is unknown to this caller, and stays as it was.
    pub fn check_upload(&self, id: &UploadId, repository: Option<&Name>) -> Result<(), StoreError> {
        let slot = self.upload_slot(id)?;
        if slot.repository.as_ref() != repository {
            return Err(unknown(id));
        }
        Ok(())
    }

    fn upload_slot(&self, id: &UploadId) -> Result<Arc<UploadSlot>, StoreError> {
        lock(&self.uploads)
            .slots
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
        self.append(id, expected_offset, None, body).await
    }

    /// Appends a chunk that claims to cover bytes `offset..offset + length` of the upload: it
    /// must start where the upload ends ([`StoreError::OffsetMismatch`]) and hold exactly
    /// `length` bytes ([`StoreError::ChunkLengthMismatch`]). Anything else, a broken-off body
    /// included, appends nothing. Returns the new offset.
    pub async fn append_upload_chunk(
        &self,
        id: &UploadId,
        offset: u64,
        length: u64,
        body: ByteStream,
    ) -> Result<u64, StoreError> {
        self.append(id, Some(offset), Some(length), body).await
    }

    async fn append(
        &self,
        id: &UploadId,
        expected_offset: Option<u64>,
        length: Option<u64>,
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
        let written = match length {
            Some(length) => staged.write_exact(length, body).await,
            None => staged.write_stream(body).await,
        };
        // The descriptor is given back between requests, whatever happened.
        let written = match (written, staged.close().await) {
            (Ok(()), closed) => closed,
            (Err(e), _) => Err(e),
        };
        slot.touch();
        match written {
            Ok(()) => Ok(staged.len()),
            Err(e @ (StoreError::Body { .. } | StoreError::ChunkLengthMismatch { .. })) => Err(e),
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
    /// The session ends whatever the outcome: on [`StoreError::DigestMismatch`] (or a disk
    /// failure) its bytes are discarded.
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
        let idle: Vec<UploadId> = uploads
            .slots
            .iter()
            .filter(|(_, slot)| lock(&slot.touched).elapsed() >= idle)
            .map(|(id, _)| *id)
            .collect();
        let mut expired = 0;
        for id in idle {
            // A held lock means a request is using the session right now.
            let Ok(mut state) = uploads.slots[&id].state.try_lock() else {
                continue;
            };
            tracing::info!(upload = %id, "discarding idle upload");
            state.take();
            drop(state);
            uploads.remove(&id);
            expired += 1;
        }
        expired
    }
}

fn unknown(id: &UploadId) -> StoreError {
    StoreError::UploadUnknown { id: id.to_string() }
}
