//! Single-flight for pull-through: while one request copies a blob from the backend, later
//! requests for the same digest wait for that copy instead of starting their own, then read
//! the stored blob. The backend sees one fetch per blob however many pullers arrive at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_core::Digest;
use tokio::sync::watch;

/// How a pull-through ended, as the waiting requests learn it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The blob is in the store.
    Stored,
    /// The backend does not have it.
    Missing,
    /// The copy failed (backend error, corrupt bytes); nothing was stored.
    Failed(String),
}

type Slot = watch::Receiver<Option<Outcome>>;

/// The pull-throughs in progress, by digest.
#[derive(Debug, Default)]
pub(crate) struct Flights(Arc<Mutex<HashMap<Digest, Slot>>>);

/// Either this request fetches the blob, or it waits for the request that already does.
pub(crate) enum Turn {
    Lead(Lead),
    Wait(Slot),
}

impl Flights {
    pub(crate) fn join(&self, digest: Digest) -> Turn {
        let mut flights = shoal_core::lock(&self.0);
        if let Some(slot) = flights.get(&digest) {
            return Turn::Wait(slot.clone());
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(digest, rx);
        Turn::Lead(Lead {
            flights: self.0.clone(),
            digest,
            tx: Some(tx),
        })
    }
}

/// The fetching request's duty to tell the waiters how it ended. Dropped unfinished (an error
/// returned early, a panicked task), it reports a failure so that nobody waits forever.
pub(crate) struct Lead {
    flights: Arc<Mutex<HashMap<Digest, Slot>>>,
    digest: Digest,
    tx: Option<watch::Sender<Option<Outcome>>>,
}

impl Lead {
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.report(outcome);
    }

    fn report(&mut self, outcome: Outcome) {
        // Removed first: a request arriving after this finds the blob in the store (or starts
        // a fresh attempt after a failure) rather than a finished flight.
        shoal_core::lock(&self.flights).remove(&self.digest);
        if let Some(tx) = self.tx.take() {
            // Nobody waiting is fine.
            let _ = tx.send(Some(outcome));
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if self.tx.is_some() {
            let digest = self.digest;
            self.report(Outcome::Failed(format!(
                "the pull-through of {digest} this request waited for was abandoned"
            )));
        }
    }
}

/// Waits for the leading request's outcome.
pub(crate) async fn wait(mut slot: Slot) -> Outcome {
    match slot.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Outcome::Missing),
        Err(_) => Outcome::Failed("the pull-through this request waited for vanished".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn later_requests_wait_for_the_first_and_learn_its_outcome() {
        let flights = Flights::default();
        let digest = Digest::of(b"blob");
        let Turn::Lead(lead) = flights.join(digest) else {
            panic!("the first request leads");
        };
        let waiters: Vec<Slot> = (0..3)
            .map(|_| match flights.join(digest) {
                Turn::Wait(slot) => slot,
                Turn::Lead(_) => panic!("a second fetch started"),
            })
            .collect();
        lead.finish(Outcome::Stored);
        for slot in waiters {
            assert_eq!(wait(slot).await, Outcome::Stored);
        }
        // Finished flights are forgotten: the next miss fetches again.
        assert!(matches!(flights.join(digest), Turn::Lead(_)));
    }

    #[tokio::test]
    async fn an_abandoned_lead_fails_its_waiters() {
        let flights = Flights::default();
        let digest = Digest::of(b"blob");
        let lead = flights.join(digest);
        let Turn::Wait(slot) = flights.join(digest) else {
            panic!("second request waits");
        };
        drop(lead);
        assert!(matches!(wait(slot).await, Outcome::Failed(_)));
        assert!(matches!(flights.join(digest), Turn::Lead(_)));
    }
}
