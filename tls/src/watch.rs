//! Files a long-running process reads again when they change: certificates rotated into a
//! Secret volume, an htpasswd file edited in place. A [`FileWatch`] remembers the files'
//! stamps and looks at them at most once per [`RECHECK`], so a check on every handshake or
//! request costs two `stat` calls a second at most.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often the files are looked at, at most: a change is picked up within this long.
pub const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    state: Mutex<Seen>,
}

#[derive(Debug)]
struct Seen {
    stamps: Vec<Stamp>,
    checked: Instant,
}

/// What tells that a file changed: its modification time, length and inode (a Kubernetes
/// Secret volume swaps a symlink, which changes the inode the path resolves to). `None`: the
/// file could not be read.
type Stamp = Option<(SystemTime, u64, u64)>;

impl FileWatch {
    /// Watches `paths`, as they are now.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> FileWatch {
        let paths: Vec<PathBuf> = paths.into_iter().collect();
        let stamps = paths.iter().map(|path| stamp(path)).collect();
        FileWatch {
            paths,
            state: Mutex::new(Seen {
                stamps,
                checked: Instant::now(),
            }),
        }
    }

    /// Whether any file changed since the last look that said so; looks at most once per
    /// [`RECHECK`] (`false` in between). A change is reported once.
    pub fn changed(&self) -> bool {
        let mut seen = shoal_core::lock(&self.state);
        let now = Instant::now();
        if now.duration_since(seen.checked) < RECHECK {
            return false;
        }
        seen.checked = now;
        self.compare(&mut seen)
    }

    /// [`FileWatch::changed`] without waiting for the interval: for tests.
    pub fn changed_now(&self) -> bool {
        let mut seen = shoal_core::lock(&self.state);
        self.compare(&mut seen)
    }

    fn compare(&self, seen: &mut Seen) -> bool {
        let stamps: Vec<Stamp> = self.paths.iter().map(|path| stamp(path)).collect();
        if stamps == seen.stamps {
            return false;
        }
        seen.stamps = stamps;
        true
    }
}

fn stamp(path: &Path) -> Stamp {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}
