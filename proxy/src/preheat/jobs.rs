//! Preheat jobs: what each asks for, its progress as `GET /preheat/{id}` reports it, and the
//! bounded table that remembers them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use shoal_core::{Digest, Name, Tag};

/// The image a job preheats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: Name,
    pub reference: ImageRef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// Resolved through the build-index when the job runs.
    Tag(Tag),
    Digest(Digest),
}

impl Image {
    /// Parses `repo:tag`, `repo@sha256:…` or a bare `repo` (tag `latest`).
    pub fn parse(text: &str) -> Result<Image, String> {
        let (name, reference) = match text.split_once('@') {
            Some((name, digest)) => (
                name,
                ImageRef::Digest(Digest::parse(digest).map_err(|e| e.to_string())?),
            ),
            None => {
                // A tag follows the last ':' only when no '/' comes after it (`host:port/repo`
                // is not a tag, though Shoal names carry no host anyway).
                let (name, tag) = match text.rsplit_once(':') {
                    Some((name, tag)) if !tag.contains('/') => (name, tag),
                    _ => (text, "latest"),
                };
                (
                    name,
                    ImageRef::Tag(Tag::parse(tag).map_err(|e| e.to_string())?),
                )
            }
        };
        let name = Name::parse(name).map_err(|e| e.to_string())?;
        Ok(Image { name, reference })
    }
}

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            ImageRef::Tag(tag) => write!(f, "{}:{tag}", self.name),
            ImageRef::Digest(digest) => write!(f, "{}@{digest}", self.name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
}

/// What started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Webhook,
    Api,
}

/// A job's progress, as `GET /preheat/{id}` returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub id: String,
    pub image: String,
    pub source: Source,
    pub state: State,
    /// The top manifest, once known (a tag is resolved by the job).
    pub manifest: Option<String>,
    /// Blobs, manifests included, that every owning origin holds with metainfo.
    pub blobs_done: usize,
    /// Blobs the image references, manifests included; 0 until its manifests are read.
    pub blobs_total: usize,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A queued job and the progress record its worker updates.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub image: Image,
    pub progress: Arc<Mutex<Progress>>,
}

impl Job {
    /// Applies `change` to the job's progress record.
    pub fn update(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut self.progress.lock().expect("progress lock poisoned"));
    }
}

/// Every job still queued or running, and the most recent finished ones.
#[derive(Debug)]
pub struct JobTable {
    /// Ids are `<start time>-<sequence>`, so a restarted proxy never reuses one.
    prefix: String,
    next: u64,
    jobs: HashMap<String, Arc<Mutex<Progress>>>,
    order: VecDeque<String>,
    history: usize,
}

impl JobTable {
    /// Remembers at most `history` finished jobs.
    pub fn new(history: usize) -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            prefix: format!("{started:x}"),
            next: 1,
            jobs: HashMap::new(),
            order: VecDeque::new(),
            history,
        }
    }

    /// Creates a queued job for `image`.
    pub fn create(&mut self, image: Image, source: Source) -> Job {
        let id = format!("{}-{}", self.prefix, self.next);
        self.next += 1;
        let progress = Arc::new(Mutex::new(Progress {
            id: id.clone(),
            image: image.to_string(),
            source,
            state: State::Queued,
            manifest: match &image.reference {
                ImageRef::Digest(digest) => Some(digest.to_string()),
                ImageRef::Tag(_) => None,
            },
            blobs_done: 0,
            blobs_total: 0,
            attempts: 0,
            last_error: None,
        }));
        self.jobs.insert(id.clone(), progress.clone());
        self.order.push_back(id.clone());
        self.forget_old();
        Job {
            id,
            image,
            progress,
        }
    }

    /// Drops a job that never made it into the queue.
    pub fn remove(&mut self, id: &str) {
        self.jobs.remove(id);
        self.order.retain(|other| other != id);
    }

    pub fn get(&self, id: &str) -> Option<Progress> {
        let progress = self.jobs.get(id)?;
        Some(progress.lock().expect("progress lock poisoned").clone())
    }

    /// Forgets the oldest finished jobs beyond `history`. Unfinished jobs are bounded by the
    /// queue and the workers, so they are always kept.
    fn forget_old(&mut self) {
        let finished = |progress: &Arc<Mutex<Progress>>| {
            matches!(
                progress.lock().expect("progress lock poisoned").state,
                State::Succeeded | State::Failed
            )
        };
        let mut finished_count = self.jobs.values().filter(|p| finished(p)).count();
        while finished_count > self.history {
            let Some(position) = self.order.iter().position(|id| finished(&self.jobs[id])) else {
                return;
            };
            let id = self.order.remove(position).expect("position is in range");
            self.jobs.remove(&id);
            finished_count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_parse() {
        let digest = format!("sha256:{}", "1".repeat(64));
        let by_digest = Image::parse(&format!("team/app@{digest}")).unwrap();
        assert_eq!(by_digest.name.as_str(), "team/app");
        assert_eq!(
            by_digest.reference,
            ImageRef::Digest(Digest::parse(&digest).unwrap())
        );
        let by_tag = Image::parse("team/app:v1.2").unwrap();
        assert_eq!(by_tag.reference, ImageRef::Tag(Tag::parse("v1.2").unwrap()));
        assert_eq!(by_tag.to_string(), "team/app:v1.2");
        let bare = Image::parse("team/app").unwrap();
        assert_eq!(bare.to_string(), "team/app:latest");
        for bad in [
            "",
            "UPPER:v1",
            "team/app@sha256:00",
            "team/app:bad tag",
            "a/../b:v1",
        ] {
            assert!(Image::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn finished_jobs_beyond_the_history_are_forgotten_oldest_first() {
        let mut table = JobTable::new(2);
        let image = Image::parse("a/b:v1").unwrap();
        let jobs: Vec<Job> = (0..4)
            .map(|_| table.create(image.clone(), Source::Api))
            .collect();
        assert_ne!(jobs[0].id, jobs[1].id);
        // The first job stays running; the others finish.
        for job in &jobs[1..] {
            job.update(|p| p.state = State::Succeeded);
        }
        let newest = table.create(image, Source::Webhook);
        assert!(table.get(&jobs[0].id).is_some(), "unfinished jobs are kept");
        assert!(
            table.get(&jobs[1].id).is_none(),
            "the oldest finished job is gone"
        );
        assert!(table.get(&jobs[2].id).is_some());
        assert!(table.get(&jobs[3].id).is_some());
        assert_eq!(table.get(&newest.id).unwrap().state, State::Queued);
    }
}
