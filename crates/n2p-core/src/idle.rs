//! When a connection to a peer has been idle long enough to close.
//!
//! A node may use many peers, but keeps a connection only to those it is using: a
//! [`crate::daemon::DaemonDialer`] connects on its first stream, and
//! [`crate::daemon::DaemonDialer::close_when_idle`] closes the connection once no stream has
//! been open and none opened for [`PEER_IDLE_CLOSE`]; the next stream connects again. A
//! mesh node's peer sockets and the cache facade's store connections both work this way, so
//! an idle node's connections do not grow with the team.

use std::time::{Duration, Instant};

/// How long a connection to a peer may go without any stream in flight before it is closed.
/// `n2p mesh join --peer-idle-close-ms` (hidden; for tests) overrides it.
pub const PEER_IDLE_CLOSE: Duration = Duration::from_secs(60);

/// How often a dialer looks at whether its connection has gone idle: a tenth of the idle
/// period, within these bounds.
pub(crate) fn idle_check_every(idle: Duration) -> Duration {
    (idle / 10).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// Watches one dialer's use and says when its connection has been idle for the whole
/// period: once per idle stretch, counted from the last look that saw it busy (a stream in
/// flight, or one opened since the look before) or from the start.
#[derive(Debug)]
pub(crate) struct IdleClock {
    after: Duration,
    /// Since when nothing has been in flight; `None` after the stretch was reported.
    idle_since: Option<Instant>,
}

impl IdleClock {
    /// A clock that reports an idle stretch `after` long, starting at `now`.
    pub(crate) fn new(after: Duration, now: Instant) -> Self {
        Self {
            after,
            idle_since: Some(now),
        }
    }

    /// Notes whether the dialer was busy at `now`; true when the connection should be closed
    /// now (idle for the whole period, not yet reported for this stretch).
    pub(crate) fn observe(&mut self, busy: bool, now: Instant) -> bool {
        if busy {
            // A transfer that ends between two looks counts as ending at the later one.
            self.idle_since = Some(now);
            return false;
        }
        match self.idle_since {
            Some(since) if now.saturating_duration_since(since) >= self.after => {
                self.idle_since = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn idle_for_the_whole_period_closes_once() {
        let t0 = Instant::now();
        let mut clock = IdleClock::new(60 * SEC, t0);
        assert!(!clock.observe(false, t0 + 59 * SEC));
        assert!(clock.observe(false, t0 + 60 * SEC));
        assert!(
            !clock.observe(false, t0 + 120 * SEC),
            "once per idle stretch"
        );
    }

    #[test]
    fn a_transfer_in_flight_restarts_the_period() {
        let t0 = Instant::now();
        let mut clock = IdleClock::new(60 * SEC, t0);
        assert!(!clock.observe(true, t0 + 50 * SEC));
        assert!(!clock.observe(false, t0 + 109 * SEC));
        assert!(clock.observe(false, t0 + 110 * SEC));
        // Used again after the close: a new stretch, reported again.
        assert!(!clock.observe(true, t0 + 200 * SEC));
        assert!(!clock.observe(false, t0 + 259 * SEC));
        assert!(clock.observe(false, t0 + 260 * SEC));
    }

    #[test]
    fn checks_are_a_tenth_of_the_period_within_bounds() {
        assert_eq!(idle_check_every(60 * SEC), 5 * SEC);
        assert_eq!(idle_check_every(10 * SEC), SEC);
        assert_eq!(
            idle_check_every(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }
}
