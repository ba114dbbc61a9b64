//! File-list snapshots of data directories, to prove that rejected input changed nothing on
//! disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Every regular file under a directory (relative path → size).
pub type Snapshot = BTreeMap<PathBuf, u64>;

/// Lists every file under each of `dirs` (missing directories count as empty).
pub fn snapshot(dirs: &[&Path]) -> Result<Snapshot> {
    let mut files = Snapshot::new();
    for dir in dirs {
        if dir.exists() {
            walk(dir, dir, &mut files)?;
        }
    }
    Ok(files)
}

fn walk(root: &Path, dir: &Path, files: &mut Snapshot) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let metadata = entry
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?;
        if metadata.is_dir() {
            walk(root, &path, files)?;
        } else {
            // `root` is a prefix of every path found below it.
            let relative = path.strip_prefix(root).unwrap_or(&path);
            files.insert(
                root.file_name()
                    .map_or_else(PathBuf::new, PathBuf::from)
                    .join(relative),
                metadata.len(),
            );
        }
    }
    Ok(())
}

/// A readable diff of two snapshots; empty when they are equal.
pub fn diff(before: &Snapshot, after: &Snapshot) -> String {
    let mut lines = Vec::new();
    for (path, size) in after {
        match before.get(path) {
            None => lines.push(format!("+ {} ({size} bytes)", path.display())),
            Some(old) if old != size => {
                lines.push(format!("~ {} ({old} → {size} bytes)", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in before.keys().filter(|path| !after.contains_key(*path)) {
        lines.push(format!("- {}", path.display()));
    }
    lines.join("\n")
}
