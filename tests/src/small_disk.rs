//! A real, small filesystem for disk-fault tests, mounted on a fresh temp dir (root only, as
//! the suite runs in CI) and unmounted when the [`SmallDisk`] is dropped (also on panic):
//!
//! - a `tmpfs` with `size=` ([`SmallDisk::tmpfs`]), filled on demand: writes past its size fail
//!   with `ENOSPC` and `fallocate` beyond it is refused, exactly as on a full data disk;
//! - an ext4 image on a loop device ([`SmallDisk::ext4`]), whose files can be made immutable
//!   while a process holds them open: ext4 then refuses every further write to them with
//!   `EPERM` (tmpfs accepts the flag but does not enforce it on open files), a local write
//!   failure in the middle of whatever the process was doing.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use tempfile::{NamedTempFile, TempDir};

/// The filler is written in chunks of this size until the disk refuses more.
const FILL_CHUNK: usize = 64 * 1024;
/// The file [`SmallDisk::fill_leaving`] writes.
const FILLER: &str = "filler";

/// A mounted small filesystem.
pub struct SmallDisk {
    dir: TempDir,
    fs: Fs,
}

enum Fs {
    Tmpfs,
    /// The image file is removed after the unmount (fields drop after `Drop::drop`).
    Ext4 {
        _image: NamedTempFile,
    },
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` (a multiple of the page size).
    pub fn tmpfs(bytes: u64) -> Result<SmallDisk> {
        let dir = mount_point()?;
        run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(dir.path()),
            "mounting a tmpfs (disk-fault tests need root)",
        )?;
        Ok(SmallDisk { dir, fs: Fs::Tmpfs })
    }

    /// Makes an ext4 filesystem of `bytes` in an image file and mounts it through a loop
    /// device (detached again when it is unmounted).
    pub fn ext4(bytes: u64) -> Result<SmallDisk> {
        let image = tempfile::Builder::new()
            .prefix("shoal-small-disk-")
            .suffix(".ext4")
            .tempfile()
            .context("creating the image file")?;
        image.as_file().set_len(bytes)?;
        run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(image.path()),
            "making the ext4 filesystem (install e2fsprogs)",
        )?;
        let dir = mount_point()?;
        run(
            Command::new("mount")
                .args(["-t", "ext4", "-o", "loop"])
                .arg(image.path())
                .arg(dir.path()),
            "mounting the ext4 image (disk-fault tests need root)",
        )?;
        Ok(SmallDisk {
            dir,
            fs: Fs::Ext4 { _image: image },
        })
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

    /// Sets or clears the immutable flag of `file` on this disk (`chattr`). Only an ext4 disk
    /// enforces it on files already open.
    pub fn set_immutable(&self, file: &Path, immutable: bool) -> Result<()> {
        if matches!(self.fs, Fs::Tmpfs) {
            bail!("tmpfs does not enforce the immutable flag on open files: use SmallDisk::ext4");
        }
        ensure!(
            file.starts_with(self.path()),
            "{} is not on this disk",
            file.display()
        );
        run(
            Command::new("chattr")
                .arg(if immutable { "+i" } else { "-i" })
                .arg(file),
            "changing the immutable flag",
        )
    }

    fn filler(&self) -> PathBuf {
        self.dir.path().join(FILLER)
    }
}

fn mount_point() -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix("shoal-small-disk-")
        .tempdir()
        .context("creating the mount point")
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("{what}: running {command:?}"))?;
    ensure!(status.success(), "{what}: {command:?} exited with {status}");
    Ok(())
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
