//! The live peer table: a state machine, without I/O or clocks, that takes verified
//! announcements and the time, and says which peers are live, what they are called and
//! which of them get a socket in the peers directory.
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! use iroh::SecretKey;
//! use n2p_mesh::proto::{
//!     announce::{AnnounceKind, Announcement},
//!     table::{PeerTable, diff_sockets},
//!     team::{SecretSource, TeamConfig},
//! };
//!
//! let team = TeamConfig::open_team(SecretSource::Env("S".into()), Default::default());
//! let me = SecretKey::from_bytes(&[1; 32]).public();
//! let bob = SecretKey::from_bytes(&[2; 32]).public();
//! let mut table = PeerTable::new(me, "alice", team);
//!
//! let t0 = Instant::now();
//! let before = table.sockets();
//! let mut ann = Announcement::new(bob, "bob", 1, AnnounceKind::Alive);
//! ann.shares_daemon = true;
//! table.apply(&ann, t0)?;
//! let changes = diff_sockets(&before, &table.sockets());
//! assert_eq!(changes.added, vec![("bob".to_owned(), bob)]);
//!
//! // silent for the whole expiry: gone
//! table.expire(t0 + table.team().expiry());
//! assert!(table.sockets().is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Rules
//!
//! - My own id is ignored. In a closed team, ids that are not members are dropped.
//! - Per id, only announcements with a higher `seq` than the last one seen count; the rest
//!   are replays or reordered and dropped. The last seq of a departed peer is remembered
//!   for a while ([`tombstone_keep`]), so a delayed or replayed old announcement cannot
//!   bring it back; once it is forgotten, such an announcement is older than the
//!   freshness window that nodes check before the table sees anything
//!   ([`decode_fresh`](crate::proto::announce::decode_fresh)).
//! - `Leaving` removes a peer at once; [`PeerTable::expire`] removes peers not heard from
//!   for their expiry: the team's, or three of the intervals the peer announced or of my own
//!   when that is longer ([`PeerTable::expiry_of`]; large teams announce less often, see
//!   [`heartbeat_interval`]).
//! - A report that a peer is unreachable ([`PeerTable::report_unreachable`]) removes it at
//!   once, unless something newer than the reporter's news of it has arrived here.
//! - Names: see [`PeerTable::sockets`].
//! - A live peer gets a socket when it shares its daemon, speaks a daemon protocol version
//!   I accept, and my team config lets me push (`permits(my id, Push)`): without that right the
//!   peers would refuse my streams, so offering sockets would only produce failures.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    ops::RangeInclusive,
    sync::Arc,
    time::{Duration, Instant},
};

use iroh::{EndpointAddr, EndpointId, RelayUrl, TransportAddr};
use n2p_core::access::Permission;

use crate::proto::{
    announce::{AnnounceKind, Announcement, FRESHNESS_WINDOW, PROTO_VERSION, Unreachable},
    names::{id_stem, name_key, sanitize_name, socket_file_name, suffixed_name},
    team::TeamConfig,
};

/// The most peers outside the team file's member list a table holds; announcements from
/// further new outsiders are dropped. Bounds the memory a holder of an open team's secret
/// can make its members spend. Listed members do not count and are always admitted; no
/// peer is ever evicted to make room.
pub const MAX_PEERS: usize = 1024;

/// A departed peer's last seq is remembered for this many expiry periods.
pub const TOMBSTONE_FACTOR: u32 = 10;

/// How long a departed peer's last seq is remembered: [`TOMBSTONE_FACTOR`] expiry periods,
/// and at least twice the [`FRESHNESS_WINDOW`], so an announcement older than any tombstone
/// forgotten is also too old to pass [`decode_fresh`](crate::proto::announce::decode_fresh)
/// (even from a sender whose clock is a whole window ahead).
pub fn tombstone_keep(expiry: std::time::Duration) -> std::time::Duration {
    expiry
        .saturating_mul(TOMBSTONE_FACTOR)
        .max(FRESHNESS_WINDOW.saturating_mul(2))
}

/// How many of a peer's announcement intervals may pass without news before it is dropped
/// (so two lost announcements in a row do not drop a live peer).
pub const INTERVALS_PER_EXPIRY: u32 = 3;

/// The share of the whole team's announcements one node takes in: with `n` live peers a
/// node announces itself at most every `n × HEARTBEAT_SPACING`, so each node receives at
/// most one announcement per `HEARTBEAT_SPACING` on average, whatever the team's size.
pub const HEARTBEAT_SPACING: Duration = Duration::from_millis(250);

/// The longest interval a node announces at and receivers honour: a third of the longest
/// `expiry_secs`.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(super::team::MAX_EXPIRY_SECS / 3);

/// How often a node with `live_peers` peers announces itself: the team's interval
/// (`expiry_secs / 3`), stretched to `live_peers × HEARTBEAT_SPACING` when that is longer,
/// and at most [`MAX_HEARTBEAT`]. A crash is then noticed by the crashed node's gossip
/// neighbours and reported ([`PeerTable::report_unreachable`]), not by everyone's expiry.
pub fn heartbeat_interval(team_interval: Duration, live_peers: usize) -> Duration {
    let spread = HEARTBEAT_SPACING.saturating_mul(u32::try_from(live_peers).unwrap_or(u32::MAX));
    team_interval
        .max(spread)
        .min(MAX_HEARTBEAT.max(team_interval))
}

/// The most departed peers remembered at once (the oldest are forgotten first).
pub const MAX_TOMBSTONES: usize = 4096;

/// What an accepted announcement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// A new live peer.
    Joined,
    /// A known peer changed its name, sharing, version or addresses.
    Changed,
    /// A known peer said it is still alive, nothing else changed.
    Refreshed,
    /// A live peer left.
    Left,
    /// A peer that was not live said it is leaving (remembered so older news cannot revive
    /// it).
    AlreadyGone,
}

/// What [`PeerTable::report_unreachable`] did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// The peer was live here and is dropped.
    Dropped,
    /// The peer is not live here: nothing to drop.
    NotLive,
    /// I hold newer news of the peer than the reporter (seq `held`): it stays. The reporter
    /// may have missed the peer's last announcement, so the report may still be true.
    Overruled {
        /// The seq of the peer's latest announcement here.
        held: u64,
    },
}

/// Why an announcement was not taken into the table. Log at debug level and carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Dropped {
    /// It is my own announcement, echoed back.
    #[error("own announcement")]
    OwnId,
    /// The sender is not a member of this closed team.
    #[error("{} is not a member of this closed team", id.fmt_short())]
    NotMember {
        /// The sender.
        id: EndpointId,
    },
    /// Not newer than what was already seen from this sender.
    #[error("replayed or reordered announcement from {}: seq {got} <= {last}", id.fmt_short())]
    Replay {
        /// The sender.
        id: EndpointId,
        /// The last seq seen.
        last: u64,
        /// The seq received.
        got: u64,
    },
    /// The table already holds [`MAX_PEERS`] peers outside the member list.
    #[error("peer table full ({MAX_PEERS} peers outside the member list); ignoring {}", id.fmt_short())]
    Full {
        /// The sender.
        id: EndpointId,
    },
}

/// The table's record of one live peer (status reports are made from it: see
/// [`crate::status::PeerStatus`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// Its endpoint id.
    pub id: EndpointId,
    /// The name it goes by here (team file, or sanitised and de-duplicated announcement).
    pub name: String,
    /// The name it announced, as it announced it.
    pub announced_name: String,
    /// Whether it is listed in the team file.
    pub member: bool,
    /// Whether it shares its daemon.
    pub shares_daemon: bool,
    /// The daemon protocol version it serves.
    pub proto_version: u16,
    /// Whether I speak that version.
    pub compatible: bool,
    /// Its socket file name in the peers directory, when it has one.
    pub socket: Option<String>,
    /// When it was first seen (in this stretch of being live).
    pub first_seen: Instant,
    /// When it was last heard from.
    pub last_seen: Instant,
    /// Its latest seq.
    pub seq: u64,
    /// Direct addresses it announced.
    pub addrs: Vec<SocketAddr>,
    /// Its home relay, if it announced one.
    pub relay: Option<RelayUrl>,
}

/// Socket changes between two [`PeerTable::sockets`] maps: apply `removed`, then `added`.
/// A name that moved to another id appears in both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketChanges {
    /// Sockets to remove, as (name, id it pointed to).
    pub removed: Vec<(String, EndpointId)>,
    /// Sockets to create, as (name, id to forward to).
    pub added: Vec<(String, EndpointId)>,
}

impl SocketChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }
}

/// What changed from `old` to `new` (both from [`PeerTable::sockets`]).
pub fn diff_sockets(
    old: &BTreeMap<String, EndpointId>,
    new: &BTreeMap<String, EndpointId>,
) -> SocketChanges {
    let removed = old
        .iter()
        .filter(|(name, id)| new.get(*name) != Some(*id))
        .map(|(name, id)| (name.clone(), *id))
        .collect();
    let added = new
        .iter()
        .filter(|(name, id)| old.get(*name) != Some(*id))
        .map(|(name, id)| (name.clone(), *id))
        .collect();
    SocketChanges { removed, added }
}

#[derive(Debug, Clone)]
struct Peer {
    announced_name: String,
    seq: u64,
    shares_daemon: bool,
    proto_version: u16,
    addrs: Vec<SocketAddr>,
    relay: Option<RelayUrl>,
    /// The announcement interval it promised, if it did.
    interval: Option<Duration>,
    first_seen: Instant,
    last_seen: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Tombstone {
    seq: u64,
    at: Instant,
}

/// The live peers of one mesh, as one node sees them.
#[derive(Debug, Clone)]
pub struct PeerTable {
    me: EndpointId,
    my_name: String,
    team: Arc<TeamConfig>,
    proto_versions: RangeInclusive<u16>,
    peers: BTreeMap<EndpointId, Peer>,
    tombstones: BTreeMap<EndpointId, Tombstone>,
    /// Final names of the live peers, recomputed whenever the live set or a name changes.
    names: BTreeMap<EndpointId, String>,
}

impl PeerTable {
    /// An empty table for node `me`, which announces itself as `my_name`, in `team`.
    /// Accepts peers speaking daemon protocol [`PROTO_VERSION`].
    pub fn new(me: EndpointId, my_name: &str, team: impl Into<Arc<TeamConfig>>) -> Self {
        Self {
            me,
            my_name: my_name.to_owned(),
            team: team.into(),
            proto_versions: PROTO_VERSION..=PROTO_VERSION,
            peers: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            names: BTreeMap::new(),
        }
    }

    /// Sets the daemon protocol versions I can use; peers serving others get no socket.
    pub fn with_proto_versions(mut self, versions: RangeInclusive<u16>) -> Self {
        self.proto_versions = versions;
        self
    }

    /// My own id.
    pub fn me(&self) -> EndpointId {
        self.me
    }

    /// The team config the table applies.
    pub fn team(&self) -> &TeamConfig {
        &self.team
    }

    /// Puts `team` in force (a reloaded team file): live peers it does not admit are
    /// removed, and returned; names are recomputed from its member list.
    pub fn set_team(&mut self, team: Arc<TeamConfig>) -> Vec<EndpointId> {
        self.team = team;
        let gone: Vec<EndpointId> = self
            .peers
            .keys()
            .filter(|id| !self.team.admits(id))
            .copied()
            .collect();
        for id in &gone {
            self.peers.remove(id);
        }
        self.recompute_names();
        gone
    }

    /// How many peers are live.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// How often I announce myself: [`heartbeat_interval`] for the live peers, or for the
    /// team's other listed members while fewer of them are live.
    ///
    /// Counting the listed members from the start gives a starting team the interval it
    /// settles at in its first announcements. By the live peers alone, each node's first
    /// announcement would carry the short interval of a near-empty table, and the node would
    /// have to announce again within it, in the middle of the start: a second flood of
    /// every node's announcement, each verified by every node, which doubled the CPU per
    /// node of a 100-node start (docs/BENCHMARKS.md "One announcement per node while a
    /// team starts"). The price is in a large team with few members up: a crash that no
    /// neighbour reports waits out the longer expiry.
    pub fn heartbeat(&self) -> Duration {
        let listed = self.team.members().len();
        let others = listed - usize::from(self.team.member_by_id(&self.me).is_some());
        heartbeat_interval(self.team.announce_interval(), self.peers.len().max(others))
    }

    /// Whether no peer is live.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Takes in a verified announcement received at `now`.
    pub fn apply(&mut self, ann: &Announcement, now: Instant) -> Result<Applied, Dropped> {
        let id = ann.id;
        if id == self.me {
            return Err(Dropped::OwnId);
        }
        if !self.team.admits(&id) {
            return Err(Dropped::NotMember { id });
        }
        let last = self
            .peers
            .get(&id)
            .map(|p| p.seq)
            .or_else(|| self.tombstones.get(&id).map(|t| t.seq));
        if let Some(last) = last
            && ann.seq <= last
        {
            return Err(Dropped::Replay {
                id,
                last,
                got: ann.seq,
            });
        }

        match ann.kind {
            AnnounceKind::Leaving => {
                let was_live = self.peers.remove(&id).is_some();
                self.bury(id, ann.seq, now);
                if was_live {
                    self.recompute_names();
                    Ok(Applied::Left)
                } else {
                    Ok(Applied::AlreadyGone)
                }
            }
            AnnounceKind::Alive => {
                if let Some(peer) = self.peers.get_mut(&id) {
                    let changed = peer.announced_name != ann.name
                        || peer.shares_daemon != ann.shares_daemon
                        || peer.proto_version != ann.proto_version
                        || peer.addrs != ann.addrs
                        || peer.relay != ann.relay;
                    let renamed = peer.announced_name != ann.name;
                    peer.announced_name.clone_from(&ann.name);
                    peer.seq = ann.seq;
                    peer.shares_daemon = ann.shares_daemon;
                    peer.proto_version = ann.proto_version;
                    peer.addrs.clone_from(&ann.addrs);
                    peer.relay.clone_from(&ann.relay);
                    peer.interval = ann.interval;
                    peer.last_seen = now;
                    if renamed {
                        self.recompute_names();
                    }
                    return Ok(if changed {
                        Applied::Changed
                    } else {
                        Applied::Refreshed
                    });
                }
                if self.team.member_by_id(&id).is_none() && self.outsiders() >= MAX_PEERS {
                    return Err(Dropped::Full { id });
                }
                self.tombstones.remove(&id);
                self.peers.insert(
                    id,
                    Peer {
                        announced_name: ann.name.clone(),
                        seq: ann.seq,
                        shares_daemon: ann.shares_daemon,
                        proto_version: ann.proto_version,
                        addrs: ann.addrs.clone(),
                        relay: ann.relay.clone(),
                        interval: ann.interval,
                        first_seen: now,
                        last_seen: now,
                    },
                );
                self.recompute_names();
                Ok(Applied::Joined)
            }
        }
    }

    /// Takes in a report that `report.id` cannot be reached (see
    /// [`crate::proto::announce::Announcement::unreachable`]): drops that peer unless it is
    /// not live here or has announced something newer than the reporter's news of it. Its
    /// tombstone keeps the last seq this table had from it, not the reported one, so a report
    /// cannot keep a peer out: its next announcement brings it back.
    pub fn report_unreachable(&mut self, report: &Unreachable, now: Instant) -> Reported {
        let Some(peer) = self.peers.get(&report.id) else {
            return Reported::NotLive;
        };
        if peer.seq > report.seq {
            return Reported::Overruled { held: peer.seq };
        }
        let seq = peer.seq;
        self.peers.remove(&report.id);
        self.bury(report.id, seq, now);
        self.recompute_names();
        Reported::Dropped
    }

    /// How long `id` may stay silent before [`Self::expire`] drops it: the team's expiry,
    /// or [`INTERVALS_PER_EXPIRY`] of the intervals it announced (at most [`MAX_HEARTBEAT`]
    /// each) or of the interval I announce at ([`Self::heartbeat`]), whichever is longest.
    /// `None` for a peer that is not live.
    pub fn expiry_of(&self, id: &EndpointId) -> Option<Duration> {
        self.peers.get(id).map(|p| self.peer_expiry(p))
    }

    fn peer_expiry(&self, peer: &Peer) -> Duration {
        let promised = peer.interval.map_or(Duration::ZERO, |i| {
            i.min(MAX_HEARTBEAT) * INTERVALS_PER_EXPIRY
        });
        // A peer of an open team announces by the peers it knows, which while the team
        // starts may be far fewer than I know: it stretches its interval as it learns them,
        // so it is given as long as I would take myself.
        let mine = self.heartbeat() * INTERVALS_PER_EXPIRY;
        self.team.expiry().max(promised).max(mine)
    }

    /// The longest a live peer may go between two announcements: the longest interval a
    /// live peer promised (at most [`MAX_HEARTBEAT`]) or the one I announce at with the
    /// peers I know, whichever is longer. `None` when no peer is live. Hearing nothing from
    /// any peer for longer than this means nothing reaches me.
    pub fn slowest_heartbeat(&self) -> Option<Duration> {
        let mine = self.heartbeat();
        self.peers
            .values()
            .map(|p| p.interval.map_or(Duration::ZERO, |i| i.min(MAX_HEARTBEAT)))
            .max()
            .map(|promised| promised.max(mine))
    }

    /// Whether `id` is live.
    pub fn is_live(&self, id: &EndpointId) -> bool {
        self.peers.contains_key(id)
    }

    /// The latest seq of live peer `id`.
    pub fn seq_of(&self, id: &EndpointId) -> Option<u64> {
        self.peers.get(id).map(|p| p.seq)
    }

    /// The ids of the live peers.
    pub fn live_ids(&self) -> impl Iterator<Item = EndpointId> + '_ {
        self.peers.keys().copied()
    }

    /// Removes the peers not heard from for their expiry ([`Self::expiry_of`], as of `now`)
    /// and returns their ids; also forgets old tombstones.
    pub fn expire(&mut self, now: Instant) -> Vec<EndpointId> {
        let expiry = self.team.expiry();
        let gone: Vec<(EndpointId, u64)> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_seen) >= self.peer_expiry(p))
            .map(|(id, p)| (*id, p.seq))
            .collect();
        for (id, seq) in &gone {
            self.peers.remove(id);
            self.bury(*id, *seq, now);
        }
        let keep = tombstone_keep(expiry);
        self.tombstones
            .retain(|_, t| now.saturating_duration_since(t.at) < keep);
        if !gone.is_empty() {
            self.recompute_names();
        }
        gone.into_iter().map(|(id, _)| id).collect()
    }

    /// When the next live peer would expire if not heard from again: the moment to call
    /// [`Self::expire`] next. `None` with no live peers.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.peers
            .values()
            .map(|p| p.last_seen + self.peer_expiry(p))
            .min()
    }

    /// The sockets the peers directory should hold: socket name (the stem, without
    /// `.sock`) to the peer it forwards to.
    ///
    /// A peer listed in the team file goes by its name there, whatever it announces. Other
    /// peers (open teams only) go by their sanitised announced name, unless that name is
    /// taken: when it equals (ignoring case) a team member's name, whether that member is
    /// live or not, or the name of another live peer or of me, then every peer wanting it is
    /// called `<name>-<short id>` instead. If even that equals another final name, the peer
    /// is called by its whole id (z-base-32). The result depends only on the set of live
    /// peers and their names, never on the order announcements arrived in; no two peers
    /// share a name; and no outsider can take a member's name.
    ///
    /// Renaming one of two clashing peers would make a name that pointed at one peer point
    /// at another; giving both a suffix instead makes the clash visible.
    pub fn sockets(&self) -> BTreeMap<String, EndpointId> {
        if !self.team.permits(&self.me, Permission::Push) {
            return BTreeMap::new();
        }
        self.peers
            .iter()
            .filter(|(_, p)| p.shares_daemon && self.proto_versions.contains(&p.proto_version))
            .filter_map(|(id, _)| Some((self.names.get(id)?.clone(), *id)))
            .collect()
    }

    /// Every live peer, sorted by name.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let sockets: BTreeMap<EndpointId, String> = self
            .sockets()
            .into_iter()
            .map(|(name, id)| (id, name))
            .collect();
        let mut out: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(id, p)| {
                let name = self.names.get(id).cloned().unwrap_or_else(|| id_stem(id));
                PeerInfo {
                    id: *id,
                    socket: sockets.get(id).map(|n| socket_file_name(n)),
                    name,
                    announced_name: p.announced_name.clone(),
                    member: self.team.member_by_id(id).is_some(),
                    shares_daemon: p.shares_daemon,
                    proto_version: p.proto_version,
                    compatible: self.proto_versions.contains(&p.proto_version),
                    first_seen: p.first_seen,
                    last_seen: p.last_seen,
                    seq: p.seq,
                    addrs: p.addrs.clone(),
                    relay: p.relay.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One live peer.
    pub fn peer(&self, id: &EndpointId) -> Option<PeerInfo> {
        self.peers().into_iter().find(|p| p.id == *id)
    }

    /// The final name of a live peer.
    pub fn name_of(&self, id: &EndpointId) -> Option<&str> {
        self.names.get(id).map(String::as_str)
    }

    /// How to reach a live peer: its announced addresses and relay plus the fixed addresses
    /// from the team file (to feed into the endpoint's address lookup).
    pub fn endpoint_addr(&self, id: &EndpointId) -> Option<EndpointAddr> {
        let peer = self.peers.get(id)?;
        let fixed = self
            .team
            .member_by_id(id)
            .map(|m| m.addrs.as_slice())
            .unwrap_or_default();
        let ips = peer
            .addrs
            .iter()
            .chain(fixed)
            .copied()
            .map(TransportAddr::Ip);
        let relay = peer.relay.iter().cloned().map(TransportAddr::Relay);
        Some(EndpointAddr::from_parts(*id, ips.chain(relay)))
    }

    /// How many live peers are not listed in the team file.
    fn outsiders(&self) -> usize {
        self.peers
            .keys()
            .filter(|id| self.team.member_by_id(id).is_none())
            .count()
    }

    /// Remembers a departed peer's last seq.
    fn bury(&mut self, id: EndpointId, seq: u64, now: Instant) {
        self.tombstones.insert(id, Tombstone { seq, at: now });
        if self.tombstones.len() > MAX_TOMBSTONES
            && let Some(oldest) = self
                .tombstones
                .iter()
                .min_by_key(|(_, t)| t.at)
                .map(|(id, _)| *id)
        {
            self.tombstones.remove(&oldest);
        }
    }

    /// Recomputes every live peer's final name (see [`Self::sockets`] for the rules).
    fn recompute_names(&mut self) {
        let mut names = BTreeMap::new();
        let reserved = self.team.member_name_keys();

        // Peers not in the team file, and me when I am not: grouped by the name they want.
        let mut groups: BTreeMap<String, Vec<(EndpointId, String)>> = BTreeMap::new();
        let mut want = |id: EndpointId, raw: &str| {
            let wanted = sanitize_name(raw);
            groups
                .entry(name_key(&wanted))
                .or_default()
                .push((id, wanted));
        };
        if self.team.member_by_id(&self.me).is_none() {
            want(self.me, &self.my_name);
        }
        for (id, peer) in &self.peers {
            match self.team.member_by_id(id) {
                Some(member) => {
                    names.insert(*id, member.name.clone());
                }
                None => want(*id, &peer.announced_name),
            }
        }

        let mut uses: BTreeMap<String, usize> = reserved.iter().map(|k| (k.clone(), 1)).collect();
        let mut open = Vec::new();
        for (key, group) in groups {
            let alone = group.len() == 1 && !reserved.contains(&key);
            for (id, wanted) in group {
                let name = if alone {
                    wanted
                } else {
                    suffixed_name(&wanted, &id)
                };
                *uses.entry(name_key(&name)).or_default() += 1;
                open.push((id, name, !alone));
            }
        }
        for (id, name, suffixed) in open {
            if id == self.me {
                continue;
            }
            let clash = uses.get(&name_key(&name)).is_some_and(|n| *n > 1);
            // Only suffixed names can clash here (plain ones are unique and unreserved by
            // construction); the whole id cannot clash with anything.
            let name = if suffixed && clash {
                id_stem(&id)
            } else {
                name
            };
            names.insert(id, name);
        }
        self.names = names;
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use iroh::SecretKey;
    use n2p_core::endpoint::RelayChoice;

    use super::*;
    use crate::proto::{
        names::{MAX_STEM_LEN, is_safe_stem},
        team::SecretSource,
    };

    fn id(seed: u8) -> EndpointId {
        SecretKey::from_bytes(&[seed; 32]).public()
    }

    fn open_team() -> TeamConfig {
        TeamConfig::open_team(SecretSource::Env("S".into()), RelayChoice::Disabled)
    }

    /// A team file with members alice (1), bob (2, push = false in a closed team; an open
    /// team refuses that) and carol (3), and my id `me_push` controlling whether "me" (4)
    /// is a member that may push.
    fn team(open: bool, me_member: Option<bool>) -> TeamConfig {
        let bob_push = open;
        let mut text = format!(
            "[mesh]\nsecret_env = \"S\"\nopen = {open}\nexpiry_secs = 9\n\
             [[member]]\nname = \"alice\"\nid = \"{}\"\naddrs = [\"10.0.0.1:7001\"]\n\
             [[member]]\nname = \"bob\"\nid = \"{}\"\npush = {bob_push}\n\
             [[member]]\nname = \"carol\"\nid = \"{}\"\n",
            id(1),
            id(2),
            id(3)
        );
        if let Some(push) = me_member {
            text.push_str(&format!(
                "[[member]]\nname = \"me\"\nid = \"{}\"\npush = {push}\n",
                id(4)
            ));
        }
        TeamConfig::parse(&text, Path::new("team.toml")).expect("team")
    }

    fn alive(from: u8, name: &str, seq: u64) -> Announcement {
        let mut ann = Announcement::new(id(from), name, seq, AnnounceKind::Alive);
        ann.shares_daemon = true;
        ann
    }

    fn leaving(from: u8, seq: u64) -> Announcement {
        Announcement::new(id(from), "x", seq, AnnounceKind::Leaving)
    }

    fn names(table: &PeerTable) -> Vec<String> {
        table.sockets().into_keys().collect()
    }

    #[test]
    fn own_announcements_are_ignored() {
        let mut t = PeerTable::new(id(4), "me", open_team());
        let now = Instant::now();
        assert_eq!(t.apply(&alive(4, "me", 1), now), Err(Dropped::OwnId));
        assert!(t.is_empty());
    }

    #[test]
    fn a_new_team_drops_the_peers_it_no_longer_admits_and_admits_new_ones() {
        let mut t = PeerTable::new(id(4), "me", team(false, Some(true)));
        let now = Instant::now();
        t.apply(&alive(1, "a", 1), now).expect("alice");
        t.apply(&alive(3, "c", 1), now).expect("carol");
        assert_eq!(
            t.apply(&alive(9, "dave", 1), now),
            Err(Dropped::NotMember { id: id(9) })
        );

        // carol is removed, dave (9) added under the name "dave".
        let text = format!(
            "[mesh]\nsecret_env = \"S\"\n[[member]]\nname = \"alice\"\nid = \"{}\"\n\
             [[member]]\nname = \"dave\"\nid = \"{}\"\n[[member]]\nname = \"me\"\nid = \"{}\"\n",
            id(1),
            id(9),
            id(4)
        );
        let newer = TeamConfig::parse(&text, Path::new("team.toml")).expect("team");
        assert_eq!(t.set_team(newer.into()), vec![id(3)]);
        assert_eq!(t.sockets(), BTreeMap::from([("alice".to_owned(), id(1))]));
        assert_eq!(
            t.apply(&alive(3, "c", 2), now),
            Err(Dropped::NotMember { id: id(3) })
        );
        assert_eq!(t.apply(&alive(9, "whatever", 2), now), Ok(Applied::Joined));
        assert_eq!(
            t.sockets(),
            BTreeMap::from([("alice".to_owned(), id(1)), ("dave".to_owned(), id(9))])
        );
    }

    #[test]
    fn closed_team_drops_strangers_and_uses_file_names() {
        let mut t = PeerTable::new(id(4), "me", team(false, Some(true)));
        let now = Instant::now();
        assert_eq!(
            t.apply(&alive(9, "mallory", 1), now),
            Err(Dropped::NotMember { id: id(9) })
        );
        // alice announces herself as "root": the team file wins
        assert_eq!(t.apply(&alive(1, "root", 1), now), Ok(Applied::Joined));
        assert_eq!(t.sockets(), BTreeMap::from([("alice".to_owned(), id(1))]));
        let info = t.peer(&id(1)).expect("alice");
        assert_eq!(info.name, "alice");
        assert_eq!(info.announced_name, "root");
        assert!(info.member);
        assert_eq!(info.socket.as_deref(), Some("alice.sock"));
    }

    #[test]
    fn a_members_push_flag_is_about_its_pushes_not_mine() {
        // bob may not push to me, but I may push to bob
        let mut t = PeerTable::new(id(4), "me", team(false, Some(true)));
        t.apply(&alive(2, "bob", 1), Instant::now()).expect("bob");
        assert_eq!(names(&t), vec!["bob"]);
    }

    #[test]
    fn no_sockets_when_i_may_not_push() {
        let now = Instant::now();
        // listed with push = false
        let mut t = PeerTable::new(id(4), "me", team(false, Some(false)));
        t.apply(&alive(1, "alice", 1), now).expect("alice");
        assert_eq!(t.len(), 1, "still listed");
        assert!(t.sockets().is_empty());
        assert_eq!(t.peers()[0].socket, None);
        // not a member of a closed team at all
        let mut t = PeerTable::new(id(4), "me", team(false, None));
        t.apply(&alive(1, "alice", 1), now).expect("alice");
        assert!(t.sockets().is_empty());
        // open team, unlisted: allowed
        let mut t = PeerTable::new(id(4), "me", team(true, None));
        t.apply(&alive(1, "alice", 1), now).expect("alice");
        assert_eq!(names(&t), vec!["alice"]);
    }

    #[test]
    fn open_team_sanitises_names() {
        let mut t = PeerTable::new(id(4), "me", open_team());
        let now = Instant::now();
        t.apply(&alive(1, "../../x", 1), now).expect("x");
        t.apply(&alive(2, ".hidden", 1), now).expect("hidden");
        t.apply(&alive(3, "a/b\0c", 1), now).expect("abc");
        t.apply(&alive(5, "..", 1), now).expect("dots");
        assert_eq!(names(&t), vec!["a-b-c", "hidden", "peer", "x"]);
        for name in names(&t) {
            assert!(is_safe_stem(&name), "{name}");
        }
    }

    /// Once a tombstone is forgotten, what it guarded is older than the freshness window
    /// (with a sender clock a whole window ahead), for every allowed expiry.
    #[test]
    fn tombstones_outlive_the_freshness_window() {
        for secs in [2, 6, 3600] {
            let keep = tombstone_keep(std::time::Duration::from_secs(secs));
            assert!(
                keep >= FRESHNESS_WINDOW * 2,
                "expiry {secs} s keeps {keep:?}"
            );
        }
    }

    #[test]
    fn replays_and_reordering_are_dropped() {
        let mut t = PeerTable::new(id(4), "me", open_team());
        let now = Instant::now();
        assert_eq!(t.apply(&alive(1, "a", 10), now), Ok(Applied::Joined));
        assert_eq!(
            t.apply(&alive(1, "a", 10), now),
            Err(Dropped::Replay {
                id: id(1),
                last: 10,
                got: 10
            })
        );
        assert!(matches!(
            t.apply(&alive(1, "evil", 9), now),
            Err(Dropped::Replay { .. })
        ));
        assert_eq!(t.apply(&alive(1, "a", 11), now), Ok(Applied::Refreshed));
        assert_eq!(t.apply(&alive(1, "b", 12), now), Ok(Applied::Changed));
        assert_eq!(names(&t), vec!["b"]);
    }

    #[test]
    fn leaving_removes_at_once_and_old_news_cannot_revive() {
        let mut t = PeerTable::new(id(4), "me", open_team());
        let now = Instant::now();
        t.apply(&alive(1, "a", 10), now).expect("join");
        assert!(matches!(
            t.apply(&leaving(1, 9), now),
            Err(Dropped::Replay { .. })
        ));
        assert_eq!(t.apply(&leaving(1, 11), now), Ok(Applied::Left));
        assert!(t.sockets().is_empty());
        // an alive sent before the leave, delivered late
        assert!(matches!(
            t.apply(&alive(1, "a", 10), now),
            Err(Dropped::Replay { .. })
        ));
        assert!(t.is_empty());
        // a restart has a newer seq
        assert_eq!(t.apply(&alive(1, "a", 20), now), Ok(Applied::Joined));
        // leaving from someone never seen
        assert_eq!(t.apply(&leaving(2, 5), now), Ok(Applied::AlreadyGone));
        assert!(matches!(
            t.apply(&alive(2, "b", 4), now),
            Err(Dropped::Replay { .. })
        ));
    }

    #[test]
    fn a_promised_interval_stretches_the_expiry_but_never_shortens_it() {
        let mut t = PeerTable::new(id(4), "me", team(true, None));
        let t0 = Instant::now();
        let team_expiry = t.team().expiry();
        let mut slow = alive(1, "slow", 1);
        slow.interval = Some(Duration::from_secs(25));
        let mut quick = alive(2, "quick", 1);
        quick.interval = Some(Duration::from_millis(100));
        let mut absurd = alive(3, "absurd", 1);
        absurd.interval = Some(Duration::from_secs(1_000_000));
        for ann in [&slow, &quick, &absurd] {
            t.apply(ann, t0).expect("apply");
        }
        assert_eq!(t.expiry_of(&id(1)), Some(Duration::from_secs(75)));
        assert_eq!(t.expiry_of(&id(2)), Some(team_expiry));
        assert_eq!(
            t.expiry_of(&id(3)),
            Some(MAX_HEARTBEAT * INTERVALS_PER_EXPIRY)
        );
        assert_eq!(t.next_expiry(), Some(t0 + team_expiry));
        assert_eq!(t.expire(t0 + team_expiry), vec![id(2)]);
        assert!(t.expire(t0 + Duration::from_secs(74)).is_empty());
        assert_eq!(t.expire(t0 + Duration::from_secs(75)), vec![id(1)]);
        // An announcement without the interval (an older build) falls back to the team's.
        t.apply(&alive(3, "absurd", 2), t0 + Duration::from_secs(76))
            .expect("apply");
        assert_eq!(t.expiry_of(&id(3)), Some(team_expiry));
    }

    #[test]
    fn the_slowest_heartbeat_is_the_longest_promise_or_mine() {
        let mut t = PeerTable::new(id(4), "me", team(true, None));
        let t0 = Instant::now();
        assert_eq!(t.slowest_heartbeat(), None, "nobody live");
        let mut quick = alive(2, "quick", 1);
        quick.interval = Some(Duration::from_millis(100));
        t.apply(&quick, t0).expect("apply");
        let mine = heartbeat_interval(t.team().announce_interval(), 1);
        assert_eq!(t.slowest_heartbeat(), Some(mine), "a quick promise: mine");
        let mut slow = alive(1, "slow", 1);
        slow.interval = Some(Duration::from_secs(25));
        t.apply(&slow, t0).expect("apply");
        assert_eq!(t.slowest_heartbeat(), Some(Duration::from_secs(25)));
        let mut absurd = alive(3, "absurd", 1);
        absurd.interval = Some(Duration::from_secs(1_000_000));
        t.apply(&absurd, t0).expect("apply");
        assert_eq!(t.slowest_heartbeat(), Some(MAX_HEARTBEAT), "capped");
    }

    #[test]
    fn a_peer_that_knows_fewer_peers_than_i_do_gets_the_expiry_of_my_interval() {
        let mut t = PeerTable::new(id(200), "me", open_team());
        let t0 = Instant::now();
        // A starting peer promises the team's interval (it knows nobody yet)...
        let mut newcomer = alive(1, "newcomer", 1);
        newcomer.interval = Some(t.team().announce_interval());
        t.apply(&newcomer, t0).expect("apply");
        assert_eq!(t.expiry_of(&id(1)), Some(t.team().expiry()));
        // ...but with 99 peers known here, it is given three of my intervals.
        for i in 2..=99 {
            t.apply(&alive(i, &format!("p{i}"), 1), t0).expect("apply");
        }
        let mine = heartbeat_interval(t.team().announce_interval(), 99);
        assert_eq!(mine, Duration::from_millis(24_750));
        assert_eq!(t.expiry_of(&id(1)), Some(mine * INTERVALS_PER_EXPIRY));
    }

    #[test]
    fn an_unreachable_report_drops_the_peer_unless_newer_news_came() {
        let mut t = PeerTable::new(id(4), "me", team(true, None));
        let t0 = Instant::now();
        t.apply(&alive(1, "alice", 10), t0).expect("a");
        t.apply(&alive(2, "bob", 10), t0).expect("b");
        // The reporter's news of bob is older than mine: bob stays.
        let old = Unreachable { id: id(2), seq: 9 };
        assert_eq!(
            t.report_unreachable(&old, t0),
            Reported::Overruled { held: 10 }
        );
        // Reported with the seq I have (or a newer one I missed): dropped.
        let report = Unreachable { id: id(1), seq: 10 };
        assert_eq!(t.report_unreachable(&report, t0), Reported::Dropped);
        assert_eq!(names(&t), vec!["bob"]);
        assert_eq!(
            t.report_unreachable(&report, t0),
            Reported::NotLive,
            "already gone"
        );
        let lie = Unreachable {
            id: id(2),
            seq: u64::MAX,
        };
        assert_eq!(t.report_unreachable(&lie, t0), Reported::Dropped);
        // A report cannot keep a peer out: its next announcement brings it back, even after
        // a report that claimed a seq far in the future.
        assert_eq!(t.apply(&alive(2, "bob", 11), t0), Ok(Applied::Joined));
        assert_eq!(t.apply(&alive(1, "alice", 11), t0), Ok(Applied::Joined));
        // Not live: nothing to drop.
        assert_eq!(
            t.report_unreachable(&Unreachable { id: id(9), seq: 1 }, t0),
            Reported::NotLive
        );
    }

    #[test]
    fn a_listed_team_announces_at_the_interval_of_all_its_members_from_the_start() {
        // 100 members, me (1) among them: 99 others, none live yet.
        let mut text = String::from("[mesh]\nsecret_env = \"S\"\nexpiry_secs = 6\n");
        for i in 1..=100u8 {
            text.push_str(&format!(
                "[[member]]\nname = \"m{i}\"\nid = \"{}\"\n",
                id(i)
            ));
        }
        let listed = TeamConfig::parse(&text, Path::new("team.toml")).expect("team");
        let team_interval = listed.announce_interval();
        let mut t = PeerTable::new(id(1), "m1", listed);
        let all = heartbeat_interval(team_interval, 99);
        assert_eq!(all, Duration::from_millis(24_750));
        assert_eq!(t.heartbeat(), all, "nobody live yet");
        let t0 = Instant::now();
        t.apply(&alive(2, "m2", 1), t0).expect("apply");
        assert_eq!(t.heartbeat(), all, "one live");
        // A peer promising the team's interval is given as long as I take.
        assert_eq!(t.expiry_of(&id(2)), Some(all * INTERVALS_PER_EXPIRY));
        // Not a member myself: the other 100 count.
        let outsider = PeerTable::new(id(200), "me", t.team().clone());
        assert_eq!(outsider.heartbeat(), heartbeat_interval(team_interval, 100));
        // An open team lists nobody: its live peers alone count.
        let mut open = PeerTable::new(id(200), "me", open_team());
        assert_eq!(open.heartbeat(), open.team().announce_interval());
        for i in 1..=40 {
            open.apply(&alive(i, &format!("p{i}"), 1), t0)
                .expect("apply");
        }
        assert_eq!(open.heartbeat(), Duration::from_secs(10));
    }

    #[test]
    fn the_heartbeat_stretches_with_the_team_so_each_node_receives_a_bounded_rate() {
        let team = Duration::from_secs(2);
        assert_eq!(heartbeat_interval(team, 0), team);
        assert_eq!(heartbeat_interval(team, 8), team);
        assert_eq!(heartbeat_interval(team, 32), Duration::from_secs(8));
        assert_eq!(heartbeat_interval(team, 99), Duration::from_millis(24_750));
        for peers in [8, 32, 99, 1000] {
            let interval = heartbeat_interval(team, peers);
            // What one node receives a second from all the others.
            let rate = peers as f64 / interval.as_secs_f64();
            assert!(
                rate <= 1.0 / HEARTBEAT_SPACING.as_secs_f64() + 1e-9,
                "{peers} peers: {rate}/s"
            );
        }
        assert_eq!(heartbeat_interval(team, usize::MAX), MAX_HEARTBEAT);
        // A team interval above the cap is kept (the team asked for it).
        let long = MAX_HEARTBEAT * 2;
        assert_eq!(heartbeat_interval(long, 5), long);
    }

    #[test]
    fn expiry() {
        let mut t = PeerTable::new(id(4), "me", team(true, None));
        let t0 = Instant::now();
        let expiry = t.team().expiry();
        assert_eq!(expiry, Duration::from_secs(9));
        assert_eq!(t.next_expiry(), None);
        t.apply(&alive(1, "alice", 1), t0).expect("a");
        t.apply(&alive(2, "bob", 1), t0 + Duration::from_secs(3))
            .expect("b");
        assert_eq!(t.next_expiry(), Some(t0 + expiry));
        assert!(t.expire(t0 + expiry - Duration::from_millis(1)).is_empty());
        assert_eq!(t.expire(t0 + expiry), vec![id(1)]);
        assert_eq!(names(&t), vec!["bob"]);
        // refreshing pushes the deadline
        t.apply(&alive(2, "bob", 2), t0 + Duration::from_secs(10))
            .expect("b");
        assert!(t.expire(t0 + Duration::from_secs(18)).is_empty());
        assert_eq!(t.expire(t0 + Duration::from_secs(19)), vec![id(2)]);
        assert!(t.is_empty());
        // an expired peer's old announcement cannot revive it...
        assert!(matches!(
            t.apply(&alive(2, "bob", 2), t0 + Duration::from_secs(20)),
            Err(Dropped::Replay { .. })
        ));
        // ...until the tombstone is forgotten
        let later = t0 + Duration::from_secs(19) + expiry * TOMBSTONE_FACTOR;
        t.expire(later);
        assert_eq!(t.apply(&alive(2, "bob", 2), later), Ok(Applied::Joined));
    }

    #[test]
    fn sharing_and_versions_gate_sockets() {
        let mut t = PeerTable::new(id(4), "me", open_team());
        let now = Instant::now();
        let mut ann = alive(1, "a", 1);
        ann.shares_daemon = false;
        assert_eq!(t.apply(&ann, now), Ok(Applied::Joined));
        assert!(t.sockets().is_empty());
        assert_eq!(t.peers()[0].name, "a");
        ann.shares_daemon = true;
        ann.seq = 2;
        assert_eq!(t.apply(&ann, now), Ok(Applied::Changed));
        assert_eq!(names(&t), vec!["a"]);
        ann.proto_version = PROTO_VERSION + 1;
        ann.seq = 3;
        t.apply(&ann, now).expect("newer version");
        assert!(t.sockets().is_empty());
        assert!(!t.peers()[0].compatible);
        let t = t.with_proto_versions(PROTO_VERSION..=PROTO_VERSION + 1);
        assert_eq!(names(&t), vec!["a"]);
    }

    #[test]
    fn name_clashes_give_everyone_a_suffix() {
        let mut t = PeerTable::new(id(4), "me", open_team());
        let now = Instant::now();
        t.apply(&alive(1, "dev", 1), now).expect("1");
        assert_eq!(names(&t), vec!["dev"]);
        t.apply(&alive(2, "DEV", 1), now).expect("2");
        let expected = vec![
            format!("DEV-{}", id(2).fmt_short()),
            format!("dev-{}", id(1).fmt_short()),
        ];
        assert_eq!(names(&t), expected);
        // when one leaves, the other gets the plain name back
        t.apply(&leaving(2, 2), now).expect("leave");
        assert_eq!(names(&t), vec!["dev"]);
    }

    #[test]
    fn names_do_not_depend_on_arrival_order() {
        let anns = [
            alive(1, "dev", 1),
            alive(2, "dev", 1),
            alive(3, "ops", 1),
            alive(5, "Dev", 1),
            alive(6, "x", 1),
        ];
        let now = Instant::now();
        let mut first = None;
        // all rotations and the reverse
        let mut orders: Vec<Vec<usize>> = (0..anns.len())
            .map(|r| (0..anns.len()).map(|i| (i + r) % anns.len()).collect())
            .collect();
        orders.push((0..anns.len()).rev().collect());
        for order in orders {
            let mut t = PeerTable::new(id(4), "me", open_team());
            for i in order {
                t.apply(&anns[i], now).expect("apply");
            }
            let sockets = t.sockets();
            match &first {
                None => first = Some(sockets),
                Some(f) => assert_eq!(&sockets, f),
            }
        }
    }

    #[test]
    fn outsiders_cannot_take_member_names() {
        // open team with members; alice (a member) is offline
        let mut t = PeerTable::new(id(4), "me", team(true, None));
        let now = Instant::now();
        t.apply(&alive(9, "Alice", 1), now).expect("impostor");
        assert_eq!(names(&t), vec![format!("Alice-{}", id(9).fmt_short())]);
        t.apply(&alive(1, "whatever", 1), now).expect("alice");
        assert_eq!(
            t.sockets().get("alice"),
            Some(&id(1)),
            "the member gets her name"
        );
    }

    #[test]
    fn my_own_name_counts_in_clashes() {
        let mut t = PeerTable::new(id(4), "dev", open_team());
        t.apply(&alive(1, "dev", 1), Instant::now()).expect("1");
        assert_eq!(names(&t), vec![format!("dev-{}", id(1).fmt_short())]);
    }

    #[test]
    fn crafted_names_cannot_collide_with_suffixed_ones() {
        let mut t = PeerTable::new(id(4), "me", open_team());
        let now = Instant::now();
        t.apply(&alive(1, "dev", 1), now).expect("1");
        t.apply(&alive(2, "dev", 1), now).expect("2");
        // peer 3 asks for exactly peer 1's suffixed name
        let crafted = format!("dev-{}", id(1).fmt_short());
        t.apply(&alive(3, &crafted, 1), now).expect("3");
        let sockets = t.sockets();
        assert_eq!(sockets.len(), 3);
        assert_eq!(sockets.get(&crafted), Some(&id(3)));
        assert_eq!(sockets.get(&id_stem(&id(1))), Some(&id(1)));
        assert_eq!(
            sockets.get(&format!("dev-{}", id(2).fmt_short())),
            Some(&id(2))
        );
    }

    #[test]
    fn final_names_are_unique_and_safe_under_random_traffic() {
        // a small PRNG drives many announcements with clashing, hostile names
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut rand = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let pool = [
            "dev", "Dev", "DEV", "ops", "../x", ".x", "x", "alice", "peer", "", "a b", "é",
        ];
        let mut t = PeerTable::new(id(200), "dev", team(true, None));
        let mut seq = [0u64; 40];
        let t0 = Instant::now();
        for step in 0..3000u64 {
            let from = 1 + rand(39) as u8;
            let i = usize::from(from);
            seq[i] += 1 + rand(3);
            let name = pool[rand(pool.len() as u64) as usize];
            let now = t0 + Duration::from_millis(step * 10);
            let ann = if rand(10) == 0 {
                Announcement::new(id(from), "x", seq[i], AnnounceKind::Leaving)
            } else {
                let mut a = Announcement::new(id(from), name, seq[i], AnnounceKind::Alive);
                a.shares_daemon = rand(4) != 0;
                a
            };
            let _ = t.apply(&ann, now);
            if step % 100 == 0 {
                t.expire(now);
            }
            let infos = t.peers();
            let mut keys = std::collections::BTreeSet::new();
            for p in &infos {
                assert!(
                    is_safe_stem(&p.name) && p.name.len() <= MAX_STEM_LEN,
                    "{}",
                    p.name
                );
                assert!(keys.insert(name_key(&p.name)), "duplicate {}", p.name);
            }
            // rebuilding from scratch in another order gives the same names
            if step % 250 == 0 {
                let mut fresh = PeerTable::new(id(200), "dev", team(true, None));
                for p in infos.iter().rev() {
                    let mut a =
                        Announcement::new(p.id, &p.announced_name, p.seq, AnnounceKind::Alive);
                    a.shares_daemon = p.shares_daemon;
                    fresh.apply(&a, now).expect("fresh");
                }
                assert_eq!(fresh.sockets(), t.sockets());
            }
        }
    }

    /// An open team full of outsiders still admits every listed member, and evicts no one.
    #[test]
    fn a_full_open_team_still_admits_listed_members() {
        let mut t = PeerTable::new(id(4), "me", team(true, None));
        let now = Instant::now();
        for seed in 1..=MAX_PEERS as u32 {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&seed.to_le_bytes());
            bytes[31] = 0xee;
            let key = SecretKey::from_bytes(&bytes).public();
            t.apply(&Announcement::new(key, "p", 1, AnnounceKind::Alive), now)
                .expect("room for outsiders up to the cap");
        }
        let outsider = Announcement::new(id(250), "p", 1, AnnounceKind::Alive);
        assert_eq!(t.apply(&outsider, now), Err(Dropped::Full { id: id(250) }));
        for member in [1, 2, 3] {
            assert_eq!(t.apply(&alive(member, "x", 1), now), Ok(Applied::Joined));
        }
        assert_eq!(t.len(), MAX_PEERS + 3, "someone was evicted");
        assert!(t.sockets().contains_key("alice") && t.sockets().contains_key("carol"));
    }

    #[test]
    fn table_is_bounded() {
        let mut t = PeerTable::new(id(0), "me", open_team());
        let now = Instant::now();
        let mut n = 0usize;
        let mut seed = 0u32;
        while n < MAX_PEERS {
            seed += 1;
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&seed.to_le_bytes());
            let key = SecretKey::from_bytes(&bytes).public();
            let ann = Announcement::new(key, "p", 1, AnnounceKind::Alive);
            t.apply(&ann, now).expect("room");
            n += 1;
        }
        let extra = Announcement::new(id(250), "p", 1, AnnounceKind::Alive);
        assert_eq!(t.apply(&extra, now), Err(Dropped::Full { id: id(250) }));
        // known peers still refresh
        let first = *t.peers.keys().next().expect("some");
        let ann = Announcement::new(first, "p", 2, AnnounceKind::Alive);
        assert_eq!(t.apply(&ann, now), Ok(Applied::Refreshed));
    }

    #[test]
    fn diffing_sockets() {
        let old = BTreeMap::from([("a".to_owned(), id(1)), ("b".to_owned(), id(2))]);
        let new = BTreeMap::from([("a".to_owned(), id(3)), ("c".to_owned(), id(4))]);
        let d = diff_sockets(&old, &new);
        assert_eq!(
            d.removed,
            vec![("a".to_owned(), id(1)), ("b".to_owned(), id(2))]
        );
        assert_eq!(
            d.added,
            vec![("a".to_owned(), id(3)), ("c".to_owned(), id(4))]
        );
        assert!(diff_sockets(&new, &new).is_empty());
        assert!(!d.is_empty());
    }

    #[test]
    fn endpoint_addr_merges_announced_and_fixed() {
        let mut t = PeerTable::new(id(4), "me", team(true, None));
        let mut ann = alive(1, "alice", 1);
        ann.addrs = vec!["192.168.1.5:7001".parse().expect("addr")];
        ann.relay = Some("https://relay.example.org".parse().expect("url"));
        t.apply(&ann, Instant::now()).expect("alice");
        let addr = t.endpoint_addr(&id(1)).expect("live");
        assert_eq!(addr.ip_addrs().count(), 2);
        assert_eq!(addr.relay_urls().count(), 1);
        assert!(t.endpoint_addr(&id(2)).is_none());
    }
}
