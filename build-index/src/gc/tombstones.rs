//! The tombstone log: one JSON line per swept blob (`{"time","digest","size","run","reason"}`),
//! appended and synced before the sweep counts it, so a sweep can be audited afterwards.

use std::path::PathBuf;
use std::time::SystemTime;

use humantime_serde::re::humantime;
use serde::Serialize;
use shoal_core::Digest;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::GcError;

#[derive(Debug, Serialize)]
pub struct Tombstone {
    time: String,
    digest: Digest,
    size: u64,
    run: String,
    reason: &'static str,
}

impl Tombstone {
    pub fn new(digest: Digest, size: u64, run: &str, reason: &'static str) -> Tombstone {
        Tombstone {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            digest,
            size,
            run: run.to_owned(),
            reason,
        }
    }
}

/// The log file, appended to by one writer at a time.
#[derive(Debug)]
pub struct Tombstones {
    path: PathBuf,
    writing: Mutex<()>,
}

impl Tombstones {
    pub fn new(path: PathBuf) -> Tombstones {
        Tombstones {
            path,
            writing: Mutex::new(()),
        }
    }

    pub async fn append(&self, tombstone: &Tombstone) -> Result<(), GcError> {
        let error = |source| GcError::Tombstone {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(tombstone).expect("a tombstone serialises");
        line.push(b'\n');
        let _writing = self.writing.lock().await;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(error)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(error)?;
        file.write_all(&line).await.map_err(error)?;
        file.sync_data().await.map_err(error)
    }
}
