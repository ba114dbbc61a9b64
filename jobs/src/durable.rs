//! Durable files: I/O errors that carry their path, temporary files that clean up after
//! themselves, and the atomic write (temp file, fsync, rename, fsync the directory) that every
//! marker, metainfo file and store entry goes through, so a crash leaves the old version or the
//! new one, never half of one.

use std::io;
use std::path::{Path, PathBuf};

use tokio::fs::File;
use tokio::io::AsyncWriteExt;

/// An I/O error together with what was being done and to which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct IoError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Attaches an action and a path to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, action: &'static str, path: &Path) -> Result<T, IoError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, action: &'static str, path: &Path) -> Result<T, IoError> {
        self.map_err(|source| IoError {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A file path that is deleted when dropped, unless [`TempPath::persist`] was called.
/// Keeps failed or abandoned writes from leaving partial files behind.
#[derive(Debug)]
pub struct TempPath {
    path: PathBuf,
    armed: bool,
}

impl TempPath {
    pub fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Disarms the guard (the file was renamed away or must be kept).
    pub fn persist(mut self) {
        self.armed = false;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the file may never have been created.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The suffix of every name [`temp_name`] makes, so a directory scan can tell them apart.
pub const TEMP_SUFFIX: &str = ".tmp";

/// A unique name for a temporary file.
pub fn temp_name(hint: &str) -> String {
    format!("{hint}.{}{TEMP_SUFFIX}", uuid::Uuid::new_v4().simple())
}

/// Fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub async fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    let handle = File::open(dir).await.ctx("open directory", dir)?;
    handle.sync_all().await.ctx("fsync directory", dir)
}

/// Writes `data` to `target` atomically and durably: write `tmp`, fsync, rename, fsync the
/// target's directory. `tmp` must be on the same filesystem as `target`.
pub async fn write_atomic(tmp: PathBuf, target: &Path, data: &[u8]) -> Result<(), IoError> {
    let tmp = TempPath::new(tmp);
    let mut file = File::create(tmp.path()).await.ctx("create", tmp.path())?;
    file.write_all(data).await.ctx("write", tmp.path())?;
    file.sync_all().await.ctx("fsync", tmp.path())?;
    drop(file);
    tokio::fs::rename(tmp.path(), target)
        .await
        .ctx("rename into place", target)?;
    tmp.persist();
    match target.parent() {
        Some(dir) => fsync_dir(dir).await,
        None => Ok(()),
    }
}
