//! One durable job queue for every background job that must survive a crash: a blob's
//! write-back, a tag replicated to another cluster, a preheat.
//!
//! A [`Job`] names its kind's payload, the key that identifies one job (a marker file per key),
//! and how to run it. [`Queue::enqueue`] writes the marker durably before it returns, so a caller
//! that answers afterwards never acknowledges work a crash could lose; [`Queue::open`] queues
//! every marker found on disk again. [`Queue::run`] runs due jobs a few at a time, retries
//! failures under one [`RetryPolicy`] (doubling delays with jitter, from `backon`) and removes a
//! job's marker once it succeeded or failed for good. [`StatsCollector`] puts a queue's
//! [`Stats`] on a metrics page under one naming pattern.

mod durable;
mod error;
mod metrics;
mod policy;
mod queue;

pub use durable::{IoContext, IoError, TEMP_SUFFIX, TempPath, fsync_dir, temp_name, write_atomic};
pub use error::{BoxError, Failure, JobsError};
pub use metrics::{StatsCollector, StatsNames};
pub use policy::RetryPolicy;
pub use queue::{Job, Queue, Stats};
