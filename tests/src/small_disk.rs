//! A real, small filesystem for full-disk tests: a `tmpfs` mounted with `size=` on a fresh temp
//! dir (root only, as the suite runs in CI), filled on demand, and unmounted when the
//! [`SmallDisk`] is dropped (also on panic). Writes past its size fail with `ENOSPC` and
//! `fallocate` beyond it is refused, exactly as on a full data disk.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use tempfile::TempDir;

/// The filler is written in chunks of this size until the disk refuses more.
const FILL_CHUNK: usize = 64 * 1024;
/// The file [`SmallDisk::fill_leaving`] writes.
const FILLER: &str = "filler";

/// A mounted tmpfs of a fixed size.
pub struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` (a multiple of the page size).
    pub fn mount(bytes: u64) -> Result<SmallDisk> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-small-disk-")
            .tempdir()
            .context("creating the mount point")?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .context("running mount (full-disk tests need root)")?;
        ensure!(
            status.success(),
            "mounting a {bytes}-byte tmpfs on {} failed ({status}); full-disk tests need root",
            dir.path().display()
        );
        Ok(SmallDisk { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk until only `free` bytes (rounded down to pages) are left, with one
    /// filler file.
    pub fn fill_leaving(&self, free: u64) -> Result<()> {
        let path = self.filler();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let chunk = vec![0x5a; FILL_CHUNK];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::StorageFull => break,
                Err(error) => return Err(error).context("filling the small disk"),
            }
        }
        let full = file.metadata()?.len();
        if full < free {
            bail!("the disk holds only {full} bytes of filler, less than {free} to free");
        }
        file.set_len(full - free)?;
        file.sync_all()?;
        Ok(())
    }

    /// Removes the filler: the disk is as empty as its other files leave it.
    pub fn free(&self) -> Result<()> {
        std::fs::remove_file(self.filler()).context("removing the filler")
    }

    fn filler(&self) -> PathBuf {
        self.dir.path().join(FILLER)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy, so that a process still holding a file there cannot keep the mount alive.
        let unmounted = Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path())
            .status();
        if !unmounted.is_ok_and(|status| status.success()) {
            eprintln!("unmounting {} failed", self.dir.path().display());
        }
    }
}
