//! Job files: every job's progress as `<id>.json` in `preheat.state_dir`, rewritten on each
//! change (temp file, fsync, rename, so a crash leaves the old or the new version, never half of
//! one) and read back at start, so that a restarted proxy resumes what it had not finished.
//!
//! The writes are small and synchronous: a job changes a handful of times per attempt, and
//! an fsync of a few hundred bytes is cheaper than handing it to a blocking thread.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::jobs::Progress;

const EXTENSION: &str = "json";
/// A job file that cannot be read is renamed with this suffix, kept for a human to look at and
/// never loaded again.
const CORRUPT_SUFFIX: &str = "corrupt";

/// The directory of job files.
#[derive(Debug)]
pub struct JobStore {
    dir: PathBuf,
}

impl JobStore {
    /// Opens `dir`, creating it when missing.
    pub fn open(dir: &Path) -> io::Result<JobStore> {
        fs::create_dir_all(dir)?;
        Ok(JobStore {
            dir: dir.to_owned(),
        })
    }

    /// Writes `progress` as its job's file, replacing the previous version atomically.
    pub fn save(&self, progress: &Progress) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(progress).map_err(io::Error::other)?;
        let path = self.path(&progress.id);
        let temp = self.dir.join(format!(".{}.{EXTENSION}.tmp", progress.id));
        let mut file = fs::File::create(&temp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&temp, &path)
    }

    /// Deletes a forgotten job's file; one already gone is fine.
    pub fn remove(&self, id: &str) {
        match fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(job = id, %error, "deleting a preheat job file failed"),
        }
    }

    /// Every job file that parses. A file that does not (truncated by a full disk, edited by
    /// hand) is logged and renamed aside; it never stops the proxy from starting.
    pub fn load(&self) -> io::Result<Vec<Progress>> {
        let mut jobs = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(error) => {
                    tracing::warn!(dir = %self.dir.display(), %error, "skipping an unlistable entry of the preheat job directory");
                    continue;
                }
            };
            let Some(id) = job_id(&path) else { continue };
            match read(&path, id) {
                Ok(progress) => jobs.push(progress),
                Err(error) => {
                    let aside = path.with_extension(format!("{EXTENSION}.{CORRUPT_SUFFIX}"));
                    tracing::warn!(file = %path.display(), %error, aside = %aside.display(), "skipping an unreadable preheat job file");
                    if let Err(error) = fs::rename(&path, &aside) {
                        tracing::warn!(file = %path.display(), %error, "moving an unreadable preheat job file aside failed");
                    }
                }
            }
        }
        Ok(jobs)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{EXTENSION}"))
    }
}

/// The job id a file is named for: `<id>.json`, not hidden (temp files start with a dot).
fn job_id(path: &Path) -> Option<&str> {
    if path.extension()? != EXTENSION {
        return None;
    }
    let id = path.file_stem()?.to_str()?;
    (!id.starts_with('.')).then_some(id)
}

fn read(path: &Path, id: &str) -> io::Result<Progress> {
    let progress: Progress = serde_json::from_slice(&fs::read(path)?)?;
    if progress.id != id {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the file holds job {:?}", progress.id),
        ));
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preheat::jobs::{AgentsProgress, Image, Source, State};

    fn progress(id: &str) -> Progress {
        let mut progress = Progress::new(
            id.to_owned(),
            &Image::parse("team/app:v1").unwrap(),
            Source::Api,
        );
        progress.state = State::Running;
        progress.attempts = 3;
        progress.last_error = Some("origin down".into());
        progress.agents = Some(AgentsProgress {
            selected: vec!["10.0.0.1:16000".into(), "10.0.0.2:16000".into()],
            done: vec!["10.0.0.2:16000".into()],
            failed: vec!["10.0.0.1:16000".into()],
            last_error: Some("timed out".into()),
        });
        progress
    }

    #[test]
    fn jobs_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("jobs")).unwrap();
        let first = progress("18c1f-1");
        store.save(&first).unwrap();
        let mut second = progress("18c1f-2");
        second.state = State::Succeeded;
        store.save(&second).unwrap();
        // A rewrite replaces the file.
        second.blobs_done = 4;
        store.save(&second).unwrap();
        let mut loaded = store.load().unwrap();
        loaded.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(loaded, [first, second.clone()]);
        store.remove(&second.id);
        store.remove(&second.id);
        assert_eq!(store.load().unwrap().len(), 1);
    }

    #[test]
    fn unreadable_job_files_are_moved_aside_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        store.save(&progress("18c1f-1")).unwrap();
        fs::write(
            dir.path().join("18c1f-2.json"),
            b"{\"id\": \"18c1f-2\", \"sta",
        )
        .unwrap();
        // A file naming another job is as suspect as a truncated one.
        let mut other = serde_json::to_value(progress("18c1f-9")).unwrap();
        other["id"] = "18c1f-4".into();
        fs::write(dir.path().join("18c1f-3.json"), other.to_string()).unwrap();
        // Temp files of an interrupted write and foreign files are not jobs.
        fs::write(dir.path().join(".18c1f-5.json.tmp"), b"{").unwrap();
        fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id, "18c1f-1");
        assert!(dir.path().join("18c1f-2.json.corrupt").is_file());
        assert!(dir.path().join("18c1f-3.json.corrupt").is_file());
        assert_eq!(store.load().unwrap().len(), 1, "moved aside for good");
    }
}
