//! Which network path the connections to each peer use now, for `n2p status`: an endpoint
//! hook notes every connection (weakly: it keeps none alive), and [`PathWatch::path_to`] reads
//! the path QUIC currently sends application data on, and its round-trip time.
//!
//! A connection starts on the relay and moves to a direct path once hole punching succeeds;
//! iroh may keep both open, so what counts is the *selected* path, not the open ones.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh::{
    EndpointId,
    endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks, WeakConnectionHandle},
};

use crate::status::{ConnectionCounts, PeerPath};

/// The connections of this endpoint by peer; a clone shares them.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathWatch {
    conns: Arc<Mutex<HashMap<EndpointId, Vec<WeakConnectionHandle>>>>,
}

impl EndpointHooks for PathWatch {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        if let Ok(mut conns) = self.conns.lock() {
            // Forget connections that are gone, so the map holds live peers only.
            conns.retain(|_, handles| {
                handles.retain(|h| h.upgrade().is_some_and(|c| c.close_reason().is_none()));
                !handles.is_empty()
            });
            conns
                .entry(conn.remote_id())
                .or_default()
                .push(conn.weak_handle());
        }
        AfterHandshakeOutcome::accept()
    }
}

impl PathWatch {
    /// The open gossip connections, each with its peer.
    fn gossip(&self) -> Vec<Connection> {
        let Ok(conns) = self.conns.lock() else {
            return Vec::new();
        };
        conns
            .values()
            .flatten()
            .filter_map(WeakConnectionHandle::upgrade)
            .filter(|c| c.close_reason().is_none() && c.alpn() == iroh_gossip::net::GOSSIP_ALPN)
            .collect()
    }

    /// The peers this endpoint has an open gossip connection with.
    pub(crate) fn gossip_peers(&self) -> Vec<EndpointId> {
        let mut peers: Vec<EndpointId> = self.gossip().iter().map(|c| c.remote_id()).collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// Closes every open gossip connection with `peer` (gossip sees it closed and dials
    /// again when it needs the peer).
    pub(crate) fn close_gossip(&self, peer: &EndpointId) {
        for conn in self.gossip().iter().filter(|c| c.remote_id() == *peer) {
            conn.close(0u32.into(), b"not a gossip neighbour");
        }
    }

    /// Whether any connection with `peer`, of any protocol, is still open: after gossip
    /// lost it as a neighbour, it is then alive (gossip reshuffled its neighbours); a crashed
    /// peer's connections have all timed out.
    pub(crate) fn connected(&self, peer: &EndpointId) -> bool {
        let Ok(conns) = self.conns.lock() else {
            return false;
        };
        conns.get(peer).is_some_and(|handles| {
            handles
                .iter()
                .filter_map(WeakConnectionHandle::upgrade)
                .any(|c| c.close_reason().is_none())
        })
    }

    /// The connections open now, by protocol.
    pub(crate) fn counts(&self) -> ConnectionCounts {
        let mut counts = ConnectionCounts::default();
        let Ok(conns) = self.conns.lock() else {
            return counts;
        };
        let live = conns
            .values()
            .flatten()
            .filter_map(WeakConnectionHandle::upgrade)
            .filter(|c| c.close_reason().is_none());
        for conn in live {
            match conn.alpn() {
                iroh_gossip::net::GOSSIP_ALPN => counts.gossip += 1,
                n2p_core::daemon::DAEMON_ALPN => counts.daemon += 1,
                _ => counts.other += 1,
            }
        }
        counts
    }

    /// How traffic to `peer` goes now, and that path's round-trip time: direct if a live
    /// connection to it sends on a direct path, else relay if one sends through a relay,
    /// else none.
    pub(crate) fn path_to(&self, peer: &EndpointId) -> (PeerPath, Option<Duration>) {
        let live: Vec<Connection> = match self.conns.lock() {
            Ok(conns) => conns
                .get(peer)
                .into_iter()
                .flatten()
                .filter_map(WeakConnectionHandle::upgrade)
                .filter(|c| c.close_reason().is_none())
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut best = (PeerPath::None, None);
        for conn in &live {
            let paths = conn.paths();
            let Some(selected) = paths.iter().find(|p| p.is_selected()) else {
                continue;
            };
            let kind = if selected.is_relay() {
                PeerPath::Relay
            } else {
                PeerPath::Direct
            };
            let better = match (best.0, kind) {
                (PeerPath::None, _) | (PeerPath::Relay, PeerPath::Direct) => true,
                // Of two paths of one kind, the lower round-trip time.
                (a, b) if a == b => best.1.is_none_or(|rtt| selected.rtt() < rtt),
                _ => false,
            };
            if better {
                best = (kind, Some(selected.rtt()));
            }
        }
        best
    }
}
