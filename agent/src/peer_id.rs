//! The agent's name in the swarm. Configured, or a UUID generated on first start and kept in
//! `data_dir/peer_id`, so that a restarted agent announces under the same name and the tracker
//! does not list it twice.

use std::io;
use std::path::Path;

use shoal_core::PeerId;

const FILE: &str = "peer_id";

/// Why the persisted peer id cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdFileError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("{} holds an invalid peer id: {source}", path.display())]
    Invalid {
        path: std::path::PathBuf,
        source: shoal_core::PeerIdError,
    },
}

/// The peer id stored in `data_dir`, created (durably) when there is none yet.
pub async fn load_or_create(data_dir: &Path) -> Result<PeerId, PeerIdFileError> {
    let path = data_dir.join(FILE);
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| PeerIdFileError::Io {
            action,
            path,
            source,
        }
    };
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => {
            return PeerId::parse(text.trim())
                .map_err(|source| PeerIdFileError::Invalid { path, source });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", &path)(e)),
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let peer_id = PeerId::parse(&id).map_err(|source| PeerIdFileError::Invalid {
        path: path.clone(),
        source,
    })?;
    // Written under a temporary name and renamed, so a crash never leaves a torn id behind.
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    tokio::fs::write(&tmp, format!("{id}\n"))
        .await
        .map_err(io("write", &tmp))?;
    let file = tokio::fs::File::open(&tmp)
        .await
        .map_err(io("open", &tmp))?;
    file.sync_all().await.map_err(io("fsync", &tmp))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(io("rename into place", &path))?;
    Ok(peer_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_generated_id_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).await.unwrap();
        let second = load_or_create(dir.path()).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(first.as_str().len(), 32);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).await.unwrap(), first);
    }

    #[tokio::test]
    async fn a_corrupt_id_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "not a peer id!\n").unwrap();
        let error = load_or_create(dir.path()).await.unwrap_err().to_string();
        assert!(error.contains("peer_id"), "{error}");
    }
}
