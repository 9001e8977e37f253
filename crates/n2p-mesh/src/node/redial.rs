//! When to dial listed team members that are neither live peers nor gossip neighbours.
//!
//! iroh-gossip dials a peer only while it has nothing queued for it, and a failed dial to a
//! peer outside its active view leaves the queued message behind (iroh-gossip 0.101,
//! `net.rs`: `PeerState::Pending` is removed only on `DisconnectPeer`, which hyparview does
//! not emit for such a peer). From then on it never dials that peer again; only a
//! connection from the other side, or one handed to [`iroh_gossip::net::Gossip::handle_connection`],
//! clears it. A member our gate refused (not yet in our team file), or one that was offline,
//! is then cut off from us until it dials us. So the node dials absent members itself, with
//! backoff, and hands the connections to gossip: a partition heals and a member added by a
//! reload is reached, whatever gossip remembers.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use iroh::EndpointId;

/// The first wait before an absent member is dialed, and the first backoff.
pub(super) const FIRST_REDIAL: Duration = Duration::from_secs(2);

/// The longest wait between two dials of the same absent member.
pub(super) const MAX_REDIAL: Duration = Duration::from_secs(60);

/// Per absent member: when it is due next, and the wait after that.
#[derive(Debug, Default)]
pub(super) struct Redial {
    due: BTreeMap<EndpointId, (Instant, Duration)>,
}

impl Redial {
    /// Of the members absent at `now`, those to dial now. A member seen absent for the
    /// first time is due [`FIRST_REDIAL`] later (the node has just dialed it, or gossip is
    /// still doing so); each dial doubles its wait, up to [`MAX_REDIAL`]. Members no longer
    /// absent are forgotten, so their next absence starts again from the shortest wait.
    pub(super) fn due(
        &mut self,
        absent: impl IntoIterator<Item = EndpointId>,
        now: Instant,
    ) -> Vec<EndpointId> {
        let absent: BTreeSet<EndpointId> = absent.into_iter().collect();
        self.due.retain(|id, _| absent.contains(id));
        let mut dial = Vec::new();
        for id in absent {
            let (at, wait) = self
                .due
                .entry(id)
                .or_insert((now + FIRST_REDIAL, FIRST_REDIAL));
            if now >= *at {
                dial.push(id);
                *wait = (*wait * 2).min(MAX_REDIAL);
                *at = now + *wait;
            }
        }
        dial
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
    fn an_absent_member_is_dialed_with_doubling_waits_up_to_the_cap() {
        let mut redial = Redial::default();
        let t0 = Instant::now();
        let a = id(1);
        assert!(redial.due([a], t0).is_empty(), "not at once");
        assert!(redial.due([a], t0 + Duration::from_millis(1999)).is_empty());
        let mut at = t0 + FIRST_REDIAL;
        let mut dials = Vec::new();
        for _ in 0..8 {
            assert_eq!(redial.due([a], at), vec![a]);
            assert!(redial.due([a], at).is_empty(), "once per due time");
            let (next, _) = redial.due[&a];
            dials.push(next - at);
            at = next;
        }
        let secs: Vec<u64> = dials.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn a_member_that_came_back_starts_again_from_the_first_wait() {
        let mut redial = Redial::default();
        let t0 = Instant::now();
        let (a, b) = (id(1), id(2));
        redial.due([a, b], t0);
        let mut both = redial.due([a, b], t0 + FIRST_REDIAL);
        both.sort();
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(both, expected);
        // a is back (live or a neighbour); b is still away.
        let t1 = t0 + Duration::from_secs(5);
        assert!(redial.due([b], t1).is_empty());
        assert_eq!(redial.due([b], t0 + FIRST_REDIAL * 3), vec![b]);
        // a goes away again: a fresh first wait, not the doubled one.
        let t2 = t0 + Duration::from_secs(100);
        assert!(redial.due([a], t2).is_empty());
        assert_eq!(redial.due([a], t2 + FIRST_REDIAL), vec![a]);
    }
}
