//! How well this node itself keeps up, and how long its checks of peers wait because of it:
//! the local health of Lifeguard (HashiCorp's memberlist). A node that cannot tell "no answer
//! within 2 s" from a crash reports live peers when it is the slow one, and on an
//! overloaded machine those reports made the nodes that dispute them dial more, which
//! overloaded it further (docs/BENCHMARKS.md, "A cascade of unreachable reports").
//!
//! The score counts recent signs that the node is slow: a dial of a check that timed out, a
//! wake of the node's runtime that came late ([`LagWatch`]), a report of itself as
//! unreachable. Each adds one, up to [`MAX_SCORE`]; an answered check takes one off, and so
//! does every [`RECOVERY`] without a new sign. Every check's wait is its base times one more
//! than the score: 2 s on a healthy node, up to 18 s on one that keeps missing.
//!
//! Without the nacks of memberlist's indirect probes, a dial that times out because the peer
//! is dead across a network counts as a sign too: a node that sees several peers die at once
//! waits longer for the next. A dial that is refused (a dead node's closed port) does not.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// The highest score: checks then wait nine times their base.
pub(super) const MAX_SCORE: u32 = 8;

/// A point of the score goes after this long without a new sign of trouble.
pub(super) const RECOVERY: Duration = Duration::from_secs(10);

/// How often [`LagWatch`] sleeps.
const LAG_NAP: Duration = Duration::from_millis(250);

/// A nap of [`LagWatch`] that ends more than this after it began means the node's runtime
/// (one thread) did not get to it: the machine is overloaded, or the process was stopped.
pub(super) const LATE_TICK: Duration = Duration::from_secs(1);

/// A sign that this node is slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sign {
    /// A dial of a check of a peer timed out.
    MissedCheck,
    /// The node's runtime woke late ([`LagWatch`]).
    LateTick,
    /// Another node reported this one unreachable.
    ReportedMe,
}

impl std::fmt::Display for Sign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sign::MissedCheck => "a check of a peer got no answer in time",
            Sign::LateTick => "its own runtime ran late",
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
    /// When the last sign came, or the score last lost a point to [`RECOVERY`].
    since: Instant,
}

impl LocalHealth {
    /// A healthy node.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            score: 0,
            since: now,
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

    /// Notes a check of a peer that was answered.
    pub(super) fn better(&mut self, now: Instant) -> Option<Change> {
        let was = self.settle(now);
        self.score = was.saturating_sub(1);
        (was == 1).then_some(Change::Recovered)
    }

    /// Called on every tick of the node's loop with the late wakes [`LagWatch`] saw since
    /// the last tick: any is a sign of trouble; otherwise says whether the score went back
    /// to zero by itself since the last call.
    pub(super) fn tick(&mut self, late_wakes: u32, now: Instant) -> Option<Change> {
        if late_wakes > 0 {
            return self.worse(Sign::LateTick, now);
        }
        let was = self.score;
        (was > 0 && self.settle(now) == 0).then_some(Change::Recovered)
    }
}

/// A task that naps [`LAG_NAP`] at a time and counts the naps that ended more than
/// [`LATE_TICK`] after they began: the node's runtime did not get to run it. Not the
/// actor's loop, which also waits on its own work (a rejoin, a bounded gossip call). Aborted
/// when dropped.
#[derive(Debug)]
pub(super) struct LagWatch {
    late: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl LagWatch {
    /// Starts the watch on the current runtime.
    pub(super) fn spawn() -> Self {
        let late = Arc::new(AtomicU32::new(0));
        let count = late.clone();
        let task = tokio::spawn(async move {
            loop {
                let began = tokio::time::Instant::now();
                tokio::time::sleep(LAG_NAP).await;
                if began.elapsed() > LATE_TICK {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self { late, task }
    }

    /// The late naps since the last call.
    pub(super) fn take(&self) -> u32 {
        self.late.swap(0, Ordering::Relaxed)
    }
}

impl Drop for LagWatch {
    fn drop(&mut self) {
        self.task.abort();
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
        // One point per RECOVERY without a sign, counted from the last sign: an answered
        // check does not restart the count.
        let later = start + RECOVERY + Duration::from_millis(10);
        assert_eq!(health.better(later - RECOVERY / 2), None);
        assert_eq!(health.score(later - RECOVERY / 2), 1);
        assert_eq!(
            health.score(later),
            0,
            "the quiet time since the sign took the last point"
        );
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
        // The reads kept nothing: the tick that comes next still sees the recovery.
        assert_eq!(health.tick(0, later), Some(Change::Recovered));
        assert_eq!(health.tick(0, later), None, "once");
        // A sign dated before the last change (a report relayed late) counts from now on.
        health.worse(Sign::MissedCheck, later);
        health.worse(Sign::ReportedMe, later - 2 * RECOVERY);
        assert_eq!(health.score(later), 2);
        assert_eq!(health.score(later + RECOVERY), 1);
    }

    #[test]
    fn a_late_wake_strains_and_quiet_ticks_tell_when_it_recovered() {
        let start = Instant::now();
        let mut health = LocalHealth::new(start);
        let tick = Duration::from_millis(250);
        let mut at = start;
        for _ in 0..8 {
            at += tick;
            assert_eq!(health.tick(0, at), None, "no late wake");
        }
        assert_eq!(health.tick(1, at), Some(Change::Strained(Sign::LateTick)));
        assert_eq!(health.score(at), 1);
        let mut changes = Vec::new();
        let strained_at = at;
        while at < strained_at + 2 * RECOVERY {
            at += tick;
            changes.extend(health.tick(0, at).map(|c| (c, at)));
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].0, Change::Recovered);
        assert!(
            changes[0].1 >= strained_at + RECOVERY && changes[0].1 < strained_at + RECOVERY + tick
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_lag_watch_counts_a_runtime_held_up_and_not_a_busy_loop_that_yields() {
        let watch = LagWatch::spawn();
        // Work that yields often keeps the runtime running.
        let until = Instant::now() + 2 * LATE_TICK;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(watch.take(), 0, "no late wake while the runtime runs");
        // The one thread blocked, as when the process is stopped or starved.
        std::thread::sleep(LATE_TICK + LAG_NAP);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(watch.take(), 1);
        assert_eq!(watch.take(), 0, "taken");
    }
}
