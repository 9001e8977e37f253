//! Which network path the connections to each peer use now, for `n2p status`: an endpoint
//! hook notes every connection (weakly: it keeps none alive), and [`PathWatch::path_to`] reads
//! the path QUIC currently sends application data on, and its round-trip time.
//!
//! A connection starts on the relay and moves to a direct path once hole punching succeeds;
//! iroh may keep both open, so what counts is the *selected* path, not the open ones.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use iroh::{
    EndpointId,
    endpoint::{
        AfterHandshakeOutcome, Connection, ConnectionError, EndpointHooks, WeakConnectionHandle,
    },
};

use crate::status::{ConnectionCounts, PeerPath};

/// How long the way a peer's last connection ended is remembered.
const CLOSE_MEMORY: Duration = Duration::from_secs(60);

/// How a connection ended, as far as telling a crash from a live peer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Nothing came from the peer for the idle timeout: it crashed, or the path to it broke.
    Silent,
    /// Closed on purpose, by the peer or by this node (gossip reshuffling its neighbours, an
    /// idle connection closed), or reset by a restarted peer: the peer was there to the end.
    Closed,
}

impl Ending {
    fn of(reason: &ConnectionError) -> Self {
        match reason {
            ConnectionError::TimedOut => Self::Silent,
            _ => Self::Closed,
        }
    }
}

/// The connections of this endpoint by peer, and how each peer's last one ended; a clone
/// shares them.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathWatch {
    conns: Arc<Mutex<HashMap<EndpointId, Vec<WeakConnectionHandle>>>>,
    endings: Arc<Mutex<HashMap<EndpointId, (Instant, Ending)>>>,
}

impl EndpointHooks for PathWatch {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        if conn.alpn() == super::sweep::CHECK_ALPN {
            // Carries nothing and is closed on purpose at once: it says nothing about the
            // peer's other connections, and must not count as one.
            return AfterHandshakeOutcome::accept();
        }
        let peer = conn.remote_id();
        if let Ok(mut conns) = self.conns.lock() {
            // Forget connections that are gone, so the map holds live peers only.
            conns.retain(|_, handles| {
                handles.retain(|h| h.upgrade().is_some_and(|c| c.close_reason().is_none()));
                !handles.is_empty()
            });
            conns.entry(peer).or_default().push(conn.weak_handle());
        }
        // Does not keep the connection alive: it resolves when the last handle goes too.
        let closed = conn.weak_handle().closed();
        let endings = self.endings.clone();
        tokio::spawn(async move {
            if let Some(closed) = closed.await
                && let Ok(mut endings) = endings.lock()
            {
                let now = Instant::now();
                endings.retain(|_, (at, _)| now.saturating_duration_since(*at) < CLOSE_MEMORY);
                endings.insert(peer, (now, Ending::of(&closed.reason)));
            }
        });
        AfterHandshakeOutcome::accept()
    }
}

/// Whether `conn` is an open gossip connection.
fn is_open_gossip(conn: &Connection) -> bool {
    conn.close_reason().is_none() && conn.alpn() == iroh_gossip::net::GOSSIP_ALPN
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
            .filter(is_open_gossip)
            .collect()
    }

    /// The newest open gossip connection with `peer`.
    pub(crate) fn latest_gossip(&self, peer: &EndpointId) -> Option<Connection> {
        let conns = self.conns.lock().ok()?;
        conns
            .get(peer)?
            .iter()
            .rev()
            .filter_map(WeakConnectionHandle::upgrade)
            .find(is_open_gossip)
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

    /// How the last connection with `peer` that ended after `since` ended, if one did.
    pub(crate) fn ending_since(&self, peer: &EndpointId, since: Instant) -> Option<Ending> {
        let endings = self.endings.lock().ok()?;
        endings
            .get(peer)
            .filter(|(at, _)| *at >= since)
            .map(|(_, ending)| *ending)
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

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;

    #[test]
    fn only_a_timeout_counts_as_silent() {
        assert_eq!(Ending::of(&ConnectionError::TimedOut), Ending::Silent);
        assert_eq!(Ending::of(&ConnectionError::LocallyClosed), Ending::Closed);
        assert_eq!(Ending::of(&ConnectionError::Reset), Ending::Closed);
    }

    #[test]
    fn an_ending_before_the_asked_moment_is_not_reported() {
        let watch = PathWatch::default();
        let peer = SecretKey::from_bytes(&[3; 32]).public();
        let before = Instant::now();
        watch
            .endings
            .lock()
            .expect("not poisoned")
            .insert(peer, (before, Ending::Silent));
        assert_eq!(watch.ending_since(&peer, before), Some(Ending::Silent));
        let later = before + Duration::from_millis(1);
        assert_eq!(watch.ending_since(&peer, later), None);
        let other = SecretKey::from_bytes(&[4; 32]).public();
        assert_eq!(watch.ending_since(&other, before), None);
    }
}
