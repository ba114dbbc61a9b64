//! Everything an RPC can fail with, and the one place that maps it to a gRPC status.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::limits::Limited;
use crate::metainfo::LookupError;
use crate::peers::StoreError;

/// gRPC's server pushback trailer (gRFC A6): milliseconds the client should wait before trying
/// again. The message says it too, for people reading logs.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// A request field that does not parse; the peer must fix its request.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// Over an announce-rate limit; the peer should wait `retry_after`.
    #[error(
        "too many requests from this {}; retry in {} ms",
        .0.by.as_str(),
        retry_ms(.0)
    )]
    RateLimited(Limited),
    #[error(transparent)]
    Metainfo(#[from] LookupError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TrackerError {
    pub fn invalid(field: &'static str, reason: impl ToString) -> Self {
        TrackerError::InvalidArgument {
            field,
            reason: reason.to_string(),
        }
    }
}

impl From<TrackerError> for Status {
    fn from(error: TrackerError) -> Status {
        let code = match &error {
            TrackerError::InvalidArgument { .. } => Code::InvalidArgument,
            TrackerError::Metainfo(LookupError::NotFound(_)) => Code::NotFound,
            TrackerError::Metainfo(LookupError::Unavailable { .. }) | TrackerError::Store(_) => {
                Code::Unavailable
            }
            TrackerError::RateLimited(limited) => {
                let mut status = Status::resource_exhausted(error.to_string());
                status
                    .metadata_mut()
                    .insert(RETRY_PUSHBACK, MetadataValue::from(retry_ms(limited)));
                return status;
            }
        };
        Status::new(code, error.to_string())
    }
}

/// The wait in whole milliseconds, rounded up so that retrying on time succeeds.
fn retry_ms(limited: &Limited) -> u64 {
    let nanos = limited.retry_after.as_nanos().div_ceil(1_000_000);
    u64::try_from(nanos).unwrap_or(u64::MAX).max(1)
}
