//! Preheat jobs: what each asks for (the [`Marker`] the queue keeps until the job is over), its
//! progress as `GET /preheat/{id}` reports it, and the bounded table that remembers them. Every
//! change to a job's progress is written to its own file in the [`JobStore`], which stays as
//! history once the marker is gone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shoal_core::{Digest, Name, Tag};

use super::store::JobStore;

/// The image a job preheats; its text form (`repo:tag`, `repo@digest`) on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
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

impl TryFrom<String> for Image {
    type Error = String;

    fn try_from(text: String) -> Result<Image, String> {
        Image::parse(&text)
    }
}

impl From<Image> for String {
    fn from(image: Image) -> String {
        image.to_string()
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
}

/// What started a job.
impl State {
    pub fn is_finished(self) -> bool {
        matches!(self, State::Succeeded | State::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Webhook,
    Api,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Webhook => "webhook",
            Source::Api => "POST /preheat",
        })
    }
}

/// A job's progress, as `GET /preheat/{id}` returns it and its file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub id: String,
    /// When the job was created, in milliseconds since the Unix epoch.
    pub created: u64,
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
    /// The agents phase, once the job reached it with `preheat.agents` configured.
    #[serde(default)]
    pub agents: Option<AgentsProgress>,
}

impl Progress {
    /// A queued job for `image`.
    pub fn new(id: String, image: &Image, source: Source) -> Progress {
        Progress {
            id,
            created: now_ms(),
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
            agents: None,
        }
    }
}

/// Which agents fetch the image and how far they got (addresses as configured or resolved).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentsProgress {
    /// Chosen once per job, so that retries (and a restarted proxy) ask the same agents.
    pub selected: Vec<String>,
    /// Agents that answered that they hold every blob.
    pub done: Vec<String>,
    /// Agents whose last request failed; retried with the job.
    pub failed: Vec<String>,
    pub last_error: Option<String>,
}

/// The sequence number of a job id (`<prefix>-<sequence>`).
fn sequence(id: &str) -> Option<u64> {
    id.rsplit_once('-')?.1.parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A job on the queue, as its marker holds it until the job succeeds or fails for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub id: String,
    pub image: Image,
    pub source: Source,
}

/// A job and the progress record its attempts update.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub image: Image,
    pub progress: Arc<Mutex<Progress>>,
    /// Blobs every owner holds, not asked for again by later attempts of the job.
    pub preheated: Arc<Mutex<HashSet<Digest>>>,
    store: Arc<JobStore>,
}

impl Job {
    /// Applies `change` to the job's progress record and writes it to the job's file.
    pub fn update(&self, change: impl FnOnce(&mut Progress)) {
        self.update_in_memory(change);
        self.save();
    }

    /// Writes the job's file. On failure the job goes on without it: it is then lost only if
    /// the proxy restarts.
    fn save(&self) {
        if let Err(error) = self.store.save(&self.snapshot()) {
            tracing::warn!(job = %self.id, %error, "writing the preheat job file failed");
        }
    }

    /// Applies `change` without writing the file, for counts that the next [`Job::update`]
    /// writes anyway (a blob done, one of many per attempt).
    pub fn update_in_memory(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut self.progress.lock().expect("progress lock poisoned"));
    }

    pub fn snapshot(&self) -> Progress {
        self.progress
            .lock()
            .expect("progress lock poisoned")
            .clone()
    }

    pub fn marker(&self) -> Marker {
        Marker {
            id: self.id.clone(),
            image: self.image.clone(),
            source: self.snapshot().source,
        }
    }

    fn is_finished(&self) -> bool {
        self.progress
            .lock()
            .expect("progress lock poisoned")
            .state
            .is_finished()
    }
}

/// Every job still queued or running, and the most recent finished ones.
#[derive(Debug)]
pub struct JobTable {
    /// Ids are `<start time in ms>-<sequence>`, so a restarted proxy never reuses one.
    prefix: String,
    next: u64,
    jobs: HashMap<String, Job>,
    /// Oldest first.
    order: VecDeque<String>,
    history: usize,
    store: Arc<JobStore>,
}

impl JobTable {
    /// Remembers at most `history` finished jobs, with their files in `store`.
    pub fn new(history: usize, store: Arc<JobStore>) -> Self {
        Self {
            prefix: format!("{:x}", now_ms()),
            next: 1,
            jobs: HashMap::new(),
            order: VecDeque::new(),
            history,
            store,
        }
    }

    /// Creates a queued job for `image` and writes its file.
    pub fn create(&mut self, image: Image, source: Source) -> Job {
        let id = format!("{}-{}", self.prefix, self.next);
        self.next += 1;
        let job = self.insert(Progress::new(id, &image, source), image);
        job.save();
        self.forget_old();
        job
    }

    /// Takes back jobs read from their files, oldest first; returns those to run again.
    /// Unfinished ones are queued again (a resumed job gets a fresh set of attempts), finished
    /// ones are kept for `GET` up to the history. A file whose image no longer parses is
    /// dropped.
    pub fn restore(&mut self, mut loaded: Vec<Progress>) -> Vec<Job> {
        loaded.sort_by_key(|progress| (progress.created, sequence(&progress.id).unwrap_or(0)));
        let mut unfinished = Vec::new();
        for mut progress in loaded {
            // A restart within the same millisecond would otherwise hand out these ids again.
            if let Some((prefix, number)) = progress.id.rsplit_once('-')
                && prefix == self.prefix
                && let Ok(number) = number.parse::<u64>()
            {
                self.next = self.next.max(number + 1);
            }
            let image = match Image::parse(&progress.image) {
                Ok(image) => image,
                Err(reason) => {
                    tracing::warn!(job = %progress.id, image = %progress.image, %reason, "dropping a preheat job whose image does not parse");
                    self.store.remove(&progress.id);
                    continue;
                }
            };
            let resume = !progress.state.is_finished();
            if resume {
                progress.state = State::Queued;
            }
            let job = self.insert(progress, image);
            if resume {
                job.save();
                unfinished.push(job);
            }
        }
        self.forget_old();
        unfinished
    }

    fn insert(&mut self, progress: Progress, image: Image) -> Job {
        let id = progress.id.clone();
        let job = Job {
            id: id.clone(),
            image,
            progress: Arc::new(Mutex::new(progress)),
            preheated: Arc::default(),
            store: self.store.clone(),
        };
        self.jobs.insert(id.clone(), job.clone());
        self.order.push_back(id);
        job
    }

    /// Jobs from `source` not finished yet (queued, running or waiting for a retry).
    pub fn unfinished(&self, source: Source) -> usize {
        self.jobs
            .values()
            .filter(|job| {
                let progress = job.progress.lock().expect("progress lock poisoned");
                progress.source == source && !progress.state.is_finished()
            })
            .count()
    }

    /// The job a queue marker names; a marker without a record (its file was lost) gets a
    /// fresh queued one.
    pub fn job(&mut self, marker: &Marker) -> Job {
        if let Some(job) = self.jobs.get(&marker.id) {
            return job.clone();
        }
        let progress = Progress::new(marker.id.clone(), &marker.image, marker.source);
        let job = self.insert(progress, marker.image.clone());
        job.save();
        job
    }

    /// Drops a job (and its file) that never made it into the queue.
    pub fn remove(&mut self, id: &str) {
        self.jobs.remove(id);
        self.order.retain(|other| other != id);
        self.store.remove(id);
    }

    pub fn get(&self, id: &str) -> Option<Progress> {
        Some(self.jobs.get(id)?.snapshot())
    }

    /// Forgets the oldest finished jobs beyond `history`, files included. Unfinished jobs are
    /// bounded by the queue and the workers, so they are always kept.
    fn forget_old(&mut self) {
        let mut finished_count = self.jobs.values().filter(|job| job.is_finished()).count();
        while finished_count > self.history {
            let Some(position) = self.order.iter().position(|id| self.jobs[id].is_finished())
            else {
                return;
            };
            let id = self.order.remove(position).expect("position is in range");
            self.jobs.remove(&id);
            self.store.remove(&id);
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

    fn store() -> (tempfile::TempDir, Arc<JobStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(JobStore::open(dir.path()).unwrap());
        (dir, store)
    }

    #[test]
    fn finished_jobs_beyond_the_history_are_forgotten_oldest_first() {
        let (_dir, store) = store();
        let mut table = JobTable::new(2, store.clone());
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
        let mut on_disk: Vec<String> = store.load().unwrap().into_iter().map(|p| p.id).collect();
        on_disk.sort();
        let mut kept = vec![
            jobs[0].id.clone(),
            jobs[2].id.clone(),
            jobs[3].id.clone(),
            newest.id.clone(),
        ];
        kept.sort();
        assert_eq!(on_disk, kept, "the forgotten job's file is deleted");
    }

    #[test]
    fn restored_jobs_resume_unfinished_and_keep_the_newest_finished() {
        let (_dir, store) = store();
        let image = Image::parse("a/b:v1").unwrap();
        let ids: Vec<String> = {
            let mut before = JobTable::new(10, store.clone());
            let jobs: Vec<Job> = (0..4)
                .map(|_| before.create(image.clone(), Source::Api))
                .collect();
            jobs[0].update(|p| p.state = State::Running);
            for job in &jobs[1..3] {
                job.update(|p| p.state = State::Failed);
            }
            jobs.iter().map(|j| j.id.clone()).collect()
        };
        let mut after = JobTable::new(1, store.clone());
        let mut loaded = store.load().unwrap();
        loaded.reverse();
        let resumed = after.restore(loaded);
        let resumed: Vec<&str> = resumed.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(resumed, [ids[0].as_str(), ids[3].as_str()], "oldest first");
        assert_eq!(after.get(&ids[0]).unwrap().state, State::Queued);
        assert!(after.get(&ids[1]).is_none(), "beyond the history");
        assert_eq!(after.get(&ids[2]).unwrap().state, State::Failed);
        assert_eq!(store.load().unwrap().len(), 3, "the forgotten file is gone");
        let new = after.create(image, Source::Webhook);
        assert!(!ids.contains(&new.id), "a new id after a restart");
    }
}
