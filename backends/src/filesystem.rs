//! A backend that keeps each key as a file under a root directory (`<root>/<key>`), so the
//! tree is easy to inspect and can live on a shared mount used by several components.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::fs::File;
use tokio::io::AsyncWriteExt;

use super::{Backend, BackendError};
use crate::ByteStream;
use shoal_jobs::{IoContext, TempPath};
use shoal_storage::fsutil;

/// Temporary files of puts in progress. Reserved: no key may start with this component. Not
/// cleared at start-up, because several processes may share one backend root; a crash can leave
/// an orphan here, but never a partial object under a real key.
const TMP_DIR: &str = ".shoal-tmp";

/// Stores objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct FilesystemBackend {
    root: PathBuf,
}

impl FilesystemBackend {
    /// Uses (creating if needed) the directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<FilesystemBackend, BackendError> {
        let root = root.into();
        let tmp = root.join(TMP_DIR);
        std::fs::create_dir_all(&tmp).ctx("create directory", &tmp)?;
        Ok(FilesystemBackend { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, BackendError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    /// Creates the directories between the root and `key`'s file, fsyncing each new entry.
    async fn create_parents(&self, key: &str) -> Result<(), BackendError> {
        let mut dir = self.root.clone();
        let mut components: Vec<&str> = key.split('/').collect();
        components.pop();
        for component in components {
            dir.push(component);
            fsutil::create_dir_durable(&dir).await?;
        }
        Ok(())
    }

    /// Opens a regular file, treating a missing file or a directory as absent.
    async fn open_object(&self, path: &Path) -> Result<Option<(File, u64)>, BackendError> {
        let file = match File::open(path).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("open", path)?,
        };
        let meta = file.metadata().await.ctx("stat", path)?;
        Ok(meta.is_file().then_some((file, meta.len())))
    }
}

/// Accepts `/`-separated relative keys whose components are non-empty, not `.` or `..`, free of
/// NUL bytes, and not the reserved temporary directory.
fn validate_key(key: &str) -> Result<(), BackendError> {
    let invalid = |reason| {
        Err(BackendError::InvalidKey {
            key: key.chars().take(200).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("empty key");
    }
    if key.starts_with('/') {
        return invalid("leading '/'");
    }
    if key.contains('\0') {
        return invalid("NUL byte");
    }
    for component in key.split('/') {
        match component {
            "" => return invalid("empty path component"),
            "." | ".." => return invalid("'.' or '..' path component"),
            _ => {}
        }
    }
    if key.split('/').next() == Some(TMP_DIR) {
        return invalid("reserved prefix");
    }
    Ok(())
}

#[async_trait]
impl Backend for FilesystemBackend {
    async fn stat(&self, key: &str) -> Result<Option<u64>, BackendError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(meta.is_file().then_some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("stat", &path)?,
        }
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>, BackendError> {
        let path = self.path(key)?;
        let Some((file, len)) = self.open_object(&path).await? else {
            return Ok(None);
        };
        let range = range.unwrap_or(0..len);
        if range.start > len {
            return Err(BackendError::RangeNotSatisfiable {
                key: key.to_owned(),
                start: range.start,
                len,
            });
        }
        let end = range.end.clamp(range.start, len);
        Ok(Some(fsutil::file_stream(
            file,
            path,
            range.start,
            end - range.start,
        )))
    }

    async fn put(
        &self,
        key: &str,
        mut body: ByteStream,
        length: Option<u64>,
    ) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let tmp_dir = self.root.join(TMP_DIR);
        let hint = key.rsplit('/').next().unwrap_or("object");
        let temp = TempPath::new(tmp_dir.join(shoal_jobs::temp_name(hint)));
        let mut file = File::create(temp.path()).await.ctx("create", temp.path())?;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| BackendError::Body {
                key: key.to_owned(),
                source,
            })?;
            file.write_all(&chunk).await.ctx("write", temp.path())?;
            written += chunk.len() as u64;
        }
        if let Some(expected) = length
            && expected != written
        {
            return Err(BackendError::LengthMismatch {
                key: key.to_owned(),
                expected,
                actual: written,
            });
        }
        file.flush().await.ctx("write", temp.path())?;
        file.sync_all().await.ctx("fsync", temp.path())?;
        drop(file);
        self.create_parents(key).await?;
        tokio::fs::rename(temp.path(), &path)
            .await
            .ctx("rename into place", &path)?;
        temp.persist();
        match path.parent() {
            Some(dir) => Ok(shoal_jobs::fsync_dir(dir).await?),
            None => Ok(()),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx("delete", &path)?,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        // Walk only the deepest directory the prefix names, then filter by the full prefix.
        let dir_key = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        if !dir_key.is_empty() {
            validate_key(dir_key)?;
        }
        let root = self.root.clone();
        let dir_key = dir_key.to_owned();
        let prefix = prefix.to_owned();
        let walked = tokio::task::spawn_blocking(move || walk(&root, &dir_key))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .ctx("list", &self.root)??;
        let mut keys: Vec<String> = walked
            .into_iter()
            .filter(|key| key.starts_with(&prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }
}

/// Every file key under the directory `dir_key` (relative to `root`); a missing directory has
/// none. Names that are not UTF-8 cannot be keys and are skipped.
fn walk(root: &Path, dir_key: &str) -> Result<Vec<String>, BackendError> {
    let mut keys = Vec::new();
    let mut pending = vec![dir_key.to_owned()];
    while let Some(dir_key) = pending.pop() {
        let dir = root.join(&dir_key);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).ctx("list", &dir)?,
        };
        for entry in entries {
            let entry = entry.ctx("list", &dir)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if dir_key.is_empty() && name == TMP_DIR {
                continue;
            }
            let key = if dir_key.is_empty() {
                name
            } else {
                format!("{dir_key}/{name}")
            };
            let file_type = entry.file_type().ctx("stat", &entry.path())?;
            if file_type.is_dir() {
                pending.push(key);
            } else if file_type.is_file() {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::TryStreamExt;

    fn body(data: &'static [u8]) -> ByteStream {
        futures::stream::iter(data.chunks(3).map(|c| Ok(Bytes::from_static(c)))).boxed()
    }

    async fn read_all(stream: ByteStream) -> Vec<u8> {
        let chunks: Vec<Bytes> = stream.try_collect().await.expect("stream");
        chunks.concat()
    }

    #[test]
    fn keys_that_could_escape_or_alias_are_rejected() {
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            ".",
            "a/..",
            "x\0y",
            ".shoal-tmp/x",
        ] {
            assert!(
                matches!(validate_key(key), Err(BackendError::InvalidKey { .. })),
                "{key:?} accepted"
            );
        }
        for key in [
            "blobs/sha256/ab",
            "repositories/a/b/_tags/v1",
            "x",
            "a/.hidden",
        ] {
            assert!(validate_key(key).is_ok(), "{key:?} rejected");
        }
    }

    #[tokio::test]
    async fn invalid_keys_are_rejected_by_every_operation() {
        // The root's parent is the test's own directory, so `../x` landing there would show,
        // whatever else the machine's temp directory holds.
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = FilesystemBackend::new(dir.path().join("root")).expect("backend");
        let bad = "../x";
        assert!(matches!(
            backend.stat(bad).await,
            Err(BackendError::InvalidKey { .. })
        ));
        assert!(matches!(
            backend.get(bad, None).await,
            Err(BackendError::InvalidKey { .. })
        ));
        assert!(matches!(
            backend.put(bad, body(b"x"), None).await,
            Err(BackendError::InvalidKey { .. })
        ));
        assert!(matches!(
            backend.delete(bad).await,
            Err(BackendError::InvalidKey { .. })
        ));
        assert!(matches!(
            backend.list("../").await,
            Err(BackendError::InvalidKey { .. })
        ));
        assert!(!dir.path().join("x").exists());
    }

    #[tokio::test]
    async fn put_get_stat_delete_roundtrip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = FilesystemBackend::new(dir.path()).expect("backend");
        let key = "blobs/sha256/abc";
        assert_eq!(backend.stat(key).await.expect("stat"), None);
        assert!(backend.get(key, None).await.expect("get").is_none());

        backend
            .put(key, body(b"hello world"), Some(11))
            .await
            .expect("put");
        assert_eq!(backend.stat(key).await.expect("stat"), Some(11));
        let whole = backend.get(key, None).await.expect("get").expect("present");
        assert_eq!(read_all(whole).await, b"hello world");
        let part = backend
            .get(key, Some(6..100))
            .await
            .expect("get")
            .expect("present");
        assert_eq!(read_all(part).await, b"world");
        assert!(matches!(
            backend.get(key, Some(12..20)).await,
            Err(BackendError::RangeNotSatisfiable { len: 11, .. })
        ));
        // Directories are not objects.
        assert_eq!(backend.stat("blobs/sha256").await.expect("stat"), None);

        assert!(backend.delete(key).await.expect("delete"));
        assert!(!backend.delete(key).await.expect("delete again"));
        assert_eq!(backend.stat(key).await.expect("stat"), None);
    }

    #[tokio::test]
    async fn failed_puts_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = FilesystemBackend::new(dir.path()).expect("backend");
        let err = backend.put("k/short", body(b"abc"), Some(4)).await;
        assert!(matches!(
            err,
            Err(BackendError::LengthMismatch {
                expected: 4,
                actual: 3,
                ..
            })
        ));
        let broken: ByteStream = futures::stream::iter([
            Ok(Bytes::from_static(b"abc")),
            Err(io::Error::other("client went away")),
        ])
        .boxed();
        let err = backend.put("k/broken", broken, None).await;
        assert!(matches!(err, Err(BackendError::Body { .. })));
        assert_eq!(backend.list("").await.expect("list"), Vec::<String>::new());
        let tmp_entries = std::fs::read_dir(dir.path().join(TMP_DIR))
            .expect("tmp")
            .count();
        assert_eq!(tmp_entries, 0);
    }

    #[tokio::test]
    async fn list_returns_sorted_keys_under_a_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = FilesystemBackend::new(dir.path()).expect("backend");
        for key in [
            "repositories/b/_tags/v1",
            "repositories/a/x/_tags/latest",
            "repositories/a/_tags/v2",
            "repositories/a/_tags/v1",
            "blobs/sha256/00",
        ] {
            backend
                .put(key, body(b"sha256:x"), None)
                .await
                .expect("put");
        }
        assert_eq!(
            backend.list("repositories/").await.expect("list"),
            [
                "repositories/a/_tags/v1",
                "repositories/a/_tags/v2",
                "repositories/a/x/_tags/latest",
                "repositories/b/_tags/v1",
            ]
        );
        assert_eq!(
            backend.list("repositories/a/_tags/").await.expect("list"),
            ["repositories/a/_tags/v1", "repositories/a/_tags/v2"]
        );
        // A prefix may end inside a component.
        assert_eq!(
            backend
                .list("repositories/a/_tags/v")
                .await
                .expect("list")
                .len(),
            2
        );
        assert_eq!(backend.list("").await.expect("list").len(), 5);
        assert!(
            backend
                .list("nothing/here/")
                .await
                .expect("list")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn put_replaces_an_existing_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = FilesystemBackend::new(dir.path()).expect("backend");
        backend.put("t", body(b"first"), None).await.expect("put");
        backend.put("t", body(b"second"), None).await.expect("put");
        let got = backend.get("t", None).await.expect("get").expect("present");
        assert_eq!(read_all(got).await, b"second");
    }
}
