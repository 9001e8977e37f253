//! A raw gossip node that holds the team secret and broadcasts announcement bytes it is
//! given, exactly as they would have gone over the wire: for replaying a recording to a
//! running node. Unlike [`super::forge`], it runs no mesh node of its own (it never
//! announces itself), so what a receiver sees is only what the test sends.
//!
//! ```ignore
//! let replayer = Replayer::join(&team_file, &alice.invite());
//! replayer.broadcast(recorded_bytes);
//! ```

use std::path::Path;
use std::time::Duration;

use iroh::protocol::Router;
use iroh::{SecretKey, address_lookup::memory::MemoryLookup};
use iroh_gossip::api::GossipSender;
use iroh_gossip::net::{GOSSIP_ALPN, Gossip};
use n2p_core::endpoint::{EndpointOptions, bind_builder, endpoint_builder};
use n2p_mesh::proto::announce::{AnnounceKind, Announcement, MAX_ANNOUNCEMENT_SIZE, encode};
use n2p_mesh::proto::team::TeamConfig;
use n2p_mesh::proto::ticket::MeshTicket;
use n2p_mesh::proto::topic::MeshKeys;
use n2p_testkit::n2p::STARTUP_TIMEOUT;

/// A gossip node on the team's topic that sends only what it is told to.
pub(crate) struct Replayer {
    key: SecretKey,
    keys: MeshKeys,
    sender: GossipSender,
    router: Router,
    runtime: tokio::runtime::Runtime,
}

impl Replayer {
    /// Joins the topic of `ticket` in the team of `team_file` (whose secret it loads) with
    /// a fresh identity, through the ticket's peers; returns once a neighbour is up.
    pub(crate) fn join(team_file: &Path, ticket: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("building a tokio runtime for the replayer");
        let team = TeamConfig::load(team_file)
            .unwrap_or_else(|e| panic!("loading {}: {e}", team_file.display()));
        let secret = team
            .load_secret()
            .unwrap_or_else(|e| panic!("loading the team secret: {e}"));
        let ticket: MeshTicket = ticket
            .parse()
            .unwrap_or_else(|e| panic!("parsing the ticket {ticket:?}: {e}"));
        let keys = MeshKeys::derive(&secret, &ticket.topic).expect("deriving the topic keys");
        let key = SecretKey::from_bytes(&rand::random());
        let (sender, router) = runtime.block_on(async {
            let memory = MemoryLookup::new();
            let options = EndpointOptions::loopback();
            let builder = endpoint_builder(key.clone(), vec![GOSSIP_ALPN.to_vec()], &options)
                .expect("an endpoint builder")
                .address_lookup(memory.clone());
            let endpoint = bind_builder(builder, &options)
                .await
                .expect("binding the replayer's endpoint");
            let ids = ticket
                .peers
                .iter()
                .map(|addr| {
                    memory.add_endpoint_info(addr.clone());
                    addr.id
                })
                .collect();
            let gossip = Gossip::builder()
                .max_message_size(MAX_ANNOUNCEMENT_SIZE.max(4096))
                .spawn(endpoint.clone());
            let router = Router::builder(endpoint)
                .accept(GOSSIP_ALPN, gossip.clone())
                .spawn();
            let mut topic = gossip
                .subscribe(keys.topic_id(), ids)
                .await
                .expect("subscribing to the topic");
            tokio::time::timeout(STARTUP_TIMEOUT, topic.joined())
                .await
                .expect("the replayer found no neighbour in time")
                .expect("joining the topic");
            let (sender, receiver) = topic.split();
            // Nobody reads what arrives; keeping the receiver would only buffer it.
            drop(receiver);
            (sender, router)
        });
        Self {
            key,
            keys,
            sender,
            router,
            runtime,
        }
    }

    /// An `Alive` announcement of this node called `name`, sharing its daemon, signed and
    /// authenticated as a team member would send it, with `seq` (a Unix time in ms).
    pub(crate) fn record(&self, name: &str, seq: u64) -> Vec<u8> {
        let mut ann = Announcement::new(self.key.public(), name, seq, AnnounceKind::Alive);
        ann.shares_daemon = true;
        encode(&ann, &self.key, self.keys.announce_key()).expect("encoding an announcement")
    }

    /// Broadcasts `bytes` on the topic as they are.
    pub(crate) fn broadcast(&self, bytes: Vec<u8>) {
        self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), self.sender.broadcast(bytes.into()))
                .await
                .expect("broadcasting in time")
                .expect("broadcasting");
        });
    }
}

impl Drop for Replayer {
    fn drop(&mut self) {
        self.runtime.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.router.shutdown()).await;
        });
    }
}
