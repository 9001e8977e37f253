//! The actor behind a [`super::MeshNode`]: the one task that owns the peer table and the
//! peer sockets, and the only one that reads or changes them.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use iroh::{Endpoint, EndpointId, SecretKey, address_lookup::memory::MemoryLookup};
use iroh_gossip::{
    api::{Event, GossipReceiver, GossipSender},
    net::Gossip,
};
use n0_future::StreamExt;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    LEAVE_DRAIN_BOUND,
    linger::Linger,
    paths::PathWatch,
    peer_sockets::PeerSockets,
    redial::{JOIN_PEERS, Redial, join_peers},
};
use crate::{
    proto::{
        announce::{
            AnnounceError, AnnounceKind, Announcement, MAX_ADDRS, SeqClock, decode_fresh, encode,
            unix_ms,
        },
        names::socket_file_name,
        table::{Applied, Dropped, PeerTable},
        team::TeamConfig,
        topic::MeshKeys,
    },
    status::{MeshStatus, PeerStatus},
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

/// The most senders of stale announcements warned about; later ones are logged at debug.
const MAX_STALE_WARNINGS: usize = 64;

/// How long the node's own dial of an absent member may take.
const MEMBER_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handle asks of the actor.
#[derive(Debug)]
pub(super) enum Command {
    /// Answer with a [`MeshStatus`].
    Status(oneshot::Sender<MeshStatus>),
    /// Apply a reloaded team config (already in force at the gate), then answer.
    Reload(Arc<TeamConfig>, oneshot::Sender<()>),
}

/// The task that owns the table and the sockets.
pub(super) struct Actor {
    pub(super) gossip: Gossip,
    /// Team members and ticket peers: whom to (re)join the topic through.
    pub(super) bootstrap: Vec<EndpointId>,
    pub(super) endpoint: Endpoint,
    pub(super) secret_key: SecretKey,
    pub(super) keys: MeshKeys,
    /// The name I announce.
    pub(super) name: String,
    /// The topic name, for status reports.
    pub(super) topic: String,
    pub(super) share_daemon: bool,
    /// Where the peer sockets are, for status reports.
    pub(super) peers_dir: PathBuf,
    pub(super) memory: MemoryLookup,
    /// `None` only while rejoining.
    pub(super) sender: Option<GossipSender>,
    pub(super) sockets: PeerSockets,
    pub(super) table: PeerTable,
    pub(super) seq: SeqClock,
    /// Senders of stale announcements already warned about (at most
    /// [`MAX_STALE_WARNINGS`]).
    pub(super) stale_warned: std::collections::BTreeSet<EndpointId>,
    /// Whether reaching the table's cap on outsiders has been logged.
    pub(super) full_warned: bool,
    pub(super) announce_interval: Duration,
    /// The endpoint's connections, for the path to each peer.
    pub(super) paths: PathWatch,
    /// When to dial listed members that are absent.
    pub(super) redial: Redial,
    /// The node's own dials of members, handed to gossip when they connect.
    pub(super) dials: JoinSet<()>,
    /// When to close gossip connections to peers that are not neighbours.
    pub(super) linger: Linger,
}

impl Actor {
    /// Runs until `cancel` fires, the handle is dropped or the gossip subscription ends;
    /// then removes every peer socket, waits up to [`LEAVE_DRAIN_BOUND`] for the transfers
    /// in flight through them and aborts the rest, and only then announces `Leaving`.
    pub(super) async fn run(
        mut self,
        mut receiver: GossipReceiver,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) {
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
                command = commands.recv() => match command {
                    Some(Command::Status(reply)) => {
                        // The asker may have given up; nothing to do then.
                        reply.send(self.status().await).ok();
                    }
                    Some(Command::Reload(team, done)) => {
                        self.reload(team).await;
                        announce_tick = tokio::time::interval(self.announce_interval);
                        announce_tick.reset();
                        // Members just added learn about me without waiting a round.
                        announce_soon.get_or_insert(tokio::time::Instant::now() + ANNOUNCE_DEBOUNCE);
                        done.send(()).ok();
                    }
                    // The handle is gone: nobody can ask or make us leave any more.
                    None => break,
                },
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
                    let live: Vec<EndpointId> = self.table.peers().iter().map(|p| p.id).collect();
                    let me = self.endpoint.id();
                    let absent: Vec<EndpointId> = self
                        .table
                        .team()
                        .members()
                        .iter()
                        .map(|m| m.id)
                        .filter(|id| *id != me && !live.contains(id) && !receiver.neighbors().any(|n| n == *id))
                        .collect();
                    let due = self.redial.due(absent, now);
                    self.dial_members(due).await;
                    let neighbours: std::collections::BTreeSet<EndpointId> = receiver.neighbors().collect();
                    for id in self.linger.due(self.paths.gossip_peers(), &neighbours, now) {
                        debug!(peer = %id.fmt_short(), "closing the gossip connection to a peer that is not a neighbour");
                        self.paths.close_gossip(&id);
                    }
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
        self.sockets.leave(LEAVE_DRAIN_BOUND).await;
        self.announce(AnnounceKind::Leaving).await;
        tokio::time::sleep(LEAVE_GRACE).await;
    }

    /// Verifies and applies one gossip message; returns whether a new peer joined (so we
    /// should announce ourselves to it soon).
    fn handle_message(&mut self, bytes: &[u8]) -> bool {
        let ann = match decode_fresh(bytes, self.keys.announce_key(), unix_ms(SystemTime::now())) {
            Ok(ann) => ann,
            Err(e @ AnnounceError::Stale { id, .. }) => {
                // A replay, or a member whose clock is off: the latter needs fixing by a
                // human, so say it once per sender where they look.
                if self.stale_warned.len() < MAX_STALE_WARNINGS && self.stale_warned.insert(id) {
                    warn!(target: "n2p", "dropped {e}; if this peer is real, check both clocks (NTP)");
                } else {
                    debug!("dropped gossip message: {e}");
                }
                return false;
            }
            Err(e) => {
                debug!("dropped gossip message: {e}");
                return false;
            }
        };
        let now = Instant::now();
        let applied = self.table.apply(&ann, now);
        // New or changed addresses go to the address lookup, for dialing the peer.
        let addr = matches!(applied, Ok(Applied::Joined | Applied::Changed))
            .then(|| self.table.endpoint_addr(&ann.id))
            .flatten();
        if let Some(addr) = addr.filter(|a| !a.is_empty()) {
            self.memory.add_endpoint_info(addr);
        }
        match applied {
            Ok(applied) => {
                if matches!(applied, Applied::Left) {
                    self.full_warned = false;
                    info!(target: "n2p", "peer {} left", ann.id.fmt_short());
                }
                let desired = self.table.sockets();
                self.reconcile(&desired);
                matches!(applied, Applied::Joined)
            }
            Err(dropped @ Dropped::Full { .. }) if !self.full_warned => {
                // Logged once each time the cap is reached (again after peers went).
                warn!(target: "n2p", "{dropped}; further outsiders are ignored until peers leave (listed members are always admitted)");
                self.full_warned = true;
                false
            }
            Err(dropped) => {
                debug!("ignored announcement: {dropped}");
                false
            }
        }
    }

    /// Applies a reloaded team config: drops the peers it no longer admits (and their
    /// sockets), renames by the new member list, and dials members it adds.
    async fn reload(&mut self, team: Arc<TeamConfig>) {
        let me = self.endpoint.id();
        let old_members: Vec<EndpointId> =
            self.table.team().members().iter().map(|m| m.id).collect();
        let mut fresh = Vec::new();
        for addr in team.bootstrap(&me) {
            if !addr.is_empty() {
                self.memory.add_endpoint_info(addr.clone());
            }
            if !self.bootstrap.contains(&addr.id) {
                fresh.push(addr.id);
            }
        }
        // Ticket peers stay; members of the old file stay only if the new one lists them.
        self.bootstrap
            .retain(|id| !old_members.contains(id) || team.member_by_id(id).is_some());
        self.bootstrap.extend(fresh.iter().copied());
        self.announce_interval = team.announce_interval();
        for id in self.table.set_team(team) {
            info!(target: "n2p", "peer {} is not admitted by the reloaded team file; dropped", id.fmt_short());
        }
        let desired = self.table.sockets();
        self.reconcile(&desired);
        self.dial_members(fresh).await;
    }

    /// Connects to `members` with the gossip ALPN itself and hands each connection to
    /// gossip, then asks gossip to join the topic through them. Gossip's own dial is not
    /// enough: after one failed dial it never dials that peer again (see [`super::redial`]).
    async fn dial_members(&mut self, members: Vec<EndpointId>) {
        if members.is_empty() {
            return;
        }
        for id in &members {
            let (endpoint, gossip, id) = (self.endpoint.clone(), self.gossip.clone(), *id);
            self.dials.spawn(async move {
                let connect = endpoint.connect(id, iroh_gossip::net::GOSSIP_ALPN);
                match tokio::time::timeout(MEMBER_DIAL_TIMEOUT, connect).await {
                    Ok(Ok(conn)) => {
                        if let Err(e) = gossip.handle_connection(conn).await {
                            debug!(peer = %id.fmt_short(), "gossip did not take my connection: {e}");
                        }
                    }
                    Ok(Err(e)) => debug!(peer = %id.fmt_short(), "cannot reach member: {e}"),
                    Err(_) => debug!(peer = %id.fmt_short(), "cannot reach member within {MEMBER_DIAL_TIMEOUT:?}"),
                }
            });
        }
        // Finished dials are collected here; the set stays as small as the members.
        while self.dials.try_join_next().is_some() {}
        if let Some(sender) = &self.sender
            && let Err(e) = sender.join_peers(members).await
        {
            debug!("cannot join the topic through the members: {e}");
        }
    }

    /// Leaves and rejoins the gossip topic through up to [`JOIN_PEERS`] peers: live ones
    /// first (but not those just `gone`), then bootstrap peers; returns the new receiver (the
    /// sender is replaced in place), or `None` when the gossip actor is gone.
    async fn rejoin(&mut self, old: GossipReceiver, gone: &[EndpointId]) -> Option<GossipReceiver> {
        let live: Vec<EndpointId> = self
            .table
            .peers()
            .into_iter()
            .map(|p| p.id)
            .filter(|id| !gone.contains(id))
            .collect();
        let mut peers = join_peers(&[], &live);
        if peers.len() < JOIN_PEERS {
            peers = join_peers(&peers, &self.bootstrap);
        }
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
        let gone = self.table.expire(now);
        if !gone.is_empty() {
            self.full_warned = false;
        }
        for id in &gone {
            info!(target: "n2p", "peer {} went silent; dropped", id.fmt_short());
        }
        if !gone.is_empty() {
            let desired = self.table.sockets();
            self.reconcile(&desired);
        }
        gone
    }

    /// What the node sees now.
    async fn status(&self) -> MeshStatus {
        let now = Instant::now();
        let mut peers = Vec::with_capacity(self.table.len());
        for info in self.table.peers() {
            let path = self.paths.path_to(&info.id);
            peers.push(PeerStatus::from_info(info, &self.peers_dir, path, now));
        }
        MeshStatus {
            id: self.endpoint.id().to_string(),
            name: self.name.clone(),
            topic: self.topic.clone(),
            shares_daemon: self.share_daemon,
            open_team: self.table.team().is_open(),
            addrs: self.endpoint.addr().ip_addrs().copied().collect(),
            peers_dir: self.peers_dir.clone(),
            peers,
            connections: self.paths.counts(),
        }
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
