//! The routine check: every [`SWEEP_EVERY`], one live peer that is not a gossip neighbour,
//! chosen at random, is checked: a peer with an open connection is there; otherwise it is
//! dialed on [`CHECK_ALPN`], whose handler only waits for the dialer to close, and one that
//! lets two dials time out is reported unreachable (`Actor::probe`). A dial that fails
//! otherwise (refused, as by a node too old to know the ALPN) had an answer.
//!
//! A crash is otherwise noticed only by the crashed node's gossip neighbours, whose
//! connections to it time out. A node that had none when it died (iroh-gossip can leave a
//! node without neighbours for a while) was noticed by nobody, and every peer dropped it
//! only when it expired, a minute later (seen in 100-node rounds: docs/BENCHMARKS.md, "A
//! node cut off from gossip"). With every node checking one random peer per round, a dead
//! node goes unchecked in a round with a chance of about `(1 - 1/n)^n`, about 0.37, however
//! large the team (the failure detector of SWIM), and each node makes one check per round
//! at most.
//!
//! The check has an ALPN of its own because a gossip connection opened and closed at once
//! is not free for the checked node's gossip: it takes the checker out of its passive view
//! and keeps a dead sender for it.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use iroh::{
    Endpoint, EndpointId,
    endpoint::{Connection, VarInt},
    protocol::{AcceptError, ProtocolHandler},
};
use tracing::debug;

use super::paths::PathWatch;

/// ALPN of the routine check's connections, which carry nothing.
pub const CHECK_ALPN: &[u8] = b"n2p/mesh/check/1";

/// How often a node checks one peer. At 100 nodes on one machine that is about 20 dials a
/// second in all; a dead node is checked by someone within about 1.6 rounds on average.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Serves [`CHECK_ALPN`]: the handshake (past the team's gate) is the answer; the
/// connection is held until the checker closes it, [`CHECK_HOLD`] at most.
#[derive(Debug, Clone, Copy)]
pub(super) struct CheckService;

impl ProtocolHandler for CheckService {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        tokio::time::timeout(CHECK_HOLD, conn.closed()).await.ok();
        Ok(())
    }
}

/// Longest a checked node holds a check's connection open.
const CHECK_HOLD: Duration = Duration::from_secs(2);

/// Checks `peer`: true if a connection to it is open, else if one of [`CHECK_DIALS`] dials on
/// [`CHECK_ALPN`] gets any answer within `timeout`: a connection (closed at once), or a
/// refusal (a node too old to know the ALPN, say). Only dials that time out count against
/// it: a dial can miss its bound on a loaded machine, and a peer wrongly reported announces
/// itself again, but the whole team hears both.
pub(super) async fn check(
    endpoint: &Endpoint,
    paths: &PathWatch,
    peer: EndpointId,
    timeout: Duration,
) -> bool {
    if paths.connected(&peer) {
        return true;
    }
    for _ in 0..CHECK_DIALS {
        match tokio::time::timeout(timeout, endpoint.connect(peer, CHECK_ALPN)).await {
            Ok(Ok(conn)) => {
                conn.close(CHECKED, b"checked");
                return true;
            }
            Ok(Err(e)) => {
                debug!(peer = %peer.fmt_short(), "a routine check was refused: {e}");
                return true;
            }
            Err(_) => {
                debug!(peer = %peer.fmt_short(), "no answer to a routine check within {timeout:?}")
            }
        }
    }
    false
}

/// How many dials a routine check makes before the peer counts as unreachable.
const CHECK_DIALS: usize = 2;

/// Close code of a routine check's connection, which carried nothing.
const CHECKED: VarInt = VarInt::from_u32(0);

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
    /// one of `neighbours` (gossip watches those) nor being checked (`probing`). Called on
    /// every tick of the node's loop. While other checks run (a crash being looked into)
    /// the check waits for the next tick; after a late tick (`late`:
    /// [`super::health::LATE_TICK`]; the node is behind, and a dial may miss its bound) the
    /// round is skipped.
    pub(super) fn due(
        &mut self,
        live: &BTreeSet<EndpointId>,
        neighbours: &BTreeSet<EndpointId>,
        probing: &BTreeSet<EndpointId>,
        late: bool,
        now: Instant,
    ) -> Option<EndpointId> {
        if now < self.next || !probing.is_empty() {
            return None;
        }
        self.next = now + SWEEP_EVERY;
        if late {
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
    use super::*;
    use crate::node::test_ids as ids;

    /// The node's loop: a tick every 250 ms from `from` to `to`, each asking `sweep`; the
    /// peers it picked.
    fn ticks(
        sweep: &mut Sweep,
        sets: [&BTreeSet<EndpointId>; 3],
        from: Instant,
        to: Instant,
    ) -> Vec<EndpointId> {
        let [live, neighbours, probing] = sets;
        let mut picked = Vec::new();
        let mut at = from;
        while at < to {
            picked.extend(sweep.due(live, neighbours, probing, false, at));
            at += Duration::from_millis(250);
        }
        picked
    }

    #[test]
    fn one_peer_outside_the_neighbours_is_checked_once_a_round() {
        let start = Instant::now();
        let mut sweep = Sweep::new(start);
        let peers = ids(6);
        let live: BTreeSet<EndpointId> = peers.iter().copied().collect();
        let neighbours: BTreeSet<EndpointId> = peers[..4].iter().copied().collect();
        let none = BTreeSet::new();
        let sets = [&live, &neighbours, &none];
        assert!(
            ticks(&mut sweep, sets, start, start + SWEEP_EVERY).is_empty(),
            "nothing in the first round"
        );
        let rounds = 64;
        let picked = ticks(
            &mut sweep,
            sets,
            start + SWEEP_EVERY,
            start + SWEEP_EVERY * (rounds + 2),
        );
        assert!(
            picked.len() as u32 >= rounds && picked.len() as u32 <= rounds + 2,
            "{} checks in {} rounds",
            picked.len(),
            rounds + 1
        );
        assert!(
            picked.iter().all(|p| !neighbours.contains(p)),
            "a neighbour was checked"
        );
        let seen: BTreeSet<_> = picked.into_iter().collect();
        assert_eq!(seen.len(), 2, "both non-neighbours are checked over time");
    }

    #[test]
    fn a_check_waits_for_a_running_one_and_skips_a_round_after_a_late_tick() {
        let start = Instant::now();
        let mut sweep = Sweep::new(start);
        let peers = ids(3);
        let live: BTreeSet<EndpointId> = peers.iter().copied().collect();
        let probing: BTreeSet<EndpointId> = peers[..1].iter().copied().collect();
        let none = BTreeSet::new();
        let due_at = start + 2 * SWEEP_EVERY;
        assert!(
            ticks(&mut sweep, [&live, &none, &probing], start, due_at).is_empty(),
            "waits while a check runs"
        );
        let after = ticks(
            &mut sweep,
            [&live, &none, &none],
            due_at,
            due_at + Duration::from_millis(250),
        );
        assert_eq!(after.len(), 1, "checks at the first tick after it ended");
        assert!(
            ticks(
                &mut sweep,
                [&live, &live, &none],
                due_at,
                due_at + 2 * SWEEP_EVERY
            )
            .is_empty(),
            "every live peer is a neighbour"
        );
        // The loop stalled for 2 s: the round due then is skipped.
        let stalled = due_at + 4 * SWEEP_EVERY;
        assert_eq!(
            sweep.due(&live, &none, &none, true, stalled),
            None,
            "late wake"
        );
        assert_eq!(
            ticks(
                &mut sweep,
                [&live, &none, &none],
                stalled + Duration::from_millis(250),
                stalled + SWEEP_EVERY + Duration::from_millis(250)
            )
            .len(),
            1,
            "the next round checks again"
        );
    }
}
