//! Everything an RPC can fail with, and the one place that maps it to a gRPC status.

use tonic::{Code, Status};

use crate::metainfo::LookupError;
use crate::peers::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// A request field that does not parse; the peer must fix its request.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
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
        };
        Status::new(code, error.to_string())
    }
}
