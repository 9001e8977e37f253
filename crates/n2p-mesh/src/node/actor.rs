//! The actor behind a [`super::MeshNode`]: the one task that owns the peer table and the
//! peer sockets, and the only one that reads or changes them.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use iroh::{
    Endpoint, EndpointAddr, EndpointId, SecretKey,
    address_lookup::memory::MemoryLookup,
    endpoint::{Connection, WeakConnectionHandle},
};
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
    LEAVE_DRAIN_BOUND, PROBE_TIMEOUT,
    digest_datagrams::{self, DATAGRAM_DIGEST_SIZE},
    dispute::{Disputes, REFUTATION_WAIT},
    health::{Change, LocalHealth, Sign},
    linger::Linger,
    paths::{Ending, PathWatch},
    peer_sockets::PeerSockets,
    redial::{CUT_OFF_DIALS, CutOff, CutOffBy, FirstJoin, JOIN_PEERS, Redial, cut_off, join_peers},
    sweep::Sweep,
};
use crate::{
    proto::{
        announce::{
            AnnounceError, AnnounceKind, Announcement, MAX_ADDRS, SeqClock, Unreachable,
            decode_fresh, encode, peek, unix_ms,
        },
        digest::{
            MAX_DIGEST_SIZE, decode_digest, decode_entry, encode_digests, fits_digest, is_digest,
        },
        names::socket_file_name,
        table::{Applied, Dropped, PeerTable, Reported},
        team::TeamConfig,
        topic::MeshKeys,
    },
    status::{MeshStatus, PeerStatus},
};

/// After a change in the swarm, wait this long before announcing, to coalesce bursts.
const ANNOUNCE_DEBOUNCE: Duration = Duration::from_millis(50);

/// After a neighbour comes up or a digest teaches me a peer, wait this long before sending
/// my neighbours a digest, to coalesce bursts (a starting team brings many at once). What a
/// digest teaches travels one hop per digest, so this wait is paid once per hop: in A/B runs
/// of the builds that led to the one-at-a-time join, 32-node starts took 1.9-2.5 s with 300
/// ms (and 150 ms for announcements) and 0.8-2.0 s with 100 ms (and 50 ms)
/// (docs/BENCHMARKS.md "Joining through one member at a time").
const SYNC_DEBOUNCE: Duration = Duration::from_millis(100);

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

/// How long one call into iroh-gossip may take. Its calls queue on its actor, which can stay
/// stuck (for example on a peer whose connection loop ended); an unbounded wait here would
/// keep this loop from ever seeing its cancel, and the node from leaving.
const GOSSIP_CALL_BOUND: Duration = Duration::from_secs(2);

/// How long a rejoin's new subscription may take before the node gives up on gossip.
const SUBSCRIBE_BOUND: Duration = Duration::from_secs(10);

/// The most senders of stale announcements warned about; later ones are logged at debug.
const MAX_STALE_WARNINGS: usize = 64;

/// How long the node's own dial of an absent member may take.
const MEMBER_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a lost neighbour's other connections may stay open before it counts as alive
/// (then it is neither dialled nor reported), and how often they are looked at.
const PROBE_SETTLE: Duration = Duration::from_secs(2);
const PROBE_POLL: Duration = Duration::from_millis(100);

/// Why a live peer is checked ([`Actor::probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suspicion {
    /// Gossip lost it as a neighbour.
    LostNeighbour,
    /// Another node reported it unreachable, but I hold newer news of it than the report.
    DisputedReport,
    /// Its turn in the routine check ([`super::sweep`]).
    Routine,
}

/// How a check of a peer ([`Actor::probe`]) ended.
#[derive(Debug)]
pub(super) struct Checked {
    peer: EndpointId,
    /// The seq I held from the peer when the check started.
    seq: u64,
    suspicion: Suspicion,
    /// How long each dial of the check could take.
    timeout: Duration,
    answered: bool,
}

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
    /// The endpoint's connections, for the path to each peer.
    pub(super) paths: PathWatch,
    /// The first join of the topic: through a few members, then one more at a time.
    pub(super) first_join: FirstJoin,
    /// When to dial listed members that are absent.
    pub(super) redial: Redial,
    /// When to dial live peers while cut off from gossip.
    pub(super) cut_off: CutOff,
    /// The node's own dials of members, handed to gossip when they connect.
    pub(super) dials: JoinSet<()>,
    /// When to close gossip connections to peers that are not neighbours.
    pub(super) linger: Linger,
    /// When to check a peer that is not a neighbour.
    pub(super) sweep: Sweep,
    /// Peers being checked ([`Self::probe`]), each ending in a [`Checked`].
    pub(super) probes: JoinSet<Checked>,
    /// The peers in [`Self::probes`], so that each is checked once at a time.
    pub(super) probing: std::collections::BTreeSet<EndpointId>,
    /// Reports I dispute, waiting for a refutation or checked.
    pub(super) disputes: Disputes,
    /// How well I keep up: how long my checks wait.
    pub(super) health: LocalHealth,
    /// The latest announcement taken from each peer, by its id's bytes: what my digests
    /// relay. Entries of peers no longer live are pruned when a digest is made.
    pub(super) latest: BTreeMap<[u8; 32], Latest>,
    /// My latest plain `Alive` announcement (no report): when it was made, the address it
    /// carries, and its bytes. Digests carry it while it is young ([`Self::own_for_digest`]).
    pub(super) mine: Option<(Instant, EndpointAddr, Vec<u8>)>,
    /// When [`Self::mine`] was made, on the clock of [`Self::ledger`].
    pub(super) mine_stamp: u64,
    /// What each gossip neighbour was sent in its last two datagram digests, and on which
    /// connection.
    pub(super) ledger: digest_datagrams::Ledger<WeakConnectionHandle>,
}

/// The latest announcement taken from a peer.
#[derive(Debug)]
pub(super) struct Latest {
    seq: u64,
    /// When it was taken in, on the clock of [`Actor::ledger`].
    stamp: u64,
    /// The message as received.
    bytes: Vec<u8>,
    /// Whether the peer reads digests sent as datagrams ([`super::digest_datagrams`]).
    digest_datagrams: bool,
}

/// What taking in one gossip message asks of the actor.
#[derive(Debug, Default, Clone, Copy)]
struct Taken {
    /// Someone reported me unreachable: announce myself (that brings me back).
    refute: bool,
    /// A digest taught me a peer I did not know: pass my digest on to my neighbours.
    learned: bool,
    /// The peer table changed in a way that may change the sockets (not a peer that only
    /// refreshed itself): the sockets follow once the whole message is taken in, not once
    /// per announcement of a digest.
    changed: bool,
}

impl Taken {
    /// Schedules what taking the message asks for: an announcement to refute a report of
    /// me, a digest to pass on what I learned.
    fn follow_up(
        self,
        announce_soon: &mut Option<tokio::time::Instant>,
        sync_soon: &mut Option<tokio::time::Instant>,
    ) {
        if self.refute {
            announce_soon.get_or_insert(tokio::time::Instant::now() + ANNOUNCE_DEBOUNCE);
        }
        if self.learned {
            sync_soon.get_or_insert(tokio::time::Instant::now() + SYNC_DEBOUNCE);
        }
    }

    fn merge(self, other: Self) -> Self {
        Self {
            refute: self.refute || other.refute,
            learned: self.learned || other.learned,
            changed: self.changed || other.changed,
        }
    }
}

impl Actor {
    /// Runs until `cancel` fires, the handle is dropped or the gossip subscription ends;
    /// then removes every peer socket, waits up to [`LEAVE_DRAIN_BOUND`] for the transfers
    /// in flight through them and aborts the rest, and only then announces `Leaving`.
    pub(super) async fn run(
        mut self,
        mut receiver: GossipReceiver,
        mut commands: mpsc::Receiver<Command>,
        mut digests: mpsc::Receiver<bytes::Bytes>,
        cancel: CancellationToken,
    ) {
        let mut heartbeat_at = self.announce(AnnounceKind::Alive, None).await;
        let mut expire_tick = tokio::time::interval(Duration::from_millis(250));
        let mut announce_soon: Option<tokio::time::Instant> = None;
        let mut sync_soon: Option<tokio::time::Instant> = None;
        // Whether my announcement went out while I had a gossip neighbour (so it reached the
        // team): until then each neighbour that comes up makes me announce again.
        let mut flooded = false;
        // When the last gossip message (or digest datagram, whose MAC the reader checked)
        // arrived: a node with live peers that hears nothing is cut off (see
        // `super::redial::CutOff`).
        let mut heard = Instant::now();
        // Peers dropped for silence, and when: watched for stale gossip neighbour state.
        let mut silent_since: BTreeMap<EndpointId, Instant> = BTreeMap::new();
        loop {
            let soon = sleep_until_some(announce_soon);
            let sync = sleep_until_some(sync_soon);
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
                        // Members just added learn about me without waiting a round.
                        announce_soon.get_or_insert(tokio::time::Instant::now() + ANNOUNCE_DEBOUNCE);
                        done.send(()).ok();
                    }
                    // The handle is gone: nobody can ask or make us leave any more.
                    None => break,
                },
                event = receiver.next() => match event {
                    Some(Ok(Event::Received(msg))) => {
                        heard = Instant::now();
                        self.handle_message(&msg.content).follow_up(&mut announce_soon, &mut sync_soon);
                    }
                    Some(Ok(Event::NeighborUp(peer))) => {
                        debug!(peer = %peer.fmt_short(), "gossip neighbor up");
                        self.first_join.neighbour_up(&peer);
                        if !flooded {
                            announce_soon.get_or_insert(tokio::time::Instant::now() + ANNOUNCE_DEBOUNCE);
                        }
                        sync_soon.get_or_insert(tokio::time::Instant::now() + SYNC_DEBOUNCE);
                    }
                    Some(Ok(Event::NeighborDown(peer))) => {
                        debug!(peer = %peer.fmt_short(), "gossip neighbor down");
                        self.ledger.forget(&peer);
                        self.probe(peer, Suspicion::LostNeighbour);
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
                Some(bytes) = digests.recv() => {
                    heard = Instant::now();
                    self.handle_message(&bytes).follow_up(&mut announce_soon, &mut sync_soon);
                }
                Some(Ok(checked)) = self.probes.join_next(), if !self.probes.is_empty() => {
                    self.probing.remove(&checked.peer);
                    self.disputes.ended(&checked.peer);
                    let now = Instant::now();
                    let change = if checked.answered {
                        self.health.better(now)
                    } else {
                        self.health.worse(Sign::MissedCheck, now)
                    };
                    self.log_health(change, now);
                    if !checked.answered && let Some(report) = self.lost(&checked) {
                        heartbeat_at = self.announce(AnnounceKind::Alive, Some(report)).await;
                    }
                }
                _ = soon => {
                    announce_soon = None;
                    flooded |= receiver.neighbors().next().is_some();
                    heartbeat_at = self.announce(AnnounceKind::Alive, None).await;
                }
                _ = sync => {
                    sync_soon = None;
                    self.sync(receiver.neighbors().collect()).await;
                }
                _ = tokio::time::sleep_until(heartbeat_at) => {
                    flooded |= receiver.neighbors().next().is_some();
                    heartbeat_at = self.announce(AnnounceKind::Alive, None).await;
                }
                _ = expire_tick.tick() => {
                    let now = Instant::now();
                    let tick = self.health.tick(now);
                    self.log_health(tick.change, now);
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
                    let live: std::collections::BTreeSet<EndpointId> = self.table.live_ids().collect();
                    let neighbours: std::collections::BTreeSet<EndpointId> = receiver.neighbors().collect();
                    let me = self.endpoint.id();
                    let absent: Vec<EndpointId> = self
                        .table
                        .team()
                        .members()
                        .iter()
                        .map(|m| m.id)
                        .filter(|id| *id != me && !live.contains(id) && !neighbours.contains(id))
                        .collect();
                    let knows = |id: &EndpointId| live.contains(id) || neighbours.contains(id);
                    let more = self.first_join.due(knows, now);
                    if !more.is_empty() {
                        debug!(count = more.len(), "no neighbour yet through the members joined through; joining through more");
                        self.dial_members(more).await;
                    }
                    self.redial.note_live(live.len(), now);
                    let due = self.redial.due(absent, now);
                    self.dial_members(due).await;
                    self.mend_cut_off(&live, &neighbours, heard, now).await;
                    if self.probes.is_empty() {
                        // A check whose task panicked left its peer here (and, if it was
                        // a disputed report's, held one of their slots until now).
                        for peer in std::mem::take(&mut self.probing) {
                            self.disputes.ended(&peer);
                        }
                    }
                    let table = &self.table;
                    for peer in self.disputes.due(now, |peer| table.seq_of(peer)) {
                        if !self.probe(peer, Suspicion::DisputedReport) {
                            self.disputes.ended(&peer);
                        }
                    }
                    if let Some(peer) = self.sweep.due(&live, &neighbours, &self.probing, tick.late, now) {
                        self.probe(peer, Suspicion::Routine);
                    }
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
                                && neighbours.contains(*id)
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
                                flooded = false;
                                announce_soon.get_or_insert(tokio::time::Instant::now() + ANNOUNCE_DEBOUNCE);
                            }
                            None => break,
                        }
                    }
                }
            }
        }
        self.sockets.leave(LEAVE_DRAIN_BOUND).await;
        self.announce(AnnounceKind::Leaving, None).await;
        tokio::time::sleep(LEAVE_GRACE).await;
    }

    /// Verifies and applies one gossip message: an announcement, or a digest of them; then
    /// brings the peer sockets in line with the table, once per message.
    fn handle_message(&mut self, bytes: &[u8]) -> Taken {
        let taken = if is_digest(bytes) {
            self.handle_digest(bytes)
        } else {
            self.handle_announcement(bytes)
        };
        if taken.changed || self.sockets.failed() {
            let desired = self.table.sockets();
            self.reconcile(&desired);
        }
        taken
    }

    /// Verifies and applies one announcement. One that is not newer than the one I hold of
    /// its sender (gossip and a digest can both bring it) is dropped before its signature is
    /// checked, as in a digest.
    fn handle_announcement(&mut self, bytes: &[u8]) -> Taken {
        if let Ok((id, seq)) = peek(bytes, self.keys.announce_key())
            && self.holds_as_new(&id, seq)
        {
            debug!("ignored announcement: not newer than the one I hold");
            return Taken::default();
        }
        match decode_fresh(bytes, self.keys.announce_key(), unix_ms(SystemTime::now())) {
            Ok(ann) => self.take(&ann, bytes, Instant::now()),
            Err(e @ AnnounceError::Stale { id, .. }) => {
                // A replay, a message held up on the way (an overloaded host), or a member
                // whose clock is off: the last needs fixing by a human, so say it once per
                // sender where they look.
                if self.stale_warned.len() < MAX_STALE_WARNINGS && self.stale_warned.insert(id) {
                    warn!(target: "n2p", "dropped {e}: replayed, held up on the way, or one of the two clocks is off; if this peer is real and keeps being dropped, check both clocks (NTP)");
                } else {
                    debug!("dropped gossip message: {e}");
                }
                Taken::default()
            }
            Err(e) => {
                debug!("dropped gossip message: {e}");
                Taken::default()
            }
        }
    }

    /// Takes in the announcements of a neighbour's digest that are newer than mine (the
    /// rest are skipped before their signatures are checked); each counts as heard when
    /// its sender sent it, not now.
    fn handle_digest(&mut self, bytes: &[u8]) -> Taken {
        let key = self.keys.announce_key().clone();
        let entries = match decode_digest(bytes, &key) {
            Ok(entries) => entries,
            Err(e) => {
                debug!("dropped gossip digest: {e}");
                return Taken::default();
            }
        };
        let me = *self.endpoint.id().as_bytes();
        let (now, now_ms) = (Instant::now(), unix_ms(SystemTime::now()));
        let mut taken = Taken::default();
        for entry in entries {
            let Ok((id, seq)) = peek(entry, &key) else {
                continue;
            };
            if id == me || self.holds_as_new(&id, seq) {
                continue;
            }
            match decode_entry(entry, &key, now_ms) {
                Ok((ann, age)) => {
                    let heard = now.checked_sub(age).unwrap_or(now);
                    let joined = !self.table.is_live(&ann.id);
                    let one = self.take(&ann, entry, heard);
                    let learned = joined && self.table.is_live(&ann.id);
                    taken = taken.merge(one).merge(Taken {
                        learned,
                        ..Taken::default()
                    });
                }
                Err(e) => debug!("dropped a relayed announcement: {e}"),
            }
        }
        taken
    }

    /// Whether I hold an announcement of `id` at least as new as `seq`: one at `seq` is then
    /// dropped before its signature is checked.
    fn holds_as_new(&self, id: &[u8; 32], seq: u64) -> bool {
        self.latest.get(id).is_some_and(|known| known.seq >= seq)
    }

    /// Applies one verified announcement (`bytes` as received), heard at `heard`. The peer
    /// sockets follow once the whole message is taken in ([`Self::handle_message`]).
    fn take(&mut self, ann: &Announcement, bytes: &[u8], heard: Instant) -> Taken {
        let applied = self.table.apply(ann, heard);
        let mut taken = Taken::default();
        if applied.is_ok()
            && let Some(report) = ann.unreachable
        {
            if report.id == self.endpoint.id() {
                info!(target: "n2p", "peer {} reported me unreachable; announcing myself again", ann.id.fmt_short());
                taken.refute = true;
                // Now, not `heard`: a report relayed in a digest is dated back to when it
                // was made.
                let now = Instant::now();
                let change = self.health.worse(Sign::ReportedMe, now);
                self.log_health(change, now);
            } else {
                match self.table.report_unreachable(&report, heard) {
                    Reported::Dropped => {
                        info!(target: "n2p", "peer {} is unreachable (reported by {}); dropped", report.id.fmt_short(), ann.id.fmt_short());
                        self.latest.remove(report.id.as_bytes());
                        taken.changed = true;
                    }
                    Reported::NotLive => {}
                    // The peer announced itself after the report was made (seqs are the
                    // senders' clocks): it was there then, as an old report relayed in a
                    // digest may show.
                    Reported::Overruled { held } if held >= ann.seq => {}
                    Reported::Overruled { held } => {
                        // The reporter missed the peer's latest announcement, which in a large
                        // team are tens of seconds apart: the report may still be true, so
                        // this node checks for itself, unless the peer refutes it first, and
                        // reports with the seq it holds if the peer is gone.
                        let now = Instant::now();
                        let wait = self.health.wait(REFUTATION_WAIT, now);
                        info!(target: "n2p", "peer {} reported {} unreachable, but I hold newer news of it (seq {held} > {}); checking it myself unless it announces itself within {wait:?}", ann.id.fmt_short(), report.id.fmt_short(), report.seq);
                        self.disputes.note(report.id, held, now + wait);
                    }
                }
            }
        }
        // New or changed addresses go to the address lookup, for dialing the peer.
        let addr = matches!(applied, Ok(Applied::Joined | Applied::Changed))
            .then(|| self.table.endpoint_addr(&ann.id))
            .flatten();
        if let Some(addr) = addr.filter(|a| !a.is_empty()) {
            self.memory.add_endpoint_info(addr);
        }
        match applied {
            Ok(applied) => {
                if matches!(applied, Applied::Left | Applied::AlreadyGone) {
                    self.latest.remove(ann.id.as_bytes());
                } else {
                    let latest = Latest {
                        seq: ann.seq,
                        stamp: self.ledger.stamp(),
                        bytes: bytes.to_vec(),
                        digest_datagrams: ann.digest_datagrams,
                    };
                    self.latest.insert(*ann.id.as_bytes(), latest);
                }
                if matches!(applied, Applied::Left) {
                    self.full_warned = false;
                    info!(target: "n2p", "peer {} left", ann.id.fmt_short());
                }
                // A peer that only refreshed itself changes no socket (nor does news of
                // one that was gone already).
                taken.changed |= !matches!(applied, Applied::Refreshed | Applied::AlreadyGone);
            }
            Err(dropped @ Dropped::Full { .. }) if !self.full_warned => {
                // Logged once each time the cap is reached (again after peers went).
                warn!(target: "n2p", "{dropped}; further outsiders are ignored until peers leave (listed members are always admitted)");
                self.full_warned = true;
            }
            Err(dropped) => debug!("ignored announcement: {dropped}"),
        }
        taken
    }

    /// Sends my gossip `neighbours` (only them) a digest: my own announcement, fresh, and the
    /// latest one of every live peer. It goes out as datagrams on the gossip connection to
    /// each ([`super::digest_datagrams`]), and through gossip too (whole) while one of them
    /// cannot take it so, or an entry is too large for a datagram. A neighbour that had two
    /// datagram digests on the same connection before gets only the entries taken in since
    /// the older of the two ([`Self::ledger`]; my own counts as taken in when it was made),
    /// or nothing if there are none.
    ///
    /// Gossip alone is not enough: a neighbours-only broadcast goes to plumtree's eager peers
    /// and never to its lazy ones (iroh-gossip 0.101, `plumtree.rs`, `broadcast`). A new link
    /// starts eager but turns lazy as soon as a flooded message comes over it twice, which in
    /// a starting team takes milliseconds, so a digest sent [`SYNC_DEBOUNCE`] after a
    /// neighbour came up often missed it. Flooding digests instead reached everyone sooner
    /// but cost 110-200 floods per 100-node start and a quarter more CPU per node; that was
    /// not kept (docs/BENCHMARKS.md, "How many members to join through first").
    async fn sync(&mut self, neighbours: std::collections::BTreeSet<EndpointId>) {
        let live: std::collections::BTreeSet<[u8; 32]> =
            self.table.live_ids().map(|id| *id.as_bytes()).collect();
        self.latest.retain(|id, _| live.contains(id));
        let Some(mine) = self.own_for_digest() else {
            return;
        };
        let key = self.keys.announce_key().clone();
        self.ledger.keep_only(&neighbours);
        // The neighbours that take digests as datagrams, by what they were sent last.
        let mut unreached = false;
        let mut by_since: BTreeMap<Option<u64>, Vec<(EndpointId, Connection)>> = BTreeMap::new();
        for peer in &neighbours {
            let reads = self
                .latest
                .get(peer.as_bytes())
                .is_some_and(|l| l.digest_datagrams);
            let Some(conn) = digest_datagrams::connection(&self.paths, peer, reads) else {
                unreached = true;
                continue;
            };
            let since = self.ledger.since(peer, is(&conn));
            by_since.entry(since).or_default().push((*peer, conn));
        }
        for (since, group) in by_since {
            let news = |stamp: u64| since.is_none_or(|s| stamp > s);
            let mut entries: Vec<&[u8]> = news(self.mine_stamp)
                .then_some(mine.as_slice())
                .into_iter()
                .chain(
                    self.latest
                        .values()
                        .filter(|l| news(l.stamp))
                        .map(|l| l.bytes.as_slice()),
                )
                .collect();
            // From a random entry on: a receiver that drops what comes last in a burst of
            // digests does not lose the same entries from every neighbour.
            if !entries.is_empty() {
                let start = rand::random_range(0..entries.len());
                entries.rotate_left(start);
            }
            let digests: Vec<bytes::Bytes> = if entries.is_empty() {
                Vec::new()
            } else {
                encode_digests(entries, &key, DATAGRAM_DIGEST_SIZE)
                    .into_iter()
                    .map(Into::into)
                    .collect()
            };
            for (peer, conn) in group {
                if digests.is_empty() || digest_datagrams::send(&conn, &digests) {
                    self.ledger.sent(peer, conn.weak_handle(), is(&conn));
                } else {
                    unreached = true;
                }
            }
        }
        let entries = || {
            std::iter::once(mine.as_slice()).chain(self.latest.values().map(|l| l.bytes.as_slice()))
        };
        // An entry too large for a datagram's digest (none is today: this build's largest
        // announcement is well under a kilobyte) still reaches them through gossip.
        let all_fit = entries().all(|e| fits_digest(e.len(), DATAGRAM_DIGEST_SIZE));
        if !unreached && all_fit {
            return;
        }
        let Some(sender) = &self.sender else { return };
        for digest in encode_digests(entries(), &key, MAX_DIGEST_SIZE) {
            bounded(
                "sending a digest",
                sender.broadcast_neighbors(digest.into()),
            )
            .await;
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
        for id in self.table.set_team(team) {
            info!(target: "n2p", "peer {} is not admitted by the reloaded team file; dropped", id.fmt_short());
        }
        let desired = self.table.sockets();
        self.reconcile(&desired);
        self.dial_members(fresh).await;
    }

    /// Dials a live peer (not a current neighbour, where there is another: one that passes
    /// nothing on would change nothing) when [`CutOff`] says the node, with `live` peers and
    /// `neighbours`, has been cut off long enough; the last gossip message came at `heard`.
    async fn mend_cut_off(
        &mut self,
        live: &std::collections::BTreeSet<EndpointId>,
        neighbours: &std::collections::BTreeSet<EndpointId>,
        heard: Instant,
        now: Instant,
    ) {
        let slowest = self.table.slowest_heartbeat().unwrap_or_default();
        let by = cut_off(
            !live.is_empty(),
            !neighbours.is_empty(),
            heard.elapsed(),
            slowest,
        );
        if !self.cut_off.due(by, now) {
            return;
        }
        let mut peers: Vec<EndpointId> = live.difference(neighbours).copied().collect();
        if peers.is_empty() {
            peers = live.iter().copied().collect();
        }
        let dial = join_peers(&[], &peers, CUT_OFF_DIALS);
        if let Some((since, by)) = self.cut_off.since() {
            let why = match by {
                CutOffBy::NoNeighbour => "no gossip neighbour",
                CutOffBy::Silence => "no gossip message",
            };
            info!(
                target: "n2p",
                "{why} for {:.1?} (heard last {:.1?} ago) while {} peers are live; dialing {} of them",
                now.saturating_duration_since(since),
                heard.elapsed(),
                live.len(),
                dial.len()
            );
        }
        self.dial_members(dial).await;
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
                        bounded("handing gossip my connection", gossip.handle_connection(conn)).await;
                    }
                    Ok(Err(e)) => debug!(peer = %id.fmt_short(), "cannot reach member: {e}"),
                    Err(_) => debug!(peer = %id.fmt_short(), "cannot reach member within {MEMBER_DIAL_TIMEOUT:?}"),
                }
            });
        }
        // Finished dials are collected here; the set stays as small as the members.
        while self.dials.try_join_next().is_some() {}
        if let Some(sender) = &self.sender {
            bounded(
                "joining the topic through the members",
                sender.join_peers(members),
            )
            .await;
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
        let mut peers = join_peers(&[], &live, JOIN_PEERS);
        if peers.len() < JOIN_PEERS {
            peers = join_peers(&peers, &self.bootstrap, JOIN_PEERS);
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
        let subscribe = self.gossip.subscribe(self.keys.topic_id(), peers);
        match tokio::time::timeout(SUBSCRIBE_BOUND, subscribe).await {
            Ok(Ok(topic)) => {
                let (sender, receiver) = topic.split();
                self.sender = Some(sender);
                Some(receiver)
            }
            Ok(Err(e)) => {
                warn!("cannot rejoin the gossip topic: {e}");
                None
            }
            Err(_) => {
                warn!(
                    "cannot rejoin the gossip topic: no answer from gossip within {SUBSCRIBE_BOUND:?}"
                );
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
            check_wait_ms: Some(
                u64::try_from(self.health.wait(PROBE_TIMEOUT, now).as_millis()).unwrap_or(u64::MAX),
            ),
        }
    }

    fn reconcile(&mut self, desired: &BTreeMap<String, EndpointId>) {
        let files: BTreeMap<String, EndpointId> = desired
            .iter()
            .map(|(name, id)| (socket_file_name(name), *id))
            .collect();
        self.sockets.reconcile(&files);
    }

    /// Checks whether `peer`, live here, is still there: a live peer takes a dial (handed to
    /// gossip, like [`Self::dial_members`]); one that does not answer within
    /// [`PROBE_TIMEOUT`] is reported when the check ends (see [`Self::lost`]). A peer lost by
    /// gossip's own reshuffling keeps a connection open, or had it closed on purpose, and is
    /// not dialled (see [`PROBE_SETTLE`], [`Ending`]); one that answers is not reported
    /// either, so only real losses are. A routine check ([`super::sweep::check`]) looks only
    /// at whether a connection is open, then dials. One check per peer at a time; each dial
    /// waits [`PROBE_TIMEOUT`] grown by my local health ([`super::health`]). Returns whether
    /// a check started.
    fn probe(&mut self, peer: EndpointId, suspicion: Suspicion) -> bool {
        let Some(seq) = self.table.seq_of(&peer) else {
            return false;
        };
        if !self.probing.insert(peer) {
            return false;
        }
        let (endpoint, gossip, paths) = (
            self.endpoint.clone(),
            self.gossip.clone(),
            self.paths.clone(),
        );
        let timeout = self.health.wait(PROBE_TIMEOUT, Instant::now());
        if suspicion == Suspicion::Routine {
            self.probes.spawn(async move {
                let answered = super::sweep::check(&endpoint, &paths, peer, timeout).await;
                Checked {
                    peer,
                    seq,
                    suspicion,
                    timeout,
                    answered,
                }
            });
            return true;
        }
        self.probes.spawn(async move {
            // The connection gossip lost may have ended a moment before it said so.
            let since = Instant::now()
                .checked_sub(PROBE_SETTLE)
                .unwrap_or_else(Instant::now);
            let had_connection = paths.connected(&peer);
            // A crashed peer's other connections time out too, within moments of the one
            // gossip lost; one that stays open means gossip only moved the peer out of its
            // active view.
            let settle = tokio::time::Instant::now() + PROBE_SETTLE;
            while paths.connected(&peer) {
                if tokio::time::Instant::now() >= settle {
                    return Checked { peer, seq, suspicion, timeout, answered: true };
                }
                tokio::time::sleep(PROBE_POLL).await;
            }
            // A connection closed on purpose (by either side, or reset by a restarted peer)
            // had the peer there to its end: only one that went silent hints at a crash. A
            // dial of a live peer can miss its bound on an overloaded machine, so a peer
            // that closed cleanly is not dialled at all. (The ending is noted by a task
            // that runs just after the close; not yet noted counts as silent.) A disputed
            // report about a peer I had no connection with has no ending to wait for.
            if suspicion == Suspicion::LostNeighbour || had_connection {
                let ending = loop {
                    let ending = paths.ending_since(&peer, since);
                    if ending.is_some() || tokio::time::Instant::now() >= settle {
                        break ending;
                    }
                    tokio::time::sleep(PROBE_POLL).await;
                };
                if ending == Some(Ending::Closed) {
                    debug!(peer = %peer.fmt_short(), "its connection was closed cleanly; not dialled");
                    return Checked { peer, seq, suspicion, timeout, answered: true };
                }
            }
            let connect = endpoint.connect(peer, iroh_gossip::net::GOSSIP_ALPN);
            let answered = match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(conn)) => {
                    bounded(
                        "handing gossip my connection",
                        gossip.handle_connection(conn),
                    )
                    .await;
                    true
                }
                Ok(Err(e)) => {
                    debug!(peer = %peer.fmt_short(), "no answer to my dial: {e}");
                    false
                }
                Err(_) => false,
            };
            Checked { peer, seq, suspicion, timeout, answered }
        });
        true
    }

    /// Logs a change of my local health.
    fn log_health(&self, change: Option<Change>, now: Instant) {
        match change {
            Some(Change::Strained(sign)) => {
                let wait = self.health.wait(PROBE_TIMEOUT, now);
                info!(target: "n2p", "this node is not keeping up ({sign}); its checks of peers now wait {wait:?} or more before reporting one unreachable, until it recovers");
            }
            Some(Change::Recovered) => {
                info!(target: "n2p", "this node keeps up again; its checks of peers wait {PROBE_TIMEOUT:?} again");
            }
            None => {}
        }
    }

    /// A check of a peer got no answer: drops the peer here
    /// unless it has announced itself since, and returns the report to broadcast.
    fn lost(&mut self, checked: &Checked) -> Option<Unreachable> {
        let peer = checked.peer;
        let report = Unreachable {
            id: peer,
            seq: checked.seq,
        };
        if self.table.report_unreachable(&report, Instant::now()) != Reported::Dropped {
            return None;
        }
        self.latest.remove(peer.as_bytes());
        let why = match checked.suspicion {
            Suspicion::LostNeighbour => "lost as a gossip neighbour; no answer to a dial",
            Suspicion::DisputedReport => "reported by another peer; no answer to a dial",
            Suspicion::Routine => "a routine check; no answer to 2 dials",
        };
        info!(target: "n2p", "peer {} is unreachable ({why} within {:?}); dropped", peer.fmt_short(), checked.timeout);
        let desired = self.table.sockets();
        self.reconcile(&desired);
        Some(report)
    }

    /// Broadcasts my announcement (with `report`, if any) and returns when the next
    /// heartbeat is due: [`PeerTable::heartbeat`] from now.
    async fn announce(
        &mut self,
        kind: AnnounceKind,
        report: Option<Unreachable>,
    ) -> tokio::time::Instant {
        let next = tokio::time::Instant::now() + self.table.heartbeat();
        if let Some(bytes) = self.my_announcement(kind, report)
            && let Some(sender) = &self.sender
        {
            bounded(
                "broadcasting my announcement",
                sender.broadcast(bytes.into()),
            )
            .await;
        }
        next
    }

    /// My announcement, signed and sealed (`None`, logged, if it cannot be encoded).
    fn my_announcement(
        &mut self,
        kind: AnnounceKind,
        report: Option<Unreachable>,
    ) -> Option<Vec<u8>> {
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
        ann.interval = Some(self.table.heartbeat());
        ann.unreachable = report;
        ann.digest_datagrams = true;
        let bytes = encode(&ann, &self.secret_key, self.keys.announce_key())
            .inspect_err(|e| warn!("cannot encode my announcement: {e}"))
            .ok()?;
        if kind == AnnounceKind::Alive && report.is_none() {
            self.mine = Some((Instant::now(), addr, bytes.clone()));
            self.mine_stamp = self.ledger.stamp();
        }
        Some(bytes)
    }

    /// My announcement for a digest: the latest one, while it is younger than a third of my
    /// heartbeat interval and carries the address I have now; otherwise a new one. A new one
    /// per digest would give every digest a new seq of mine, which each neighbour verifies,
    /// keeps and relays in its own digests, where it is verified again: while a large team
    /// starts, gossip neighbours come and go several times a second, and reusing the latest
    /// took a 100-node start from 197-229 to 167-182 ms of CPU per node (docs/BENCHMARKS.md,
    /// "A crash reported by a reporter behind the news, and digests that stop minting
    /// seqs"). A third of the interval keeps the age receivers count me from well inside the
    /// expiry they give me (three intervals).
    fn own_for_digest(&mut self) -> Option<Vec<u8>> {
        let young = self.table.heartbeat() / 3;
        if let Some((made, addr, bytes)) = &self.mine
            && made.elapsed() < young
            && *addr == self.endpoint.addr()
        {
            return Some(bytes.clone());
        }
        self.my_announcement(AnnounceKind::Alive, None)
    }
}

/// Whether a connection the ledger remembers is `conn` (it holds the connection weakly, so
/// that its id cannot go to another one meanwhile).
fn is(conn: &Connection) -> impl Fn(&WeakConnectionHandle) -> bool + use<> {
    let id = conn.stable_id();
    move |sent| sent.upgrade().is_some_and(|c| c.stable_id() == id)
}

/// Awaits one call into iroh-gossip for at most [`GOSSIP_CALL_BOUND`]; a failure or a
/// timeout is logged (at debug: the next heartbeat or digest repairs a missed one) and
/// yields `None`.
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(GOSSIP_CALL_BOUND, call).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            debug!("{what} failed: {e}");
            None
        }
        Err(_) => {
            debug!("{what}: no answer from gossip within {GOSSIP_CALL_BOUND:?}; given up");
            None
        }
    }
}

/// Sleeps until `at`, or forever when it is `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
