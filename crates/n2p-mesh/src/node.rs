//! The running mesh node: drives the pure parts ([`crate::table`], [`crate::announce`]) over
//! iroh-gossip, serves the local daemon to allowed peers, and keeps the peers directory.
//!
//! One actor task owns the peer table and the peer sockets; it reacts to gossip events, its
//! announce timer and its expiry timer. Shutdown order: stop the actor (which announces
//! `Leaving` and removes every peer socket), then shut the router down, which closes the
//! endpoint.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use iroh::{
    Endpoint, EndpointAddr, EndpointId, SecretKey,
    address_lookup::memory::MemoryLookup,
    endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks, TransportAddrUsage},
    protocol::Router,
};
use iroh_gossip::{
    api::{Event, GossipReceiver, GossipSender},
    net::{GOSSIP_ALPN, Gossip},
};
use n0_future::StreamExt;
use n2p_core::{
    access::{AccessPolicy, AccessSecret, SecretPolicy},
    daemon::{ACCESS_DENIED, DAEMON_ALPN, DaemonService},
    endpoint::{EndpointBindError, EndpointOptions, bind_builder, endpoint_builder},
};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    announce::{
        AnnounceKind, Announcement, MAX_ADDRS, MAX_ANNOUNCEMENT_SIZE, SeqClock, decode_verified,
        encode, unix_ms,
    },
    names::socket_file_name,
    peer_sockets::{PeerSockets, PeerSocketsError},
    table::{Applied, PeerTable},
    team::TeamConfig,
    topic::{MeshKeys, TeamSecret, TopicNameError},
};

/// After a change in the swarm, wait this long before announcing, to coalesce bursts.
const ANNOUNCE_DEBOUNCE: Duration = Duration::from_millis(150);

/// Time for iroh-gossip to quit a topic before it is joined again.
const REJOIN_PAUSE: Duration = Duration::from_millis(200);

/// How long a peer dropped for silence may remain a gossip neighbour before the topic is
/// rejoined to clear it.
const STALE_NEIGHBOR_GRACE: Duration = Duration::from_secs(3);

/// Silent peers are watched this long, then forgotten.
const SILENT_NEIGHBOR_FORGET: Duration = Duration::from_secs(120);

/// Upper bound of the random extra pause before rejoining, in milliseconds.
const REJOIN_JITTER_MS: u64 = 800;

/// How long a `Leaving` announcement gets to go out before the endpoint closes.
const LEAVE_GRACE: Duration = Duration::from_millis(250);

/// Everything a mesh node needs to run.
#[derive(Debug)]
pub struct MeshSettings {
    /// The topic name (combined with the team secret into the gossip topic id).
    pub topic: String,
    /// The name I announce.
    pub name: String,
    /// Whether I let teammates use my daemon.
    pub share_daemon: bool,
    /// My nix-daemon's socket.
    pub daemon_socket: PathBuf,
    /// The team file's content.
    pub team: TeamConfig,
    /// The team secret.
    pub secret: TeamSecret,
    /// Where peer sockets go.
    pub peers_dir: PathBuf,
    /// Extra bootstrap peers (from invite tickets).
    pub bootstrap: Vec<EndpointAddr>,
    /// Relay and bind settings.
    pub endpoint: EndpointOptions,
}

/// Errors while starting a mesh node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The topic name is unusable.
    #[error(transparent)]
    Topic(#[from] TopicNameError),
    /// The endpoint could not be bound.
    #[error(transparent)]
    Bind(#[from] EndpointBindError),
    /// The peers directory could not be prepared.
    #[error(transparent)]
    PeersDir(#[from] PeerSocketsError),
    /// Joining the gossip topic failed.
    #[error("cannot join the gossip topic: {0}")]
    Gossip(String),
}

/// A snapshot of what the node sees, for `n2p status` and `n2p mesh peers`.
#[derive(Debug, Clone, Serialize)]
pub struct MeshStatus {
    /// My endpoint id.
    pub id: String,
    /// My name.
    pub name: String,
    /// The topic name.
    pub topic: String,
    /// Whether I share my daemon.
    pub shares_daemon: bool,
    /// Whether the team is open (no member list).
    pub open_team: bool,
    /// My direct addresses.
    pub addrs: Vec<SocketAddr>,
    /// The peers directory.
    pub peers_dir: PathBuf,
    /// Every live peer.
    pub peers: Vec<PeerStatus>,
}

/// One live peer in a [`MeshStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// The name it goes by here.
    pub name: String,
    /// Its endpoint id.
    pub id: String,
    /// Whether it shares its daemon.
    pub shares_daemon: bool,
    /// Its socket, when I have one for it.
    pub socket: Option<PathBuf>,
    /// How traffic reaches it: `direct`, `relay` or `none` (no connection yet).
    pub path: &'static str,
    /// Seconds since it was last heard from.
    pub last_seen_secs: f64,
    /// Whether it is listed in the team file.
    pub member: bool,
}

/// Rejects, for every ALPN, peers that are not members of a closed team.
#[derive(Debug)]
struct TeamGate {
    team: TeamConfig,
}

impl EndpointHooks for TeamGate {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        let peer = conn.remote_id();
        if self.team.admits(&peer) {
            AfterHandshakeOutcome::accept()
        } else {
            warn!(peer = %peer, "refused peer {peer}: not a member of this team");
            AfterHandshakeOutcome::Reject {
                error_code: ACCESS_DENIED,
                reason: b"not a team member".to_vec(),
            }
        }
    }
}

/// State shared between the actor and status readers.
#[derive(Debug)]
struct Shared {
    table: Mutex<PeerTable>,
}

/// A running mesh node.
#[derive(Debug)]
pub struct MeshNode {
    router: Router,
    shared: Arc<Shared>,
    settings: Arc<StatusSettings>,
    cancel: CancellationToken,
    actor: Mutex<Option<JoinHandle<()>>>,
}

/// The parts of the settings that status reports need.
#[derive(Debug)]
struct StatusSettings {
    name: String,
    topic: String,
    share_daemon: bool,
    open_team: bool,
    peers_dir: PathBuf,
}

impl MeshNode {
    /// Binds the endpoint, joins the topic and starts announcing and keeping sockets.
    pub async fn join(secret_key: SecretKey, settings: MeshSettings) -> Result<Self, MeshError> {
        let keys = MeshKeys::derive(&settings.secret, &settings.topic)?;
        let me = secret_key.public();
        let mut alpns = vec![GOSSIP_ALPN.to_vec()];
        if settings.share_daemon {
            alpns.push(DAEMON_ALPN.to_vec());
        }
        let memory = MemoryLookup::new();
        let mut builder = endpoint_builder(secret_key.clone(), alpns, &settings.endpoint)?
            .address_lookup(memory.clone());
        if !settings.team.is_open() {
            builder = builder.hooks(TeamGate {
                team: settings.team.clone(),
            });
        }
        let endpoint = bind_builder(builder, &settings.endpoint).await?;

        let mut bootstrap_ids = Vec::new();
        for addr in settings
            .team
            .bootstrap(&me)
            .into_iter()
            .chain(settings.bootstrap.iter().cloned())
        {
            if addr.id == me {
                continue;
            }
            if !addr.is_empty() {
                memory.add_endpoint_info(addr.clone());
            }
            bootstrap_ids.push(addr.id);
        }

        let gossip = Gossip::builder()
            .max_message_size(MAX_ANNOUNCEMENT_SIZE.max(4096))
            .spawn(endpoint.clone());
        let mut router = Router::builder(endpoint.clone()).accept(GOSSIP_ALPN, gossip.clone());
        if settings.share_daemon {
            let access = AccessSecret::from_bytes(keys.access_secret());
            let mut policy = SecretPolicy::new(access);
            if !settings.team.is_open() {
                let pushers: Vec<EndpointId> = settings
                    .team
                    .members()
                    .iter()
                    .filter(|m| m.push)
                    .map(|m| m.id)
                    .collect();
                policy = policy.with_allow_list(pushers);
            }
            let policy: Arc<dyn AccessPolicy> = Arc::new(policy);
            router = router.accept(
                DAEMON_ALPN,
                DaemonService::new(settings.daemon_socket.clone(), policy, me),
            );
        }
        let router = router.spawn();

        let sockets = PeerSockets::open(
            settings.peers_dir.clone(),
            endpoint.clone(),
            AccessSecret::from_bytes(keys.access_secret()),
        )?;
        let topic = gossip
            .subscribe(keys.topic_id(), bootstrap_ids.clone())
            .await
            .map_err(|e| MeshError::Gossip(e.to_string()))?;
        let (sender, receiver) = topic.split();

        let shared = Arc::new(Shared {
            table: Mutex::new(PeerTable::new(me, &settings.name, settings.team.clone())),
        });
        let cancel = CancellationToken::new();
        let actor = Actor {
            gossip,
            bootstrap: bootstrap_ids,
            endpoint: endpoint.clone(),
            secret_key,
            keys,
            name: settings.name.clone(),
            share_daemon: settings.share_daemon,
            memory,
            sender: Some(sender),
            sockets,
            shared: shared.clone(),
            seq: SeqClock::new(),
            announce_interval: settings.team.announce_interval(),
        };
        let span = info_span!("mesh", me = %me.fmt_short());
        let actor = tokio::spawn(actor.run(receiver, cancel.clone()).instrument(span));
        info!(target: "n2p",
            "joined mesh topic '{}' as {} ({}), {}",
            settings.topic,
            settings.name,
            me,
            if settings.share_daemon { "sharing my nix-daemon" } else { "not sharing my nix-daemon" }
        );
        Ok(Self {
            router,
            shared,
            settings: Arc::new(StatusSettings {
                name: settings.name,
                topic: settings.topic,
                share_daemon: settings.share_daemon,
                open_team: settings.team.is_open(),
                peers_dir: settings.peers_dir,
            }),
            cancel,
            actor: Mutex::new(Some(actor)),
        })
    }

    /// The node's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        self.router.endpoint()
    }

    /// What the node sees now.
    pub async fn status(&self) -> MeshStatus {
        let endpoint = self.endpoint();
        let now = Instant::now();
        let peers = self
            .shared
            .table
            .lock()
            .map(|t| t.peers())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(peers.len());
        for peer in peers {
            let path = match endpoint.remote_info(peer.id).await {
                Some(info) => info
                    .addrs()
                    .filter(|a| matches!(a.usage(), TransportAddrUsage::Active))
                    .map(|a| {
                        if a.addr().is_relay() {
                            "relay"
                        } else {
                            "direct"
                        }
                    })
                    .next()
                    .unwrap_or("none"),
                None => "none",
            };
            out.push(PeerStatus {
                socket: peer.socket.map(|s| self.settings.peers_dir.join(s)),
                name: peer.name,
                id: peer.id.to_string(),
                shares_daemon: peer.shares_daemon,
                path,
                last_seen_secs: now.saturating_duration_since(peer.last_seen).as_secs_f64(),
                member: peer.member,
            });
        }
        MeshStatus {
            id: endpoint.id().to_string(),
            name: self.settings.name.clone(),
            topic: self.settings.topic.clone(),
            shares_daemon: self.settings.share_daemon,
            open_team: self.settings.open_team,
            addrs: endpoint.addr().ip_addrs().copied().collect(),
            peers_dir: self.settings.peers_dir.clone(),
            peers: out,
        }
    }

    /// Announces `Leaving`, removes every peer socket and closes the endpoint. Later calls
    /// do nothing.
    pub async fn leave(&self) {
        self.cancel.cancel();
        let actor = self.actor.lock().ok().and_then(|mut a| a.take());
        if let Some(actor) = actor {
            actor.await.ok();
            self.router.shutdown().await.ok();
        }
    }
}

/// The task that owns the table and the sockets.
struct Actor {
    gossip: Gossip,
    /// Team members and ticket peers: whom to (re)join the topic through.
    bootstrap: Vec<EndpointId>,
    endpoint: Endpoint,
    secret_key: SecretKey,
    keys: MeshKeys,
    name: String,
    share_daemon: bool,
    memory: MemoryLookup,
    /// `None` only while rejoining.
    sender: Option<GossipSender>,
    sockets: PeerSockets,
    shared: Arc<Shared>,
    seq: SeqClock,
    announce_interval: Duration,
}

impl Actor {
    async fn run(mut self, mut receiver: GossipReceiver, cancel: CancellationToken) {
        self.announce(AnnounceKind::Alive).await;
        let mut announce_tick = tokio::time::interval(self.announce_interval);
        announce_tick.reset();
        let mut expire_tick = tokio::time::interval(Duration::from_millis(250));
        let mut announce_soon: Option<tokio::time::Instant> = None;
        // Peers dropped for silence, and when: watched for stale gossip neighbour state.
        let mut silent_since: BTreeMap<EndpointId, Instant> = BTreeMap::new();
        loop {
            let soon = async {
                match announce_soon {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                event = receiver.next() => match event {
                    Some(Ok(Event::Received(msg))) => {
                        if self.handle_message(&msg.content) {
                            announce_soon.get_or_insert(tokio::time::Instant::now() + ANNOUNCE_DEBOUNCE);
                        }
                    }
                    Some(Ok(Event::NeighborUp(peer))) => {
                        debug!(peer = %peer.fmt_short(), "gossip neighbor up");
                        announce_soon.get_or_insert(tokio::time::Instant::now() + ANNOUNCE_DEBOUNCE);
                    }
                    Some(Ok(Event::NeighborDown(peer))) => {
                        debug!(peer = %peer.fmt_short(), "gossip neighbor down");
                    }
                    Some(Ok(Event::Lagged)) => warn!("fell behind on gossip messages; some were dropped"),
                    Some(Err(e)) => {
                        warn!("gossip subscription failed: {e}");
                        break;
                    }
                    None => {
                        warn!("gossip subscription ended");
                        break;
                    }
                },
                _ = soon => {
                    announce_soon = None;
                    self.announce(AnnounceKind::Alive).await;
                    announce_tick.reset();
                }
                _ = announce_tick.tick() => self.announce(AnnounceKind::Alive).await,
                _ = expire_tick.tick() => {
                    let now = Instant::now();
                    for id in self.expire() {
                        silent_since.insert(id, now);
                    }
                    // A peer that vanished without a goodbye may still count as a gossip
                    // neighbour long after it went silent; then its restarted instance is
                    // never taken back (its Join is ignored). A dead peer's connection times
                    // out and it stops being a neighbour; one that stays a neighbour while
                    // silent is that stale state, and leaving and rejoining the topic clears
                    // it. Not done at once, so a crash noticed by everyone at the same moment
                    // does not make the whole mesh rejoin in lockstep.
                    let live: Vec<EndpointId> = self
                        .shared
                        .table
                        .lock()
                        .map(|t| t.peers().iter().map(|p| p.id).collect())
                        .unwrap_or_default();
                    silent_since.retain(|id, since| {
                        !live.contains(id) && now.saturating_duration_since(*since) < SILENT_NEIGHBOR_FORGET
                    });
                    let stale: Vec<EndpointId> = silent_since
                        .iter()
                        .filter(|(id, since)| {
                            now.saturating_duration_since(**since) >= STALE_NEIGHBOR_GRACE
                                && receiver.neighbors().any(|n| n == **id)
                        })
                        .map(|(id, _)| *id)
                        .collect();
                    if !stale.is_empty() {
                        for id in &stale {
                            silent_since.remove(id);
                            debug!(peer = %id.fmt_short(), "silent peer is still a gossip neighbour; rejoining");
                        }
                        match self.rejoin(receiver, &stale).await {
                            Some(fresh) => {
                                receiver = fresh;
                                announce_soon.get_or_insert(tokio::time::Instant::now() + ANNOUNCE_DEBOUNCE);
                            }
                            None => break,
                        }
                    }
                }
            }
        }
        self.announce(AnnounceKind::Leaving).await;
        tokio::time::sleep(LEAVE_GRACE).await;
        self.sockets.clear();
    }

    /// Verifies and applies one gossip message; returns whether a new peer joined (so we
    /// should announce ourselves to it soon).
    fn handle_message(&mut self, bytes: &[u8]) -> bool {
        let ann = match decode_verified(bytes, self.keys.announce_key()) {
            Ok(ann) => ann,
            Err(e) => {
                debug!("dropped gossip message: {e}");
                return false;
            }
        };
        let now = Instant::now();
        let (applied, desired, addr) = {
            let Ok(mut table) = self.shared.table.lock() else {
                return false;
            };
            let applied = table.apply(&ann, now);
            // New or changed addresses go to the address lookup, for dialing the peer.
            let addr = matches!(applied, Ok(Applied::Joined | Applied::Changed))
                .then(|| table.endpoint_addr(&ann.id))
                .flatten();
            (applied, table.sockets(), addr)
        };
        if let Some(addr) = addr.filter(|a| !a.is_empty()) {
            self.memory.add_endpoint_info(addr);
        }
        match applied {
            Ok(applied) => {
                if matches!(applied, Applied::Left) {
                    info!(target: "n2p", "peer {} left", ann.id.fmt_short());
                }
                self.reconcile(&desired);
                matches!(applied, Applied::Joined)
            }
            Err(dropped) => {
                debug!("ignored announcement: {dropped}");
                false
            }
        }
    }

    /// Leaves and rejoins the gossip topic through the bootstrap peers and every peer still
    /// live; returns the new receiver (the sender is replaced in place), or `None` when the
    /// gossip actor is gone.
    async fn rejoin(&mut self, old: GossipReceiver, gone: &[EndpointId]) -> Option<GossipReceiver> {
        let mut peers = self.bootstrap.clone();
        if let Ok(table) = self.shared.table.lock() {
            peers.extend(table.peers().into_iter().map(|p| p.id));
        }
        peers.sort();
        peers.dedup();
        peers.retain(|id| !gone.contains(id) || self.bootstrap.contains(id));
        debug!("rejoining the gossip topic through {} peers", peers.len());
        // Dropping both halves of the subscription makes iroh-gossip quit the topic (it
        // notices asynchronously); only a later subscribe starts from a clean state.
        drop(old);
        self.sender = None;
        // Jitter, so peers that noticed the same crash at the same moment do not rejoin in
        // lockstep (each one's quit would cut the other's fresh join).
        let jitter = Duration::from_millis(rand::random_range(0..REJOIN_JITTER_MS));
        tokio::time::sleep(REJOIN_PAUSE + jitter).await;
        match self.gossip.subscribe(self.keys.topic_id(), peers).await {
            Ok(topic) => {
                let (sender, receiver) = topic.split();
                self.sender = Some(sender);
                Some(receiver)
            }
            Err(e) => {
                warn!("cannot rejoin the gossip topic: {e}");
                None
            }
        }
    }

    fn expire(&mut self) -> Vec<EndpointId> {
        let now = Instant::now();
        let (gone, desired) = {
            let Ok(mut table) = self.shared.table.lock() else {
                return Vec::new();
            };
            let gone = table.expire(now);
            (gone, table.sockets())
        };
        for id in &gone {
            info!(target: "n2p", "peer {} went silent; dropped", id.fmt_short());
        }
        if !gone.is_empty() {
            self.reconcile(&desired);
        }
        gone
    }

    fn reconcile(&mut self, desired: &BTreeMap<String, EndpointId>) {
        let files: BTreeMap<String, EndpointId> = desired
            .iter()
            .map(|(name, id)| (socket_file_name(name), *id))
            .collect();
        self.sockets.reconcile(&files);
    }

    async fn announce(&mut self, kind: AnnounceKind) {
        let addr = self.endpoint.addr();
        let mut ann = Announcement::new(
            self.endpoint.id(),
            self.name.clone(),
            self.seq.next(unix_ms(SystemTime::now())),
            kind,
        );
        ann.shares_daemon = self.share_daemon;
        ann.addrs = addr.ip_addrs().copied().take(MAX_ADDRS).collect();
        ann.relay = addr.relay_urls().next().cloned();
        match encode(&ann, &self.secret_key, self.keys.announce_key()) {
            Ok(bytes) => {
                let Some(sender) = &self.sender else { return };
                if let Err(e) = sender.broadcast(bytes.into()).await {
                    debug!("broadcast failed: {e}");
                }
            }
            Err(e) => warn!("cannot encode my announcement: {e}"),
        }
    }
}
