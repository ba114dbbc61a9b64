//! What a job attempt and the queue itself can fail with.

use std::fmt;

use crate::durable::IoError;

/// Any error a job attempt reports; the queue only logs it and hands it back to the job.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why one attempt of a job failed.
#[derive(Debug)]
pub enum Failure {
    /// Another attempt may succeed: retried after the policy's next delay.
    Retry(BoxError),
    /// No attempt will: the job is dropped without further attempts.
    Permanent(BoxError),
}

impl Failure {
    pub fn retry(error: impl Into<BoxError>) -> Failure {
        Failure::Retry(error.into())
    }

    pub fn permanent(error: impl Into<BoxError>) -> Failure {
        Failure::Permanent(error.into())
    }

    pub fn error(&self) -> &BoxError {
        match self {
            Failure::Retry(error) | Failure::Permanent(error) => error,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error().fmt(f)
    }
}

/// The queue's own errors: its directory or a marker could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("cannot encode the {job} job {key}: {source}")]
    Encode {
        job: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the {job} job key {key:?} is not a plain file name")]
    BadKey { job: &'static str, key: String },
}
