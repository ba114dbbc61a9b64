//! Members (origins, trackers) a client found failing lately: asked after the others until
//! they answer again or a window passes, so that only the first request meeting a failed member
//! pays for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lock;

/// When each member last failed, forgotten once it answers or `window` passes.
#[derive(Debug)]
pub struct Suspects {
    window: Duration,
    since: Mutex<HashMap<String, Instant>>,
}

impl Suspects {
    pub fn new(window: Duration) -> Suspects {
        Suspects {
            window,
            since: Mutex::default(),
        }
    }

    /// Records what a request to `member` showed at `now`: it failed (suspected from now on),
    /// or it answered (no longer suspected).
    pub fn record(&self, member: &str, failed: bool, now: Instant) {
        let mut since = lock(&self.since);
        if failed {
            since.insert(member.to_owned(), now);
        } else if !since.is_empty() {
            since.remove(member);
        }
    }

    /// Whether `member` failed within the window before `now`; an older failure is forgotten.
    pub fn suspected(&self, member: &str, now: Instant) -> bool {
        let mut since = lock(&self.since);
        match since.get(member) {
            Some(&at) if now.saturating_duration_since(at) < self.window => true,
            Some(_) => {
                since.remove(member);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_member_is_suspected_until_it_answers_or_the_window_passes() {
        let window = Duration::from_secs(30);
        let suspects = Suspects::new(window);
        let now = Instant::now();
        assert!(!suspects.suspected("a", now));
        suspects.record("a", true, now);
        assert!(suspects.suspected("a", now + window - Duration::from_millis(1)));
        assert!(!suspects.suspected("b", now));
        assert!(!suspects.suspected("a", now + window));
        // Forgotten: an earlier instant no longer finds it.
        assert!(!suspects.suspected("a", now));
        suspects.record("a", true, now);
        suspects.record("a", false, now);
        assert!(!suspects.suspected("a", now));
    }
}
