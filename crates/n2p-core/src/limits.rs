//! Limits on what a peer may hold, for every service behind an ALPN that checks an access
//! proof per stream (the daemon protocol and the store protocol): before a connection
//! has proved access it may have only a few streams waiting ([`ConnectionGate`]) and must
//! prove within a deadline; after, each peer may hold only so many expensive resources
//! (daemon connections) at once ([`PeerSlots`]). Accept loops that fail back off
//! ([`AcceptBackoff`]) instead of spinning.
//!
//! The types decide and count; the service closes, resets and logs. Each one says when a
//! limit is hit for the first time (again after it was clear), so a service logs each limit
//! once when it is hit, not once per refused stream.
//!
//! ```
//! use std::sync::Arc;
//! use n2p_core::limits::{ConnectionGate, Limits};
//!
//! let limits = Limits::default();
//! let gate = Arc::new(ConnectionGate::new(&limits));
//! let permits: Vec<_> = (0..limits.max_unproven_streams)
//!     .map(|_| gate.admit_unproven().expect("room"))
//!     .collect();
//! assert!(gate.admit_unproven().is_err(), "one stream too many before any proof");
//! gate.mark_proven();
//! drop(permits);
//! ```

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use iroh::EndpointId;
use tokio::time::Instant;

/// The limits a service applies to each peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Streams a connection may have waiting for their proof before one has passed.
    pub max_unproven_streams: usize,
    /// How long after it is accepted a connection has to prove access on some stream (and
    /// how long each stream has to send its proof); then it is closed.
    pub proof_deadline: Duration,
    /// Expensive resources (daemon connections) one peer may hold at once, over all its
    /// connections.
    pub max_per_peer: usize,
}

impl Default for Limits {
    /// 4 unproven streams, 5 s to prove, 64 daemon connections per peer (ten parallel
    /// `nix copy` runs use about 20).
    fn default() -> Self {
        Self {
            max_unproven_streams: 4,
            proof_deadline: Duration::from_secs(5),
            max_per_peer: 64,
        }
    }
}

/// A limit was reached; `first` is true for the first refusal of an episode (for a
/// connection: its life; for a peer: until it holds nothing again), which is when the
/// caller logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("limit of {limit} reached")]
pub struct LimitHit {
    /// The limit.
    pub limit: usize,
    /// Whether this is the first refusal since the limit was last clear.
    pub first: bool,
}

/// One connection's state before and after it has proved access.
#[derive(Debug)]
pub struct ConnectionGate {
    max_unproven: usize,
    deadline: Instant,
    proven: AtomicBool,
    unproven: Arc<AtomicUsize>,
    hit: Arc<AtomicBool>,
}

impl ConnectionGate {
    /// A gate for a connection accepted now.
    pub fn new(limits: &Limits) -> Self {
        Self {
            max_unproven: limits.max_unproven_streams,
            deadline: Instant::now() + limits.proof_deadline,
            proven: AtomicBool::new(false),
            unproven: Arc::new(AtomicUsize::new(0)),
            hit: Arc::new(AtomicBool::new(false)),
        }
    }

    /// When the connection must have proved access by.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether a stream on this connection has proved access.
    pub fn is_proven(&self) -> bool {
        self.proven.load(Ordering::SeqCst)
    }

    /// Records that a stream proved access: the connection is no longer held to the
    /// deadline or the cap on unproven streams.
    pub fn mark_proven(&self) {
        self.proven.store(true, Ordering::SeqCst);
    }

    /// Admits one more stream waiting for its proof, or refuses it when the connection has
    /// not proved access and already has the most unproven streams. A proven connection
    /// admits every stream; the permit then counts nothing.
    pub fn admit_unproven(&self) -> Result<UnprovenPermit, LimitHit> {
        if self.is_proven() {
            return Ok(UnprovenPermit(None));
        }
        let taken = self
            .unproven
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_unproven).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(UnprovenPermit(Some(self.unproven.clone()))),
            Err(_) => Err(LimitHit {
                limit: self.max_unproven,
                first: !self.hit.swap(true, Ordering::SeqCst),
            }),
        }
    }
}

/// One stream counted as waiting for its proof; counted off on drop.
#[derive(Debug)]
#[must_use = "the stream counts as unproven only while the permit lives"]
pub struct UnprovenPermit(Option<Arc<AtomicUsize>>);

impl Drop for UnprovenPermit {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// How many resources each peer holds, over all its connections; shared by a service.
#[derive(Debug)]
pub struct PeerSlots {
    max: usize,
    held: Arc<Mutex<HashMap<EndpointId, PeerCount>>>,
}

#[derive(Debug, Default)]
struct PeerCount {
    held: usize,
    hit: bool,
}

impl PeerSlots {
    /// At most `max` slots per peer.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes a slot for `peer`, or refuses when it holds the most already.
    pub fn acquire(&self, peer: EndpointId) -> Result<PeerSlot, LimitHit> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(peer).or_default();
        if count.held >= self.max {
            let first = !count.hit;
            count.hit = true;
            return Err(LimitHit {
                limit: self.max,
                first,
            });
        }
        count.held += 1;
        Ok(PeerSlot {
            peer,
            held: self.held.clone(),
        })
    }

    /// How many slots `peer` holds now.
    pub fn held_by(&self, peer: &EndpointId) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(peer).map_or(0, |c| c.held)
    }
}

/// A slot held by one peer; given back on drop.
#[derive(Debug)]
#[must_use = "the slot is given back when dropped"]
pub struct PeerSlot {
    peer: EndpointId,
    held: Arc<Mutex<HashMap<EndpointId, PeerCount>>>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.peer) {
            count.held = count.held.saturating_sub(1);
            // Clear again only when the peer holds nothing: a peer kept at its limit is
            // reported once, not at every slot that frees and fills.
            if count.held == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

/// Pauses for an accept loop whose `accept` fails (out of descriptors, say): doubling from
/// [`AcceptBackoff::MIN`] to [`AcceptBackoff::MAX`], back to the start after a success.
#[derive(Debug, Clone, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    /// The first pause.
    pub const MIN: Duration = Duration::from_millis(10);
    /// The longest pause.
    pub const MAX: Duration = Duration::from_secs(1);

    /// A backoff with no failures yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a failed accept; returns how long to pause and whether this failure starts
    /// a run of them (the one to log).
    pub fn failed(&mut self) -> (Duration, bool) {
        let first = self.failures == 0;
        let pause = Self::MIN
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        (pause, first)
    }

    /// Records a successful accept: the next failure starts from the shortest pause.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;

    fn id(seed: u8) -> EndpointId {
        SecretKey::from_bytes(&[seed; 32]).public()
    }

    #[tokio::test]
    async fn unproven_streams_are_capped_until_a_proof_and_the_hit_is_reported_once() {
        let limits = Limits {
            max_unproven_streams: 2,
            ..Limits::default()
        };
        let gate = ConnectionGate::new(&limits);
        let a = gate.admit_unproven().expect("first");
        let _b = gate.admit_unproven().expect("second");
        assert_eq!(
            gate.admit_unproven().map(|_| ()),
            Err(LimitHit {
                limit: 2,
                first: true
            })
        );
        assert_eq!(
            gate.admit_unproven().map(|_| ()),
            Err(LimitHit {
                limit: 2,
                first: false
            })
        );
        drop(a);
        let _c = gate.admit_unproven().expect("room again");
        assert!(matches!(
            gate.admit_unproven(),
            Err(LimitHit { first: false, .. })
        ));
        gate.mark_proven();
        let many: Vec<_> = (0..10).map(|_| gate.admit_unproven()).collect();
        assert!(
            many.iter().all(Result::is_ok),
            "a proven connection is not capped"
        );
        assert!(gate.deadline() <= Instant::now() + limits.proof_deadline);
    }

    #[test]
    fn peer_slots_are_per_peer_and_given_back() {
        let slots = PeerSlots::new(2);
        let a1 = slots.acquire(id(1)).expect("a1");
        let _a2 = slots.acquire(id(1)).expect("a2");
        assert_eq!(
            slots.acquire(id(1)).map(|_| ()),
            Err(LimitHit {
                limit: 2,
                first: true
            })
        );
        assert!(matches!(
            slots.acquire(id(1)),
            Err(LimitHit { first: false, .. })
        ));
        let _b = slots
            .acquire(id(2))
            .expect("another peer has its own slots");
        drop(a1);
        assert_eq!(slots.held_by(&id(1)), 1);
        let a3 = slots.acquire(id(1)).expect("given back");
        // Still the same episode: the peer has not let go of everything.
        assert!(matches!(
            slots.acquire(id(1)),
            Err(LimitHit { first: false, .. })
        ));
        drop((a3, _a2));
        assert_eq!(slots.held_by(&id(1)), 0);
        let _all = [slots.acquire(id(1)), slots.acquire(id(1))];
        assert!(matches!(
            slots.acquire(id(1)),
            Err(LimitHit { first: true, .. })
        ));
    }

    #[test]
    fn accept_backoff_doubles_to_a_cap_and_resets() {
        let mut backoff = AcceptBackoff::new();
        let pauses: Vec<(Duration, bool)> = (0..10).map(|_| backoff.failed()).collect();
        assert_eq!(pauses[0], (AcceptBackoff::MIN, true));
        assert_eq!(pauses[1], (AcceptBackoff::MIN * 2, false));
        assert!(pauses.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(pauses[9].0, AcceptBackoff::MAX);
        backoff.succeeded();
        assert_eq!(backoff.failed(), (AcceptBackoff::MIN, true));
    }
}
