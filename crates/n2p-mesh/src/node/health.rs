//! How well this node itself keeps up, and how long its checks of peers wait because of it:
//! the local health of Lifeguard (HashiCorp's memberlist). A node that cannot tell "no answer
//! within 2 s" from a crash reports live peers when it is the slow one, and on an
//! overloaded machine those reports made the nodes that dispute them dial more, which
//! overloaded it further (docs/BENCHMARKS.md, "A cascade of unreachable reports").
//!
//! The score counts recent signs that the node is slow: a check of a peer that got no
//! answer, a tick of the node's loop that came late, a report of itself as unreachable. Each adds one,
//! up to [`MAX_SCORE`]; an answered check takes one off, and so does every [`RECOVERY`]
//! without a change. Every check's wait is its base times one more than the score: 2 s on a
//! healthy node, up to 18 s on one that keeps missing.
//!
//! A late tick is the loop being behind, whether the runtime did not get to it or the loop
//! itself waited on its own work (a bounded gossip call, a rejoin): under load those waits
//! are the symptom, and on a healthy node one costs a point for 10 s. A variant that
//! measured only the runtime's own lag, with a task apart from the loop (and other
//! differences), damped the cascade far less (docs/BENCHMARKS.md, "A cascade of unreachable
//! reports, damped").
//!
//! Without the nacks of memberlist's indirect probes, a check of a peer that is really gone
//! counts as a sign too: a node that sees several peers die at once waits longer for the
//! next (2 s more per peer, for 10 s each). A variant of this change that counted only
//! dials that timed out (with other differences, below and in [`super::dispute`]) damped
//! the cascade less (docs/BENCHMARKS.md, "A cascade of unreachable reports, damped").

use std::time::{Duration, Instant};

/// The highest score: checks then wait nine times their base.
pub(super) const MAX_SCORE: u32 = 8;

/// A point of the score goes after this long without a new sign of trouble.
pub(super) const RECOVERY: Duration = Duration::from_secs(10);

/// A tick of the node's loop (every 250 ms) later than this after the one before means the
/// node is behind: the machine is overloaded, or the process was stopped.
pub(super) const LATE_TICK: Duration = Duration::from_secs(1);

/// A sign that this node is slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sign {
    /// A check of a peer got no answer.
    MissedCheck,
    /// A tick of the node's loop came more than [`LATE_TICK`] after the one before.
    LateTick,
    /// Another node reported this one unreachable.
    ReportedMe,
}

impl std::fmt::Display for Sign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sign::MissedCheck => "a check of a peer got no answer in time",
            Sign::LateTick => "its own loop ran late",
            Sign::ReportedMe => "a peer reported it unreachable",
        })
    }
}

/// A change of the node's health worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// The score left zero.
    Strained(Sign),
    /// The score is back to zero.
    Recovered,
}

/// The node's local health score ([module docs](self)). Reading it ([`Self::score`],
/// [`Self::wait`]) changes nothing; the points [`RECOVERY`] took off are kept by the calls
/// that take `&mut self`.
#[derive(Debug)]
pub(super) struct LocalHealth {
    score: u32,
    /// When the score last changed, or last lost a point to [`RECOVERY`].
    since: Instant,
    /// When [`Self::tick`] was last called.
    last_tick: Instant,
}

/// What a tick of the node's loop found ([`LocalHealth::tick`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tick {
    /// The tick came more than [`LATE_TICK`] after the one before.
    pub(super) late: bool,
    /// How the health changed.
    pub(super) change: Option<Change>,
}

impl LocalHealth {
    /// A healthy node.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            score: 0,
            since: now,
            last_tick: now,
        }
    }

    /// The score and its `since` at `now`, after the points [`RECOVERY`] took off.
    fn decayed(&self, now: Instant) -> (u32, Instant) {
        let steps = now.saturating_duration_since(self.since).as_millis() / RECOVERY.as_millis();
        let steps = u32::try_from(steps).unwrap_or(u32::MAX).min(self.score);
        (self.score - steps, self.since + RECOVERY * steps)
    }

    /// Keeps the points [`RECOVERY`] took off by `now`; returns the score.
    fn settle(&mut self, now: Instant) -> u32 {
        (self.score, self.since) = self.decayed(now);
        self.score
    }

    /// The score at `now`.
    pub(super) fn score(&self, now: Instant) -> u32 {
        self.decayed(now).0
    }

    /// How long a check with a `base` wait waits at `now`: `base` times one more than the
    /// score.
    pub(super) fn wait(&self, base: Duration, now: Instant) -> Duration {
        base * (1 + self.score(now))
    }

    /// Notes a sign of trouble.
    pub(super) fn worse(&mut self, sign: Sign, now: Instant) -> Option<Change> {
        let was = self.settle(now);
        self.score = (was + 1).min(MAX_SCORE);
        self.since = self.since.max(now);
        (was == 0).then_some(Change::Strained(sign))
    }

    /// Notes a check of a peer that was answered. Like a sign, it restarts the count to the
    /// next point [`RECOVERY`] takes off.
    pub(super) fn better(&mut self, now: Instant) -> Option<Change> {
        let was = self.settle(now);
        self.score = was.saturating_sub(1);
        self.since = self.since.max(now);
        (was == 1).then_some(Change::Recovered)
    }

    /// Called on every tick of the node's loop: a late one is a sign of trouble; otherwise
    /// says whether the score went back to zero by itself since the last call.
    pub(super) fn tick(&mut self, now: Instant) -> Tick {
        let late = now.saturating_duration_since(self.last_tick) > LATE_TICK;
        self.last_tick = self.last_tick.max(now);
        let change = if late {
            self.worse(Sign::LateTick, now)
        } else {
            let was = self.score;
            (was > 0 && self.settle(now) == 0).then_some(Change::Recovered)
        };
        Tick { late, change }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(2);

    #[test]
    fn a_healthy_node_waits_the_base_and_a_strained_one_longer_up_to_nine_times() {
        let start = Instant::now();
        let mut health = LocalHealth::new(start);
        assert_eq!(health.wait(BASE, start), BASE);
        assert_eq!(
            health.worse(Sign::MissedCheck, start),
            Some(Change::Strained(Sign::MissedCheck)),
            "leaving zero is a change"
        );
        assert_eq!(health.wait(BASE, start), 2 * BASE);
        assert_eq!(
            health.worse(Sign::ReportedMe, start),
            None,
            "already strained"
        );
        assert_eq!(health.wait(BASE, start), 3 * BASE);
        for _ in 0..20 {
            health.worse(Sign::MissedCheck, start);
        }
        assert_eq!(health.score(start), MAX_SCORE);
        assert_eq!(health.wait(BASE, start), 9 * BASE, "capped");
    }

    #[test]
    fn answered_checks_and_quiet_time_bring_the_score_back() {
        let start = Instant::now();
        let mut health = LocalHealth::new(start);
        for _ in 0..3 {
            health.worse(Sign::MissedCheck, start);
        }
        assert_eq!(health.better(start), None);
        assert_eq!(health.score(start), 2);
        // One point per RECOVERY without a change, counted from the last one.
        let later = start + RECOVERY + Duration::from_millis(10);
        assert_eq!(health.score(later), 1);
        assert_eq!(health.better(later), Some(Change::Recovered));
        assert_eq!(health.better(later), None, "never below zero");
        // A sign restarts the count.
        let again = later + RECOVERY;
        health.worse(Sign::MissedCheck, again);
        health.worse(Sign::MissedCheck, again + RECOVERY / 2);
        assert_eq!(
            health.score(again + RECOVERY),
            2,
            "the second sign was half a period ago"
        );
        assert_eq!(health.score(again + RECOVERY / 2 + 2 * RECOVERY), 0);
    }

    #[test]
    fn reading_the_score_changes_nothing_and_a_sign_from_the_past_takes_nothing_off() {
        let start = Instant::now();
        let mut health = LocalHealth::new(start);
        health.worse(Sign::MissedCheck, start);
        health.worse(Sign::MissedCheck, start);
        let later = start + 3 * RECOVERY;
        assert_eq!(health.score(later), 0);
        assert_eq!(health.wait(BASE, later), BASE);
        // The reads kept nothing: the tick that comes next still sees the recovery (the
        // loop ticked on time meanwhile).
        health.last_tick = later - Duration::from_millis(250);
        assert_eq!(health.tick(later).change, Some(Change::Recovered));
        assert_eq!(health.tick(later).change, None, "once");
        // A sign dated before the last change (a report relayed late) counts from now on.
        health.worse(Sign::MissedCheck, later);
        health.worse(Sign::ReportedMe, later - 2 * RECOVERY);
        assert_eq!(health.score(later), 2);
        assert_eq!(health.score(later + RECOVERY), 1);
    }

    #[test]
    fn a_late_tick_strains_and_quiet_ticks_tell_when_it_recovered() {
        let start = Instant::now();
        let mut health = LocalHealth::new(start);
        let tick = Duration::from_millis(250);
        let mut at = start;
        for _ in 0..8 {
            at += tick;
            let seen = health.tick(at);
            assert_eq!(
                seen,
                Tick {
                    late: false,
                    change: None
                },
                "ticks on time"
            );
        }
        at += LATE_TICK + tick;
        assert_eq!(
            health.tick(at),
            Tick {
                late: true,
                change: Some(Change::Strained(Sign::LateTick))
            }
        );
        assert_eq!(health.score(at), 1);
        let mut changes = Vec::new();
        let strained_at = at;
        while at < strained_at + 2 * RECOVERY {
            at += tick;
            let seen = health.tick(at);
            assert!(!seen.late);
            changes.extend(seen.change.map(|c| (c, at)));
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].0, Change::Recovered);
        assert!(
            changes[0].1 >= strained_at + RECOVERY && changes[0].1 < strained_at + RECOVERY + tick
        );
    }
}
