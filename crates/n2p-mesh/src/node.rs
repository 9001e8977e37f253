//! The running mesh node: drives the rules of [`crate::proto`] over iroh-gossip, serves the
//! local daemon to allowed peers, and keeps the peers directory.
//!
//! One actor task owns the peer table and the peer sockets; it reacts to gossip events, its
//! announce and expiry timers, and commands from the [`MeshNode`] handle (such as
//! [`MeshNode::status`]). Shutdown order ([`MeshNode::leave`]): stop the actor, which
//! removes every peer socket file at once, waits up to [`LEAVE_DRAIN_BOUND`] for the
//! transfers in flight through them to end on their own, aborts (resets) the rest, and then
//! announces `Leaving`; then shut the router down, which closes the endpoint (transfers
//! from peers into my daemon end there). Dropping the handle without leaving stops the
//! router's accept loop at once and makes the actor stop too, going through the same steps
//! in the background.

mod actor;
mod digest_datagrams;
mod dispute;
mod gate;
mod health;
mod linger;
mod paths;
pub mod peer_sockets;
mod redial;
mod sweep;
mod throttle;
pub use self::sweep::CHECK_ALPN;

pub use self::gate::SharedTeam;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh::{
    Endpoint, EndpointAddr, SecretKey, TransportAddr,
    address_lookup::memory::MemoryLookup,
    protocol::{DynProtocolHandler, Router},
};
use iroh_gossip::net::{GOSSIP_ALPN, Gossip};
use n2p_core::{
    access::{AccessSecret, Authority, HandshakeGate, Permission},
    daemon::{DAEMON_ALPN, DaemonService},
    endpoint::{EndpointBindError, EndpointOptions, RelayChoice, bind_builder, endpoint_builder},
    unix::SocketAccess,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use self::{
    actor::{Actor, Command},
    paths::PathWatch,
    peer_sockets::{PeerSockets, PeerSocketsError},
};
use crate::{
    proto::{
        announce::{MAX_ANNOUNCEMENT_SIZE, SeqClock},
        digest::MAX_DIGEST_SIZE,
        table::PeerTable,
        team::TeamConfig,
        topic::{MeshKeys, TeamSecret, TopicNameError},
    },
    status::MeshStatus,
};

/// How long a clean leave waits for transfers in flight through peer sockets to finish
/// before it aborts them. Long enough for a push of a few hundred MiB on a LAN to complete;
/// short enough that a stalled one does not keep a stopping node (and `systemctl stop`)
/// waiting long.
pub const LEAVE_DRAIN_BOUND: Duration = Duration::from_secs(10);

/// How long a leave may take beyond [`LEAVE_DRAIN_BOUND`]: the `Leaving` announcement and
/// its grace, or a gossip call the actor is waiting on when the leave begins.
pub const LEAVE_TAIL_BOUND: Duration = Duration::from_secs(5);

/// How long closing the endpoint may take when leaving (its connections' close frames).
pub const CLOSE_BOUND: Duration = Duration::from_secs(3);

/// How long a peer lost as a gossip neighbour gets to take a new connection before it is
/// reported unreachable, on a node that keeps up (one that does not waits longer:
/// `node::health`). The loss itself comes after the QUIC idle timeout
/// ([`n2p_core::endpoint::IDLE_TIMEOUT`]), so a crash is noticed after about the sum. Also
/// the base of each dial of a routine check and of a check of a disputed report.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Distinct endpoint ids for unit tests: those of the secret keys `[1; 32]` to `[n; 32]`.
#[cfg(test)]
fn test_ids(n: u8) -> Vec<iroh::EndpointId> {
    (1..=n)
        .map(|i| iroh::SecretKey::from_bytes(&[i; 32]).public())
        .collect()
}

/// How many commands may wait for the actor.
const COMMAND_QUEUE: usize = 16;

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
    /// Who may use them: the owner only (0600 in 0700, the default) or a group too.
    pub peers_access: SocketAccess,
    /// How long a peer socket's connection may go unused before it is closed
    /// ([`n2p_core::idle::PEER_IDLE_CLOSE`] by default); the socket stays and connects again when used.
    pub peer_idle_close: Duration,
    /// Extra bootstrap peers (from invite tickets).
    pub bootstrap: Vec<EndpointAddr>,
    /// Relay and bind settings.
    pub endpoint: EndpointOptions,
    /// More protocols to serve on the node's endpoint, each an ALPN and a factory for its
    /// handler (the binary adds the pull side's store protocol here; the mesh knows nothing
    /// of it). The factory gets the node's [`SharedTeam`], so the handler's policy
    /// ([`SharedTeam::policy`]) follows [`MeshNode::reload`] as the daemon's does. Closed
    /// teams refuse non-members on these too, before any handler runs.
    pub protocols: Vec<(Vec<u8>, ProtocolFactory)>,
}

/// Builds a protocol handler for [`MeshSettings::protocols`] from the team in force.
pub struct ProtocolFactory(Box<MakeHandler>);

/// What a [`ProtocolFactory`] calls.
type MakeHandler = dyn FnOnce(&SharedTeam) -> Box<dyn DynProtocolHandler> + Send;

impl ProtocolFactory {
    /// Wraps `make`, called once when the node starts.
    pub fn new(
        make: impl FnOnce(&SharedTeam) -> Box<dyn DynProtocolHandler> + Send + 'static,
    ) -> Self {
        Self(Box::new(make))
    }
}

impl std::fmt::Debug for ProtocolFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProtocolFactory")
    }
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

/// Why [`MeshNode::status`] got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The actor has stopped: the node left the mesh, or its gossip subscription ended.
    #[error("the mesh node has stopped")]
    Stopped,
}

/// Why [`MeshNode::reload`] did not take a team config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The actor has stopped.
    #[error("the mesh node has stopped")]
    Stopped,
}

/// What a [`MeshNode::reload`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadReport {
    /// Names of the members the new config lists and the old did not.
    pub added: Vec<String>,
    /// Names of the members the old config listed and the new does not.
    pub removed: Vec<String>,
    /// Settings that differ but are only read at start (the secret's source, the relay).
    pub needs_restart: Vec<&'static str>,
}

/// A running mesh node: the handle to its actor.
#[derive(Debug)]
pub struct MeshNode {
    router: Router,
    team: SharedTeam,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
    actor: Mutex<Option<JoinHandle<()>>>,
}

impl MeshNode {
    /// Binds the endpoint, joins the topic and starts announcing and keeping sockets.
    pub async fn join(secret_key: SecretKey, settings: MeshSettings) -> Result<Self, MeshError> {
        let keys = MeshKeys::derive(&settings.secret, &settings.topic)?;
        let me = secret_key.public();
        let mut alpns = vec![GOSSIP_ALPN.to_vec(), sweep::CHECK_ALPN.to_vec()];
        if settings.share_daemon {
            alpns.push(DAEMON_ALPN.to_vec());
        }
        alpns.extend(settings.protocols.iter().map(|(alpn, _)| alpn.clone()));
        let memory = MemoryLookup::new();
        let team = SharedTeam::new(
            settings.team.clone(),
            AccessSecret::from_bytes(keys.access_secret()),
        );
        // Installed for open teams too (it admits everyone then), so a reload may close one.
        // The path watch comes after the gate: refused connections are not watched.
        let paths = PathWatch::default();
        let (digest_tx, digest_rx) = mpsc::channel(digest_datagrams::INBOX);
        let builder = endpoint_builder(secret_key.clone(), alpns, &settings.endpoint)?
            .address_lookup(memory.clone())
            .hooks(HandshakeGate(Arc::new(team.clone())))
            .hooks(paths.clone())
            .hooks(digest_datagrams::DigestReader::new(
                digest_tx,
                keys.announce_key().clone(),
            ));
        let endpoint = bind_builder(builder, &settings.endpoint).await?;

        let mut bootstrap_ids = Vec::new();
        // Listed members are also looked for at our own relay, when we have one: a team that
        // runs its relay needs no fixed addresses and no address lookup.
        let relay = match &settings.endpoint.relay {
            RelayChoice::Custom(url) => Some(TransportAddr::Relay(url.clone())),
            RelayChoice::Default | RelayChoice::Disabled => None,
        };
        let members = settings.team.bootstrap(&me).into_iter().map(|mut addr| {
            addr.addrs.extend(relay.clone());
            addr
        });
        let ticket_ids: Vec<iroh::EndpointId> = settings
            .bootstrap
            .iter()
            .map(|a| a.id)
            .filter(|id| *id != me)
            .collect();
        for addr in members.chain(settings.bootstrap.iter().cloned()) {
            if addr.id == me {
                continue;
            }
            if !addr.is_empty() {
                memory.add_endpoint_info(addr.clone());
            }
            bootstrap_ids.push(addr.id);
        }

        let gossip = Gossip::builder()
            // Room for a digest and gossip's own framing around it.
            .max_message_size(MAX_ANNOUNCEMENT_SIZE.max(MAX_DIGEST_SIZE) + 1024)
            .spawn(endpoint.clone());
        let mut router = Router::builder(endpoint.clone())
            .accept(GOSSIP_ALPN, throttle::GossipThrottle::new(gossip.clone()))
            .accept(sweep::CHECK_ALPN, sweep::CheckService);
        if settings.share_daemon {
            let policy = team.policy(Permission::Push);
            router = router.accept(
                DAEMON_ALPN,
                DaemonService::new(settings.daemon_socket.clone(), policy, me),
            );
        }
        for (alpn, make_handler) in settings.protocols {
            router = router.accept(alpn, (make_handler.0)(&team));
        }
        let router = router.spawn();

        let ready = async {
            let sockets = PeerSockets::open(
                settings.peers_dir.clone(),
                endpoint.clone(),
                AccessSecret::from_bytes(keys.access_secret()),
                settings.peers_access,
                settings.peer_idle_close,
            )?;
            // The tickets' peers and one member, three in a small team; more one at a time
            // ([`redial::FirstJoin`]).
            let members = settings.team.members().len();
            let first = redial::join_peers(
                &ticket_ids,
                &bootstrap_ids,
                redial::first_join_count(members),
            );
            let first_join =
                redial::FirstJoin::new(&first, &bootstrap_ids, std::time::Instant::now());
            let topic = gossip
                .subscribe(keys.topic_id(), first)
                .await
                .map_err(|e| MeshError::Gossip(e.to_string()))?;
            Ok::<_, MeshError>((sockets, topic, first_join))
        };
        let (sockets, topic, first_join) = match ready.await {
            Ok(ready) => ready,
            Err(e) => {
                // Close the endpoint properly (the router owns it) before giving up.
                router.shutdown().await.ok();
                return Err(e);
            }
        };
        let (sender, receiver) = topic.split();

        let cancel = CancellationToken::new();
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let actor = Actor {
            gossip,
            bootstrap: bootstrap_ids,
            endpoint: endpoint.clone(),
            secret_key,
            keys,
            name: settings.name.clone(),
            topic: settings.topic.clone(),
            share_daemon: settings.share_daemon,
            peers_dir: settings.peers_dir,
            memory,
            sender: Some(sender),
            sockets,
            table: PeerTable::new(me, &settings.name, team.get()),
            seq: SeqClock::new(),
            stale_warned: Default::default(),
            full_warned: false,
            paths,
            first_join,
            redial: Default::default(),
            cut_off: Default::default(),
            sweep: sweep::Sweep::new(std::time::Instant::now()),
            dials: JoinSet::new(),
            linger: Default::default(),
            probes: JoinSet::new(),
            probing: Default::default(),
            disputes: Default::default(),
            health: health::LocalHealth::new(std::time::Instant::now()),
            latest: Default::default(),
            mine: None,
            mine_stamp: 0,
            ledger: Default::default(),
        };
        let span = info_span!("mesh", me = %me.fmt_short());
        let actor = tokio::spawn(
            actor
                .run(receiver, command_rx, digest_rx, cancel.clone())
                .instrument(span),
        );
        info!(target: "n2p",
            "joined mesh topic '{}' as {} ({}), {}",
            settings.topic,
            settings.name,
            me,
            if settings.share_daemon { "sharing my nix-daemon" } else { "not sharing my nix-daemon" }
        );
        Ok(Self {
            router,
            team,
            commands,
            cancel,
            actor: Mutex::new(Some(actor)),
        })
    }

    /// The node's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        self.router.endpoint()
    }

    /// The team config in force (the file loaded at start or by the last reload).
    pub fn team(&self) -> Arc<TeamConfig> {
        self.team.get()
    }

    /// Whether the team config in force grants this node `permission` (its peers decide
    /// by their own copies; a node that lacks a right need not ask them).
    pub fn may(&self, permission: Permission) -> bool {
        self.team.permits(&self.endpoint().id(), permission)
    }

    /// What the node sees now, as the actor answers it.
    pub async fn status(&self) -> Result<MeshStatus, StatusError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Status(reply))
            .await
            .map_err(|_| StatusError::Stopped)?;
        answer.await.map_err(|_| StatusError::Stopped)
    }

    /// Puts a new team config in force (a reloaded team file): members it no longer lists
    /// are refused from the next connection and the next stream into my daemon on, and lose
    /// their socket here; members it adds are admitted and joined. The topic, my name, the
    /// secret and the relay stay as they were at start; differences in the last two are
    /// reported in [`ReloadReport::needs_restart`].
    pub async fn reload(&self, team: TeamConfig) -> Result<ReloadReport, ReloadError> {
        let old = self.team.get();
        let names = |t: &TeamConfig| -> Vec<(iroh::EndpointId, String)> {
            t.members().iter().map(|m| (m.id, m.name.clone())).collect()
        };
        let (old_members, new_members) = (names(&old), names(&team));
        let mut report = ReloadReport {
            added: new_members
                .iter()
                .filter(|m| !old_members.contains(m))
                .map(|m| m.1.clone())
                .collect(),
            removed: old_members
                .iter()
                .filter(|m| !new_members.contains(m))
                .map(|m| m.1.clone())
                .collect(),
            needs_restart: Vec::new(),
        };
        if old.secret_source() != team.secret_source() {
            report.needs_restart.push("the team secret's source");
        }
        if old.relay() != team.relay() {
            report.needs_restart.push("relay");
        }
        // The gate and the policies first, so a removed member cannot start anything new
        // from here on; then the table, with the same value.
        let team = self.team.set(team);
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Reload(team, reply))
            .await
            .map_err(|_| ReloadError::Stopped)?;
        done.await.map_err(|_| ReloadError::Stopped)?;
        Ok(report)
    }

    /// Resolves once the actor has ended: after [`Self::leave`], or on its own when its
    /// gossip subscription fails for good (it then drains and announces `Leaving` first).
    pub async fn stopped(&self) {
        // The actor owns the receiving end of the command channel until it returns.
        self.commands.closed().await
    }

    /// Removes every peer socket, drains the transfers in flight through them (bounded by
    /// [`LEAVE_DRAIN_BOUND`], then aborted), announces `Leaving` and closes the endpoint.
    /// Later calls do nothing.
    ///
    /// Bounded whatever the network does: the actor gets [`LEAVE_DRAIN_BOUND`] plus
    /// [`LEAVE_TAIL_BOUND`] and is then stopped, and closing the endpoint gets
    /// [`CLOSE_BOUND`].
    pub async fn leave(&self) {
        self.cancel.cancel();
        let actor = self.actor.lock().ok().and_then(|mut a| a.take());
        if let Some(mut actor) = actor {
            let bound = LEAVE_DRAIN_BOUND + LEAVE_TAIL_BOUND;
            if tokio::time::timeout(bound, &mut actor).await.is_err() {
                warn!(target: "n2p", "the mesh node did not finish leaving within {bound:?}; stopped without saying goodbye");
                actor.abort();
            }
            if tokio::time::timeout(CLOSE_BOUND, self.router.shutdown())
                .await
                .is_err()
            {
                warn!(target: "n2p", "the endpoint did not close within {CLOSE_BOUND:?}; leaving its connections to time out at the peers");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use n2p_core::endpoint::{EndpointOptions, RelayChoice};

    use super::*;
    use crate::proto::team::SecretSource;

    #[tokio::test]
    async fn stopped_resolves_once_the_actor_has_ended() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let settings = MeshSettings {
            topic: "t".to_owned(),
            name: "solo".to_owned(),
            share_daemon: false,
            daemon_socket: dir.path().join("daemon.sock"),
            team: TeamConfig::open_team(
                SecretSource::Env("UNUSED".to_owned()),
                RelayChoice::Disabled,
            ),
            secret: TeamSecret::new(vec![7; 32])?,
            peers_dir: dir.path().join("peers"),
            peers_access: SocketAccess::Owner,
            peer_idle_close: n2p_core::idle::PEER_IDLE_CLOSE,
            bootstrap: Vec::new(),
            endpoint: EndpointOptions::loopback(),
            protocols: Vec::new(),
        };
        let node = MeshNode::join(SecretKey::from_bytes(&[5; 32]), settings).await?;
        assert!(
            tokio::time::timeout(Duration::from_millis(300), node.stopped())
                .await
                .is_err(),
            "a running node must not count as stopped"
        );
        node.leave().await;
        tokio::time::timeout(Duration::from_secs(5), node.stopped()).await?;
        Ok(())
    }
}
