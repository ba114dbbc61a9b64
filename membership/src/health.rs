//! One member's health as a pure state machine fed probe results, so the thresholds are tested
//! without sockets or clocks.

/// A member's health verdict and the streak of probe results that disagree with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    healthy: bool,
    /// Consecutive probes whose result contradicts `healthy`.
    streak: u32,
}

impl Default for Health {
    /// A member starts healthy: it is in the list because it was configured or resolved, and
    /// treating it as down until a first probe answers would stall every request at start-up.
    fn default() -> Self {
        Health {
            healthy: true,
            streak: 0,
        }
    }
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one probe result; true when the verdict flipped. A healthy member turns
    /// unhealthy after `fall` consecutive failures, an unhealthy one healthy after `rise`
    /// consecutive successes; a result that agrees with the verdict resets the streak.
    pub fn observe(&mut self, ok: bool, fall: u32, rise: u32) -> bool {
        if ok == self.healthy {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.healthy { fall } else { rise };
        if self.streak >= needed {
            self.healthy = ok;
            self.streak = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `results` and returns the verdict after each.
    fn run(fall: u32, rise: u32, results: &[bool]) -> Vec<bool> {
        let mut health = Health::default();
        results
            .iter()
            .map(|&ok| {
                health.observe(ok, fall, rise);
                health.is_healthy()
            })
            .collect()
    }

    #[test]
    fn a_new_member_is_healthy() {
        assert!(Health::default().is_healthy());
    }

    #[test]
    fn fall_consecutive_failures_mark_unhealthy() {
        assert_eq!(run(2, 1, &[false, false]), [true, false]);
        assert_eq!(run(3, 1, &[false, false, false]), [true, true, false]);
        assert_eq!(run(1, 1, &[false]), [false]);
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        assert_eq!(
            run(2, 1, &[false, true, false, true, false, false]),
            [true, true, true, true, true, false]
        );
    }

    #[test]
    fn rise_consecutive_successes_mark_healthy_again() {
        assert_eq!(run(1, 1, &[false, true]), [false, true]);
        assert_eq!(
            run(1, 3, &[false, true, true, false, true, true, true]),
            [false, false, false, false, false, false, true]
        );
    }

    #[test]
    fn observe_reports_only_flips() {
        let mut health = Health::default();
        assert!(!health.observe(true, 2, 1));
        assert!(!health.observe(false, 2, 1));
        assert!(health.observe(false, 2, 1));
        assert!(!health.observe(false, 2, 1));
        assert!(health.observe(true, 2, 1));
    }
}
