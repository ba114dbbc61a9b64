//! An announce's progress, parsed: a piece count within the metainfo limit, a bitfield of exactly
//! that many pieces and in-flight indices below it, so the board never stores what it cannot
//! draw.

use std::num::NonZeroU32;

use shoal_core::{Bitfield, MAX_PIECES};
use shoal_proto::{MAX_IN_FLIGHT, v1};

use crate::error::TrackerError;

/// A downloader's progress on one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub piece_count: NonZeroU32,
    /// `None` when the peer sent no bits (it is complete).
    pub have: Option<Bitfield>,
    pub in_flight: Vec<u32>,
    pub bytes_from_origins: u64,
    pub bytes_from_peers: u64,
}

impl Progress {
    pub fn parse(wire: v1::Progress) -> Result<Progress, TrackerError> {
        let invalid = |field, reason: String| TrackerError::invalid(field, reason);
        let piece_count = NonZeroU32::new(wire.piece_count)
            .filter(|n| u64::from(n.get()) <= MAX_PIECES)
            .ok_or_else(|| {
                invalid(
                    "progress.piece_count",
                    format!("must be 1 to {MAX_PIECES}, got {}", wire.piece_count),
                )
            })?;
        let have = if wire.have.is_empty() {
            None
        } else {
            Some(
                Bitfield::from_bytes(piece_count.get(), &wire.have)
                    .map_err(|e| invalid("progress.have", e.to_string()))?,
            )
        };
        if wire.in_flight.len() > MAX_IN_FLIGHT {
            return Err(invalid(
                "progress.in_flight",
                format!(
                    "lists {} pieces, at most {MAX_IN_FLIGHT}",
                    wire.in_flight.len()
                ),
            ));
        }
        if let Some(&bad) = wire.in_flight.iter().find(|&&i| i >= piece_count.get()) {
            return Err(invalid(
                "progress.in_flight",
                format!("piece {bad} is past the last of {piece_count}"),
            ));
        }
        Ok(Progress {
            piece_count,
            have,
            in_flight: wire.in_flight,
            bytes_from_origins: wire.bytes_from_origins,
            bytes_from_peers: wire.bytes_from_peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(piece_count: u32, have: Vec<u8>, in_flight: Vec<u32>) -> v1::Progress {
        v1::Progress {
            piece_count,
            have,
            in_flight,
            bytes_from_origins: 1,
            bytes_from_peers: 2,
        }
    }

    #[test]
    fn progress_must_describe_the_pieces_it_counts() {
        let ok = Progress::parse(wire(10, vec![0xff, 0xc0], vec![9])).expect("valid");
        assert_eq!(ok.have.map(|h| h.count()), Some(10));
        assert!(Progress::parse(wire(4096, vec![], vec![])).is_ok());
        for (bad, field) in [
            (wire(0, vec![], vec![]), "progress.piece_count"),
            (wire(4097, vec![], vec![]), "progress.piece_count"),
            (wire(10, vec![0xff], vec![]), "progress.have"),
            (wire(10, vec![0xff, 0xe0], vec![]), "progress.have"),
            (wire(10, vec![], vec![10]), "progress.in_flight"),
            (wire(10, vec![], vec![0; 257]), "progress.in_flight"),
        ] {
            let error = Progress::parse(bad).expect_err(field).to_string();
            assert!(error.starts_with(field), "{error}");
        }
    }
}
