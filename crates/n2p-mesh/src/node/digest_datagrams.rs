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
//! Datagrams may be lost; what a lost one carried comes with a later digest or with its
//! senders' next announcements, as when gossip did not deliver a digest. What they carry is
//! checked as any digest (the topic's MAC again, each entry's signature) in
//! [`super::actor`].

use std::{collections::BTreeSet, time::Duration};

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

/// Sends `digests` (each at most [`DATAGRAM_DIGEST_SIZE`] bytes) as datagrams to each of
/// `neighbours` that `reads` them (as its announcement says), on its latest open gossip
/// connection. Returns whether some neighbour could not take them so: then the caller
/// sends the digests through gossip as well.
pub(super) fn send(
    paths: &PathWatch,
    neighbours: &BTreeSet<EndpointId>,
    reads: impl Fn(&EndpointId) -> bool,
    digests: &[Bytes],
) -> bool {
    let largest = digests.iter().map(Bytes::len).max().unwrap_or(0);
    let mut unreached = false;
    for peer in neighbours {
        if !reads(peer) {
            unreached = true;
            continue;
        }
        let Some(conn) = paths.latest_gossip(peer) else {
            unreached = true;
            continue;
        };
        if conn.max_datagram_size().is_none_or(|max| max < largest) {
            unreached = true;
            continue;
        }
        if let Err(e) = conn.send_many_datagrams(digests) {
            debug!(peer = %peer.fmt_short(), "cannot send a digest as datagrams: {e}");
            unreached = true;
        }
    }
    unreached
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

        fn neighbours(&self) -> BTreeSet<EndpointId> {
            BTreeSet::from([self.neighbour.endpoint().id()])
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
        assert!(!send(&pair.paths, &pair.neighbours(), |_| true, &digests));
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
        let neighbours = pair.neighbours();
        assert!(send(&pair.paths, &neighbours, |_| false, &[digest(b"no")]));
        // Nor is a neighbour without a gossip connection reached.
        let stranger = BTreeSet::from([SecretKey::from_bytes(&[9; 32]).public()]);
        assert!(send(&pair.paths, &stranger, |_| true, &[digest(b"no")]));
        // A datagram that is not a digest, and a digest under another topic's key, are
        // dropped by the reader: the first thing it hands on is the digest sent after them.
        let conn = pair
            .paths
            .latest_gossip(&pair.neighbour.endpoint().id())
            .ok_or("no gossip connection")?;
        conn.send_datagram(Bytes::from_static(b"\x01not a digest"))?;
        conn.send_datagram(digest_for("another topic", b"forged"))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = digest(b"after");
        assert!(!send(
            &pair.paths,
            &neighbours,
            |_| true,
            std::slice::from_ref(&after)
        ));
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
}
