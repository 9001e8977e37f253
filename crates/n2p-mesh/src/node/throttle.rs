//! Refuses gossip connections from a peer that opens them far faster than any healthy use.
//!
//! iroh-gossip 0.101 can loop between two peers without pause (`hyparview.rs`): a node whose
//! active view has a free slot asks a peer from its passive view to become a neighbour at
//! low priority; a peer with a full active view refuses with a `ShuffleReply` and a
//! `Disconnect`, and the `ShuffleReply` makes the asker refill its active view at once, from
//! the same passive view. When every peer in it is full, which a small team can reach after
//! a start, this goes on for as long as the views stay so, each round on a new QUIC
//! connection. Seen after 4 of 101 8-node starts on loopback (docs/BENCHMARKS.md, "A
//! neighbour-request loop in iroh-gossip"): the asker at 85 % of a core and 250 MB, four
//! peers at 20 % each, 500–2200 gossip connections open per node.
//!
//! A peer that opened [`MAX_CONNECTIONS`] gossip connections to this node within
//! [`WINDOW`] has further ones closed before gossip sees them, until its rate falls
//! below that. Gossip on the asking side then sees the connection lost, which (unlike a
//! refusal) does not make it ask again, and the loop stops. Healthy gossip stays far below
//! the rate: no refusal was logged in 100-node starts, nor in the 8-node starts without a
//! loop.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use iroh::{
    EndpointId,
    endpoint::Connection,
    protocol::{AcceptError, ProtocolHandler},
};
use iroh_gossip::net::Gossip;
use tracing::{debug, info};

/// The span over which a peer's gossip connections are counted.
pub(super) const WINDOW: Duration = Duration::from_secs(10);

/// The most gossip connections one peer may open within [`WINDOW`].
pub(super) const MAX_CONNECTIONS: usize = 10;

/// Above this many peers remembered, those with no connection within [`WINDOW`] are
/// forgotten.
const PRUNE_ABOVE: usize = 256;

/// The QUIC application error code of a refused connection.
const REFUSED: u32 = 429;

/// Per peer, when its recent gossip connections were admitted.
#[derive(Debug, Default)]
pub(super) struct ConnectionRate {
    recent: HashMap<EndpointId, Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    admitted: VecDeque<Instant>,
    /// Whether the last connection was refused (to log once per burst).
    refusing: bool,
}

/// What [`ConnectionRate::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Within the rate.
    Admitted,
    /// Over it: the first refusal since the peer was last admitted.
    RefusedFirst,
    /// Over it, again.
    Refused,
}

impl ConnectionRate {
    /// Counts a connection from `peer` at `now` if fewer than [`MAX_CONNECTIONS`] of its
    /// connections were admitted within the [`WINDOW`] before; refused ones do not count.
    pub(super) fn admit(&mut self, peer: EndpointId, now: Instant) -> Admission {
        if self.recent.len() > PRUNE_ABOVE {
            self.recent.retain(|_, r| {
                r.admitted
                    .back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < WINDOW)
            });
        }
        let recent = self.recent.entry(peer).or_default();
        while recent
            .admitted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            recent.admitted.pop_front();
        }
        if recent.admitted.len() < MAX_CONNECTIONS {
            recent.admitted.push_back(now);
            recent.refusing = false;
            Admission::Admitted
        } else if recent.refusing {
            Admission::Refused
        } else {
            recent.refusing = true;
            Admission::RefusedFirst
        }
    }
}

/// The gossip protocol behind a [`ConnectionRate`] per peer.
#[derive(Debug)]
pub(super) struct GossipThrottle {
    gossip: Gossip,
    rate: Mutex<ConnectionRate>,
}

impl GossipThrottle {
    /// Hands `gossip` the connections of peers within the rate.
    pub(super) fn new(gossip: Gossip) -> Self {
        Self {
            gossip,
            rate: Mutex::default(),
        }
    }
}

impl ProtocolHandler for GossipThrottle {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let peer = connection.remote_id();
        let admission = self
            .rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(peer, Instant::now());
        match admission {
            Admission::Admitted => return self.gossip.accept(connection).await,
            Admission::RefusedFirst => info!(
                target: "n2p",
                peer = %peer.fmt_short(),
                "peer opened {MAX_CONNECTIONS} gossip connections within {WINDOW:?}; refusing more until it slows down (an iroh-gossip neighbour-request loop)"
            ),
            Admission::Refused => {
                debug!(peer = %peer.fmt_short(), "gossip connection refused: over the rate")
            }
        }
        connection.close(REFUSED.into(), b"too many gossip connections");
        Ok(())
    }

    async fn shutdown(&self) {
        ProtocolHandler::shutdown(&self.gossip).await;
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
    fn a_peer_over_the_rate_is_refused_until_its_oldest_connection_leaves_the_window() {
        let mut rate = ConnectionRate::default();
        let (a, b) = (id(1), id(2));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        for i in 0..MAX_CONNECTIONS {
            let at = t0 + ms(5) * u32::try_from(i).expect("small");
            assert_eq!(rate.admit(a, at), Admission::Admitted, "connection {i}");
        }
        let last = t0 + ms(5) * u32::try_from(MAX_CONNECTIONS - 1).expect("small");
        assert_eq!(rate.admit(a, last), Admission::RefusedFirst);
        assert_eq!(rate.admit(a, last + ms(1)), Admission::Refused);
        // Refusals do not count, and another peer has its own count.
        assert_eq!(rate.admit(b, last), Admission::Admitted);
        assert_eq!(
            rate.admit(a, t0 + WINDOW - ms(1)),
            Admission::Refused,
            "the first is still within the window"
        );
        assert_eq!(rate.admit(a, t0 + WINDOW), Admission::Admitted);
        assert_eq!(rate.admit(a, t0 + WINDOW), Admission::RefusedFirst);
        // A peer that slowed down is admitted at every connection.
        let later = t0 + WINDOW * 3;
        for i in 0..(MAX_CONNECTIONS * 3) {
            let at = later
                + WINDOW / u32::try_from(MAX_CONNECTIONS).expect("small")
                    * u32::try_from(i).expect("small");
            assert_eq!(
                rate.admit(a, at),
                Admission::Admitted,
                "slow connection {i}"
            );
        }
    }

    #[test]
    fn peers_not_seen_within_the_window_are_forgotten() {
        let mut rate = ConnectionRate::default();
        let t0 = Instant::now();
        let many = |n: u16| {
            let mut bytes = [0u8; 32];
            bytes[..2].copy_from_slice(&n.to_le_bytes());
            SecretKey::from_bytes(&bytes).public()
        };
        let count = u16::try_from(PRUNE_ABOVE).expect("small") + 10;
        for n in 0..count {
            rate.admit(many(n), t0);
        }
        assert_eq!(rate.recent.len(), usize::from(count));
        rate.admit(many(0), t0 + WINDOW);
        assert_eq!(rate.recent.len(), 1, "only the one just admitted");
    }
}
