//! Which gossip connections to close: those to peers that are not gossip neighbours.
//!
//! iroh-gossip keeps a bounded active view (its neighbours) but does not always close the
//! connections it opened to other peers: a peer it only sent a message to (a join, a shuffle
//! reply, a neighbour request that was declined) keeps its connection until one side drops
//! it, and the endpoint's keep-alives never let it time out. Left alone, a node ends up with
//! a connection to nearly every member. So the node closes gossip connections to a peer that
//! has not been a neighbour for [`GOSSIP_LINGER`].
//!
//! Caveat (iroh-gossip 0.101, `net.rs`): when the connection to a peer outside the active
//! view closes, gossip keeps that peer's dead sender and drops (with a warning, "failed to
//! send: connection task send loop terminated") what it later sends to it, until a new
//! connection with the peer arrives from either side. The same happens when such a peer
//! crashes. What heals it is the node's own dials of absent members ([`super::redial`]),
//! which hand gossip a fresh connection before joining through it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use iroh::EndpointId;

/// How long a gossip connection to a peer that is not a neighbour is left open: long enough
/// for a join or a neighbour request under way to be answered.
pub(super) const GOSSIP_LINGER: Duration = Duration::from_secs(10);

/// Per connected non-neighbour: since when it has been one.
#[derive(Debug, Default)]
pub(super) struct Linger {
    since: BTreeMap<EndpointId, Instant>,
}

impl Linger {
    /// Of the peers with a gossip connection at `now`, those whose connections to close: not
    /// a neighbour at any look in the last [`GOSSIP_LINGER`]. A peer that is a neighbour, or
    /// has no connection any more, is forgotten.
    pub(super) fn due(
        &mut self,
        connected: impl IntoIterator<Item = EndpointId>,
        neighbours: &BTreeSet<EndpointId>,
        now: Instant,
    ) -> Vec<EndpointId> {
        let outside: BTreeSet<EndpointId> = connected
            .into_iter()
            .filter(|id| !neighbours.contains(id))
            .collect();
        self.since.retain(|id, _| outside.contains(id));
        let mut close = Vec::new();
        for id in outside {
            let since = *self.since.entry(id).or_insert(now);
            if now.saturating_duration_since(since) >= GOSSIP_LINGER {
                close.push(id);
                self.since.remove(&id);
            }
        }
        close
    }
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;

    fn id(seed: u8) -> EndpointId {
        SecretKey::from_bytes(&[seed; 32]).public()
    }

    #[test]
    fn a_connected_non_neighbour_is_closed_after_the_linger() {
        let mut linger = Linger::default();
        let t0 = Instant::now();
        let (a, b) = (id(1), id(2));
        let neighbours = BTreeSet::from([a]);
        assert!(linger.due([a, b], &neighbours, t0).is_empty());
        assert!(
            linger
                .due([a, b], &neighbours, t0 + GOSSIP_LINGER / 2)
                .is_empty()
        );
        assert_eq!(linger.due([a, b], &neighbours, t0 + GOSSIP_LINGER), vec![b]);
        // Its next connection starts a new linger.
        let t1 = t0 + GOSSIP_LINGER + Duration::from_secs(1);
        assert!(linger.due([a, b], &neighbours, t1).is_empty());
    }

    #[test]
    fn neighbours_are_never_closed_and_a_neighbour_spell_restarts_the_linger() {
        let mut linger = Linger::default();
        let t0 = Instant::now();
        let a = id(1);
        let none = BTreeSet::new();
        let only_a = BTreeSet::from([a]);
        for s in 0..30 {
            assert!(
                linger
                    .due([a], &only_a, t0 + Duration::from_secs(s))
                    .is_empty()
            );
        }
        assert!(
            linger
                .due([a], &none, t0 + Duration::from_secs(30))
                .is_empty()
        );
        assert!(
            linger
                .due([a], &only_a, t0 + Duration::from_secs(35))
                .is_empty()
        );
        assert!(
            linger
                .due([a], &none, t0 + Duration::from_secs(36))
                .is_empty()
        );
        assert!(
            linger
                .due([a], &none, t0 + Duration::from_secs(45))
                .is_empty()
        );
        assert_eq!(
            linger.due([a], &none, t0 + Duration::from_secs(46)),
            vec![a]
        );
    }

    #[test]
    fn a_peer_whose_connection_went_is_forgotten() {
        let mut linger = Linger::default();
        let t0 = Instant::now();
        let a = id(1);
        let none = BTreeSet::new();
        linger.due([a], &none, t0);
        linger.due([], &none, t0 + Duration::from_secs(5));
        assert!(linger.due([a], &none, t0 + GOSSIP_LINGER).is_empty());
    }
}
