//! Digests sent to every gossip neighbour as QUIC datagrams on the gossip connection.
//!
//! iroh-gossip 0.101 hands a neighbours-only message to plumtree's eager peers alone, and a
//! link turns lazy as soon as a flooded message comes over it twice, which in a starting
//! team takes milliseconds. A digest sent through gossip therefore missed many neighbours,
//! and a node whose links had all turned lazy learned nothing from neighbours that knew the
//! whole team until its own dials of absent members brought new links (seen in the debug
//! log of a slow 100-node start: docs/BENCHMARKS.md, "Digests that reach every
//! neighbour").
//!
//! So digests go out as QUIC datagrams on the gossip connection to each neighbour, which
//! is open whether the link is eager or lazy: no new connection, no handshake. iroh-gossip
//! uses streams only and never reads datagrams; this node reads them on every gossip
//! connection ([`DigestReader`]), and hands on only those that carry the topic's MAC. A
//! datagram carries a digest of at most [`DATAGRAM_DIGEST_SIZE`] bytes (a digest of the
//! whole team is cut into several): QUIC lets a datagram be a little over a kilobyte at
//! least unless the peer sets a lower limit, and a connection that takes less gets the
//! digest through gossip.
//! Datagrams go only to neighbours whose latest announcement says they read them
//! ([`crate::proto::announce::Announcement::digest_datagrams`]); a neighbour not known so
//! yet (or an older build, which never reads them), or whose connection takes no
//! datagrams, gets the digest through gossip, as before.
//!
//! Datagrams may be lost: each entry goes to a neighbour in two digests in a row
//! ([`Ledger`]), in an order that starts at a random entry each time, so that what one lost
//! datagram carried comes with the next, and what two lost ones carried with another
//! neighbour's digests or with its senders' next announcements, as when gossip did not
//! deliver a digest. What they carry is
//! checked as any digest (the topic's MAC again, each entry's signature) in
//! [`super::actor`].

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use bytes::Bytes;
use iroh::{
    EndpointId,
    endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks, WeakConnectionHandle},
};
use tokio::sync::mpsc;
use tracing::debug;

use super::paths::PathWatch;
use crate::proto::{digest::decode_digest, topic::AnnounceKey};

/// The largest digest sent as one datagram, in bytes: QUIC lets a datagram be "a little
/// over a kilobyte at minimum" unless the peer sets a lower limit (with noq's defaults, as
/// n2p uses them, at least 1150 bytes).
pub(super) const DATAGRAM_DIGEST_SIZE: usize = 1024;

/// How many received digests (datagrams) may wait for the node's loop; more are dropped.
/// A digest of a whole team of 1000 at loopback address sizes takes about 250 of them.
pub(super) const INBOX: usize = 1024;

/// Reads digests from the datagrams of every gossip connection and hands those that carry
/// the topic's MAC to the node's loop (an endpoint hook: it sees each connection once its
/// handshake is done).
#[derive(Clone)]
pub(super) struct DigestReader {
    inbox: mpsc::Sender<Bytes>,
    key: AnnounceKey,
}

impl std::fmt::Debug for DigestReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestReader").finish_non_exhaustive()
    }
}

impl DigestReader {
    /// Hands what it reads, if `key` authenticates it, to `inbox`.
    pub(super) fn new(inbox: mpsc::Sender<Bytes>, key: AnnounceKey) -> Self {
        Self { inbox, key }
    }
}

impl EndpointHooks for DigestReader {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        if conn.alpn() == iroh_gossip::net::GOSSIP_ALPN {
            tokio::spawn(read_digests(
                conn.weak_handle(),
                self.inbox.clone(),
                self.key.clone(),
            ));
        }
        AfterHandshakeOutcome::accept()
    }
}

/// How long the reader holds a strong handle of a connection at a time. While it does, the
/// connection would not close when gossip drops its own handles; gossip closes its
/// connections explicitly, and this bounds the delay should it ever only drop them
/// (`tests::a_connection_dropped_by_everyone_else_closes_though_the_reader_watches_it`).
const HOLD: Duration = Duration::from_secs(1);

/// Reads the datagrams of a gossip connection until it closes or nobody else holds it.
/// Those that are not digests under `key` are dropped here: they never reach the node's
/// loop, nor count there as news heard.
async fn read_digests(conn: WeakConnectionHandle, inbox: mpsc::Sender<Bytes>, key: AnnounceKey) {
    while let Some(strong) = conn.upgrade() {
        let peer = strong.remote_id();
        let bytes = match tokio::time::timeout(HOLD, strong.read_datagram()).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) => break,
            Err(_) => continue,
        };
        if let Err(e) = decode_digest(&bytes, &key) {
            debug!(peer = %peer.fmt_short(), "dropped a datagram: {e}");
            continue;
        }
        match inbox.try_send(bytes) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!(peer = %peer.fmt_short(), "dropped a digest: {INBOX} are waiting already");
            }
            // The node is leaving.
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
}

/// The gossip connection on which `peer` gets digests as datagrams: its latest open one,
/// if the peer `reads` them (as its announcement says) and the connection takes datagrams
/// of [`DATAGRAM_DIGEST_SIZE`] bytes. `None`: the digest must go through gossip.
pub(super) fn connection(paths: &PathWatch, peer: &EndpointId, reads: bool) -> Option<Connection> {
    if !reads {
        return None;
    }
    paths.latest_gossip(peer).filter(|conn| {
        conn.max_datagram_size()
            .is_some_and(|max| max >= DATAGRAM_DIGEST_SIZE)
    })
}

/// Sends `digests` (each at most [`DATAGRAM_DIGEST_SIZE`] bytes) as datagrams on `conn`.
/// Returns whether they were queued.
pub(super) fn send(conn: &Connection, digests: &[Bytes]) -> bool {
    match conn.send_many_datagrams(digests) {
        Ok(_) => true,
        Err(e) => {
            debug!(peer = %conn.remote_id().fmt_short(), "cannot send a digest as datagrams: {e}");
            false
        }
    }
}

/// What each gossip neighbour was sent in its last two datagram digests, so that the next
/// digest to it carries only the entries that changed since the older of the two: a full
/// digest to every neighbour whenever one came up made a starting team's digests grow with
/// how often its neighbours changed (docs/BENCHMARKS.md, "Digests that carry only news").
///
/// Entries are stamped from one clock as they are taken in ([`Self::stamp`]). A neighbour
/// is remembered with the connection its digests went on (`C`) and the clock at each of the
/// last two. Every entry thus goes to a neighbour in two digests in a row (the first two on
/// a connection both carry everything), so that a datagram lost once, or dropped by a busy
/// receiver, is sent again. On another connection (the neighbour may have restarted and
/// know nothing) it gets everything again.
#[derive(Debug)]
pub(super) struct Ledger<C> {
    clock: u64,
    sent: BTreeMap<EndpointId, Sent<C>>,
}

/// The last two digests to one neighbour.
#[derive(Debug)]
struct Sent<C> {
    /// The connection they went on.
    conn: C,
    /// The clock at the one before the last; `None` if the last was the first.
    older: Option<u64>,
    /// The clock at the last.
    last: u64,
}

impl<C> Default for Ledger<C> {
    fn default() -> Self {
        Self {
            clock: 0,
            sent: BTreeMap::new(),
        }
    }
}

impl<C> Ledger<C> {
    /// A stamp for an entry taken in now: later than every stamp before it.
    pub(super) fn stamp(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// What the next digest to `peer` on the connection that `is_it` recognises carries:
    /// the entries stamped after the returned value; `None` for all of them.
    pub(super) fn since(&self, peer: &EndpointId, is_it: impl Fn(&C) -> bool) -> Option<u64> {
        self.sent
            .get(peer)
            .filter(|sent| is_it(&sent.conn))
            .and_then(|sent| sent.older)
    }

    /// `peer` has been sent a digest ([`Self::since`]) on `conn`, which `is_it` recognises.
    pub(super) fn sent(&mut self, peer: EndpointId, conn: C, is_it: impl Fn(&C) -> bool) {
        let older = self
            .sent
            .get(&peer)
            .filter(|sent| is_it(&sent.conn))
            .map(|sent| sent.last);
        let last = self.clock;
        self.sent.insert(peer, Sent { conn, older, last });
    }

    /// Forgets what `peer` was sent: its next digests carry everything.
    pub(super) fn forget(&mut self, peer: &EndpointId) {
        self.sent.remove(peer);
    }

    /// Forgets every peer that is not one of `neighbours`.
    pub(super) fn keep_only(&mut self, neighbours: &BTreeSet<EndpointId>) {
        self.sent.retain(|peer, _| neighbours.contains(peer));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iroh::{
        Endpoint, SecretKey,
        address_lookup::memory::MemoryLookup,
        protocol::{AcceptError, ProtocolHandler, Router},
    };
    use iroh_gossip::net::GOSSIP_ALPN;
    use n2p_core::endpoint::{EndpointOptions, bind_builder, endpoint_builder};

    use super::*;
    use crate::proto::{
        digest::encode_digests,
        topic::{MeshKeys, TeamSecret},
    };

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const WAIT: Duration = Duration::from_secs(5);

    /// Holds each gossip connection open until the peer closes it (gossip itself is not
    /// needed to carry datagrams).
    #[derive(Debug, Clone)]
    struct Hold;

    impl ProtocolHandler for Hold {
        async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
            conn.closed().await;
            Ok(())
        }
    }

    /// A neighbour on loopback that reads digests into `received`, and a node with a gossip
    /// connection to it, watched by the node's `paths`.
    struct Pair {
        neighbour: Router,
        received: mpsc::Receiver<Bytes>,
        paths: PathWatch,
        _node: Endpoint,
        conn: Connection,
    }

    impl Pair {
        async fn new() -> Result<Self, Box<dyn std::error::Error>> {
            Self::serving(Hold).await
        }

        /// As [`Self::new`], with `handler` taking the neighbour's gossip connections.
        async fn serving(
            handler: impl ProtocolHandler,
        ) -> Result<Self, Box<dyn std::error::Error>> {
            let options = EndpointOptions::loopback();
            let (inbox, received) = mpsc::channel(INBOX);
            let alpns = vec![GOSSIP_ALPN.to_vec()];
            let builder = endpoint_builder(SecretKey::from_bytes(&[1; 32]), alpns, &options)?
                .hooks(DigestReader::new(inbox, key("t")));
            let server = bind_builder(builder, &options).await?;
            let neighbour = Router::builder(server).accept(GOSSIP_ALPN, handler).spawn();
            let lookup = MemoryLookup::new();
            lookup.add_endpoint_info(neighbour.endpoint().addr());
            let paths = PathWatch::default();
            let builder = endpoint_builder(SecretKey::from_bytes(&[2; 32]), vec![], &options)?
                .address_lookup(lookup)
                .hooks(paths.clone());
            let node = bind_builder(builder, &options).await?;
            let conn = node.connect(neighbour.endpoint().id(), GOSSIP_ALPN).await?;
            Ok(Self {
                neighbour,
                received,
                paths,
                _node: node,
                conn,
            })
        }

        async fn next(&mut self) -> Result<Bytes, Box<dyn std::error::Error>> {
            Ok(tokio::time::timeout(WAIT, self.received.recv())
                .await?
                .ok_or("the inbox closed")?)
        }
    }

    fn key(topic: &str) -> AnnounceKey {
        let secret = TeamSecret::new(b"0123456789abcdef".to_vec()).expect("secret");
        let keys = MeshKeys::derive(&secret, topic).expect("keys");
        keys.announce_key().clone()
    }

    /// A digest of one entry (`body`, which the reader does not look into) under the topic
    /// `topic`'s key.
    fn digest_for(topic: &str, body: &[u8]) -> Bytes {
        encode_digests([body], &key(topic), DATAGRAM_DIGEST_SIZE)
            .remove(0)
            .into()
    }

    fn digest(body: &[u8]) -> Bytes {
        digest_for("t", body)
    }

    #[tokio::test]
    async fn digests_reach_a_neighbour_that_reads_them_as_datagrams_on_its_gossip_connection()
    -> TestResult {
        let mut pair = Pair::new().await?;
        let digests = [digest(b"one"), digest(b"two")];
        let conn = connection(&pair.paths, &pair.neighbour.endpoint().id(), true)
            .ok_or("no gossip connection")?;
        assert!(send(&conn, &digests));
        let mut got = vec![pair.next().await?, pair.next().await?];
        got.sort();
        assert_eq!(got, digests);
        pair.neighbour.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_neighbour_not_known_to_read_them_gets_none_and_only_digests_of_the_topic_are_read()
    -> TestResult {
        let mut pair = Pair::new().await?;
        let neighbour = pair.neighbour.endpoint().id();
        assert!(connection(&pair.paths, &neighbour, false).is_none());
        // Nor is a peer without a gossip connection reached.
        let stranger = SecretKey::from_bytes(&[9; 32]).public();
        assert!(connection(&pair.paths, &stranger, true).is_none());
        // A datagram that is not a digest, and a digest under another topic's key, are
        // dropped by the reader: the first thing it hands on is the digest sent after them.
        let conn = connection(&pair.paths, &pair.neighbour.endpoint().id(), true)
            .ok_or("no gossip connection")?;
        conn.send_datagram(Bytes::from_static(b"\x01not a digest"))?;
        conn.send_datagram(digest_for("another topic", b"forged"))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = digest(b"after");
        assert!(send(&conn, std::slice::from_ref(&after)));
        assert_eq!(pair.next().await?, after);
        pair.neighbour.shutdown().await?;
        Ok(())
    }

    /// Drops each gossip connection after a moment (the reader is waiting on it by then),
    /// without closing it.
    #[derive(Debug, Clone)]
    struct DropSoon;

    impl ProtocolHandler for DropSoon {
        async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(conn);
            Ok(())
        }
    }

    /// The reader holds a connection only a moment at a time, so one that everybody else
    /// dropped still closes (QUIC closes a connection when its last handle goes), and does
    /// not stay open on keep-alives.
    #[tokio::test]
    async fn a_connection_dropped_by_everyone_else_closes_though_the_reader_watches_it()
    -> TestResult {
        let pair = Pair::serving(DropSoon).await?;
        let closed = tokio::time::timeout(WAIT, pair.conn.closed()).await?;
        assert!(
            matches!(
                closed,
                iroh::endpoint::ConnectionError::ApplicationClosed(_)
            ),
            "{closed:?}"
        );
        pair.neighbour.shutdown().await?;
        Ok(())
    }

    fn peer(n: u8) -> EndpointId {
        SecretKey::from_bytes(&[n; 32]).public()
    }

    #[test]
    fn every_entry_goes_to_a_neighbour_in_two_digests_in_a_row() {
        let mut ledger = Ledger::<u32>::default();
        let (a, b) = (peer(1), peer(2));
        let same = |c: &u32| *c == 7;
        let first = ledger.stamp();
        // The first two digests on a connection carry everything.
        assert_eq!(ledger.since(&a, same), None);
        ledger.sent(a, 7, same);
        let second = ledger.stamp();
        assert_eq!(ledger.since(&a, same), None);
        ledger.sent(a, 7, same);
        // Then what was stamped since the one before the last: the second entry, sent once
        // already, goes again; the first, sent twice, does not.
        let since = ledger.since(&a, same).expect("a had two");
        assert!(first <= since && since < second);
        let third = ledger.stamp();
        ledger.sent(a, 7, same);
        let since = ledger.since(&a, same).expect("a had three");
        assert!(second <= since && since < third);
        ledger.sent(a, 7, same);
        assert!(ledger.since(&a, same).expect("a had four") >= third);
        assert_eq!(ledger.since(&b, |_| true), None);
    }

    #[test]
    fn a_neighbour_on_another_connection_or_forgotten_is_sent_everything_again() {
        let mut ledger = Ledger::<u32>::default();
        let (a, b, c) = (peer(1), peer(2), peer(3));
        ledger.stamp();
        for _ in 0..2 {
            ledger.sent(a, 7, |conn| *conn == 7);
            ledger.sent(b, 8, |conn| *conn == 8);
            ledger.sent(c, 9, |conn| *conn == 9);
        }
        // A restarted neighbour comes back on a new connection and knows nothing: its
        // first two digests there carry everything.
        assert_eq!(ledger.since(&a, |conn| *conn == 70), None);
        ledger.sent(a, 70, |conn| *conn == 70);
        assert_eq!(ledger.since(&a, |conn| *conn == 70), None);
        ledger.forget(&b);
        assert_eq!(ledger.since(&b, |_| true), None);
        ledger.keep_only(&BTreeSet::from([a]));
        assert_eq!(ledger.since(&c, |_| true), None);
        ledger.sent(a, 70, |conn| *conn == 70);
        assert!(ledger.since(&a, |conn| *conn == 70).is_some());
    }
}
