//! Reports this node disputes: another node reported a peer unreachable, but this node
//! holds newer news of it than the report. The report may still be true (the reporter
//! missed the peer's latest announcement, and in a large team those are tens of seconds
//! apart), so the node checks the peer itself, but not at once and not many at a time:
//!
//! - A live peer that reads a report about itself announces itself again at once, so the
//!   node first waits for that refutation ([`REFUTATION_WAIT`], grown by the node's local
//!   health: [`super::health`]). Only a peer that stays silent is dialled.
//! - At most [`MAX_DISPUTE_CHECKS`] disputed reports are checked at once; the others wait their
//!   turn. On an overloaded machine every report of a live peer used to set off a dial
//!   from each node that disputed it, and the dials that missed their bound made the next
//!   reports (docs/BENCHMARKS.md, "A cascade of unreachable reports").

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use iroh::EndpointId;

/// How long a healthy node waits for a reported peer to announce itself before it checks
/// the peer. The report reaches the peer and the peer's answer comes back through gossip,
/// a few hops each way, and the peer waits 50 ms before announcing: a few hundred
/// milliseconds across continents. A wait too short costs only a dial.
pub(super) const REFUTATION_WAIT: Duration = Duration::from_secs(1);

/// The most disputed reports checked at once.
pub(super) const MAX_DISPUTE_CHECKS: usize = 4;

/// A disputed report waiting for the peer's refutation.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// The seq I held from the peer when the report came.
    held: u64,
    /// When to check the peer if nothing newer came from it.
    due: Instant,
}

/// The disputed reports a node waits on or checks ([module docs](self)).
#[derive(Debug, Default)]
pub(super) struct Disputes {
    waiting: BTreeMap<EndpointId, Waiting>,
    checking: BTreeSet<EndpointId>,
}

impl Disputes {
    /// Notes a report of `peer` disputed because I hold seq `held` of it, to be checked at
    /// `due` unless the peer announces itself first. A peer being checked is not checked
    /// again, and one already waited on keeps its turn and its seq: if the peer announced
    /// itself since, the wait ends there, and a report that came during it goes unchecked
    /// here. That is one check per peer per wait at most; a variant of this change that let
    /// such reports start new waits (with other differences) damped the cascade less
    /// (docs/BENCHMARKS.md, "A cascade of unreachable reports, damped"). The reporter, and
    /// every node that holds no newer news, still drops a peer that is really gone.
    pub(super) fn note(&mut self, peer: EndpointId, held: u64, due: Instant) {
        if !self.checking.contains(&peer) {
            self.waiting.entry(peer).or_insert(Waiting { held, due });
        }
    }

    /// The peers to check now: those whose wait is over and of which nothing newer than the
    /// seq held then came (`seq_of` gives the seq held now, `None` once the peer is gone
    /// here), the longest waiting first, as many as [`MAX_DISPUTE_CHECKS`] allows beside the checks
    /// still running. Peers that announced themselves or are gone are forgotten. Each peer
    /// returned counts as checked until [`Self::ended`].
    pub(super) fn due(
        &mut self,
        now: Instant,
        seq_of: impl Fn(&EndpointId) -> Option<u64>,
    ) -> Vec<EndpointId> {
        self.waiting
            .retain(|peer, waiting| seq_of(peer) == Some(waiting.held));
        let mut ready: Vec<(Instant, EndpointId)> = self
            .waiting
            .iter()
            .filter(|(_, waiting)| waiting.due <= now)
            .map(|(peer, waiting)| (waiting.due, *peer))
            .collect();
        ready.sort();
        ready.truncate(MAX_DISPUTE_CHECKS.saturating_sub(self.checking.len()));
        let peers: Vec<EndpointId> = ready.into_iter().map(|(_, peer)| peer).collect();
        for peer in &peers {
            self.waiting.remove(peer);
            self.checking.insert(*peer);
        }
        peers
    }

    /// The check of `peer` ended (or never started).
    pub(super) fn ended(&mut self, peer: &EndpointId) {
        self.checking.remove(peer);
    }

    /// How many reports wait or are checked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.len() + self.checking.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::node::test_ids as ids;

    #[test]
    fn a_peer_that_announces_itself_during_the_wait_is_not_checked() {
        let start = Instant::now();
        let wait = REFUTATION_WAIT;
        let peers = ids(3);
        let mut held: BTreeMap<EndpointId, u64> = peers.iter().map(|p| (*p, 10)).collect();
        let mut disputes = Disputes::default();
        for peer in &peers {
            disputes.note(*peer, 10, start + wait);
        }
        assert!(
            disputes
                .due(start + wait / 2, |p| held.get(p).copied())
                .is_empty(),
            "nothing before the wait is over"
        );
        // peers[0] refuted the report; peers[1] left (or was dropped) meanwhile.
        held.insert(peers[0], 11);
        held.remove(&peers[1]);
        let due = disputes.due(start + wait, |p| held.get(p).copied());
        assert_eq!(due, vec![peers[2]], "only the silent peer is checked");
        assert_eq!(disputes.len(), 1, "the others are forgotten");
        // A second report of a peer being checked does not queue a second check.
        disputes.note(peers[2], 10, start + wait);
        assert_eq!(disputes.len(), 1);
        disputes.ended(&peers[2]);
        assert_eq!(disputes.len(), 0);
    }

    #[test]
    fn a_report_during_a_wait_does_not_start_a_new_one() {
        let start = Instant::now();
        let peer = ids(1)[0];
        let mut disputes = Disputes::default();
        disputes.note(peer, 10, start + REFUTATION_WAIT);
        // The peer announced itself (seq 11); before the next tick, a report made before
        // that announcement reached the reporter comes in, disputed with seq 11.
        let second = start + REFUTATION_WAIT / 2;
        disputes.note(peer, 11, second + REFUTATION_WAIT);
        let held = |_: &EndpointId| Some(11);
        assert!(
            disputes.due(start + REFUTATION_WAIT, held).is_empty(),
            "the peer answered the wait"
        );
        assert!(
            disputes.due(second + REFUTATION_WAIT, held).is_empty(),
            "the second report started no wait of its own"
        );
        assert_eq!(disputes.len(), 0);
    }

    #[test]
    fn at_most_max_checks_run_at_once_the_longest_waiting_first() {
        let start = Instant::now();
        let peers = ids(10);
        let held = |_: &EndpointId| Some(7);
        let mut disputes = Disputes::default();
        // Later peers were reported earlier.
        for (i, peer) in peers.iter().enumerate() {
            disputes.note(*peer, 7, start - Duration::from_millis(i as u64));
        }
        let first = disputes.due(start, held);
        assert_eq!(first.len(), MAX_DISPUTE_CHECKS);
        let longest: Vec<EndpointId> = peers
            .iter()
            .rev()
            .take(MAX_DISPUTE_CHECKS)
            .copied()
            .collect();
        assert_eq!(
            first.iter().collect::<BTreeSet<_>>(),
            longest.iter().collect::<BTreeSet<_>>()
        );
        assert!(disputes.due(start, held).is_empty(), "all slots are taken");
        disputes.ended(&first[0]);
        let next = disputes.due(start, held);
        assert_eq!(
            next,
            vec![peers[10 - MAX_DISPUTE_CHECKS - 1]],
            "one slot freed, the next in line"
        );
        // A repeated report keeps the peer's place instead of moving it back.
        disputes.note(peers[0], 7, start + Duration::from_secs(60));
        for peer in first.iter().skip(1).chain(&next) {
            disputes.ended(peer);
        }
        let rest = disputes.due(start, held);
        assert_eq!(rest.len(), MAX_DISPUTE_CHECKS);
        assert!(
            !rest.contains(&peers[0]),
            "peers[0] waits behind those reported before it"
        );
        for peer in &rest {
            disputes.ended(peer);
        }
        assert_eq!(disputes.due(start, held), vec![peers[0]]);
    }
}
