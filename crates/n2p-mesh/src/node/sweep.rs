//! The routine check: every [`SWEEP_EVERY`], one live peer that is not a gossip neighbour,
//! chosen at random, is checked like a lost neighbour (`Actor::probe`): a peer with an open
//! connection is there; otherwise it is dialed, and one that answers neither that dial nor
//! a second is reported unreachable.
//!
//! A crash is otherwise noticed only by the crashed node's gossip neighbours, whose
//! connections to it time out. A node that had none when it died (iroh-gossip can leave a
//! node without neighbours for a while) was noticed by nobody, and every peer dropped it
//! only when it expired, a minute later (seen in 100-node rounds: docs/BENCHMARKS.md, "A
//! node cut off from gossip"). With every node checking one random peer per round, a dead
//! node goes unchecked in a round with a chance of about `(1 - 1/n)^n`, about 0.37, however
//! large the team (the failure detector of SWIM), and each node pays one dial per round at
//! most.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use iroh::EndpointId;

/// How often a node checks one peer. At 100 nodes on one machine that is 20 dials a second
/// in all; a dead node is checked by someone within about 1.6 rounds on average.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// When the next routine check is due.
#[derive(Debug)]
pub(super) struct Sweep {
    next: Instant,
}

impl Sweep {
    /// The first check comes one round after `now`, plus up to a round at random, so that
    /// nodes started together do not check in lockstep.
    pub(super) fn new(now: Instant) -> Self {
        let jitter = SWEEP_EVERY.mul_f64(rand::random_range(0.0..1.0));
        Self {
            next: now + SWEEP_EVERY + jitter,
        }
    }

    /// The peer to check now, if a check is due: one of `live` at random that is neither
    /// one of `neighbours` (gossip watches those) nor being checked (`probing`). While other
    /// checks run (a crash being looked into), the round is skipped.
    pub(super) fn due(
        &mut self,
        live: &BTreeSet<EndpointId>,
        neighbours: &BTreeSet<EndpointId>,
        probing: &BTreeSet<EndpointId>,
        now: Instant,
    ) -> Option<EndpointId> {
        if now < self.next {
            return None;
        }
        self.next = now + SWEEP_EVERY;
        if !probing.is_empty() {
            return None;
        }
        let candidates: Vec<&EndpointId> = live.difference(neighbours).collect();
        if candidates.is_empty() {
            return None;
        }
        Some(*candidates[rand::random_range(0..candidates.len())])
    }
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;

    fn ids(n: u8) -> Vec<EndpointId> {
        (1..=n)
            .map(|i| SecretKey::from_bytes(&[i; 32]).public())
            .collect()
    }

    #[test]
    fn one_peer_outside_the_neighbours_is_checked_once_a_round() {
        let start = Instant::now();
        let mut sweep = Sweep::new(start);
        let peers = ids(6);
        let live: BTreeSet<EndpointId> = peers.iter().copied().collect();
        let neighbours: BTreeSet<EndpointId> = peers[..4].iter().copied().collect();
        let none = BTreeSet::new();
        assert_eq!(sweep.due(&live, &neighbours, &none, start), None, "not yet");
        let mut at = start + 2 * SWEEP_EVERY;
        let mut seen = BTreeSet::new();
        for _ in 0..64 {
            let peer = sweep
                .due(&live, &neighbours, &none, at)
                .expect("a round is due");
            assert!(!neighbours.contains(&peer), "a neighbour was checked");
            seen.insert(peer);
            assert_eq!(
                sweep.due(&live, &neighbours, &none, at + SWEEP_EVERY / 2),
                None,
                "two checks in one round"
            );
            at += SWEEP_EVERY;
        }
        assert_eq!(seen.len(), 2, "both non-neighbours are checked over time");
    }

    #[test]
    fn a_round_is_skipped_while_a_check_runs_or_when_all_are_neighbours() {
        let start = Instant::now();
        let mut sweep = Sweep::new(start);
        let peers = ids(3);
        let live: BTreeSet<EndpointId> = peers.iter().copied().collect();
        let probing: BTreeSet<EndpointId> = peers[..1].iter().copied().collect();
        let none = BTreeSet::new();
        let at = start + 2 * SWEEP_EVERY;
        assert_eq!(sweep.due(&live, &none, &probing, at), None);
        assert_eq!(
            sweep.due(&live, &live, &none, at + SWEEP_EVERY),
            None,
            "every live peer is a neighbour"
        );
        assert!(
            sweep
                .due(&live, &none, &none, at + 2 * SWEEP_EVERY)
                .is_some()
        );
    }
}
