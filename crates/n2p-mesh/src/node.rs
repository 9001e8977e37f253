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
pub mod peer_sockets;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh::{
    Endpoint, EndpointAddr, EndpointId, SecretKey,
    address_lookup::memory::MemoryLookup,
    endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks},
    protocol::{DynProtocolHandler, Router},
};
use iroh_gossip::net::{GOSSIP_ALPN, Gossip};
use n2p_core::{
    access::{AccessPolicy, AccessSecret, SecretPolicy},
    daemon::{ACCESS_DENIED, DAEMON_ALPN, DaemonService},
    endpoint::{EndpointBindError, EndpointOptions, bind_builder, endpoint_builder},
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use self::{
    actor::{Actor, Command},
    peer_sockets::{PeerSockets, PeerSocketsError},
};
use crate::{
    proto::{
        announce::{MAX_ANNOUNCEMENT_SIZE, SeqClock},
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
    /// Extra bootstrap peers (from invite tickets).
    pub bootstrap: Vec<EndpointAddr>,
    /// Relay and bind settings.
    pub endpoint: EndpointOptions,
    /// More protocols to serve on the node's endpoint, each an ALPN and its handler (the
    /// binary adds the pull side's store protocol here; the mesh knows nothing of it).
    /// Closed teams refuse non-members on these too, before any handler runs.
    pub protocols: Vec<(Vec<u8>, Box<dyn DynProtocolHandler>)>,
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

/// A running mesh node: the handle to its actor.
#[derive(Debug)]
pub struct MeshNode {
    router: Router,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
    actor: Mutex<Option<JoinHandle<()>>>,
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
        alpns.extend(settings.protocols.iter().map(|(alpn, _)| alpn.clone()));
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
        for (alpn, handler) in settings.protocols {
            router = router.accept(alpn, handler);
        }
        let router = router.spawn();

        let ready = async {
            let sockets = PeerSockets::open(
                settings.peers_dir.clone(),
                endpoint.clone(),
                AccessSecret::from_bytes(keys.access_secret()),
            )?;
            let topic = gossip
                .subscribe(keys.topic_id(), bootstrap_ids.clone())
                .await
                .map_err(|e| MeshError::Gossip(e.to_string()))?;
            Ok::<_, MeshError>((sockets, topic))
        };
        let (sockets, topic) = match ready.await {
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
            table: PeerTable::new(me, &settings.name, settings.team.clone()),
            seq: SeqClock::new(),
            announce_interval: settings.team.announce_interval(),
        };
        let span = info_span!("mesh", me = %me.fmt_short());
        let actor = tokio::spawn(
            actor
                .run(receiver, command_rx, cancel.clone())
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
            commands,
            cancel,
            actor: Mutex::new(Some(actor)),
        })
    }

    /// The node's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        self.router.endpoint()
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

    /// Resolves once the actor has ended: after [`Self::leave`], or on its own when its
    /// gossip subscription fails for good (it then drains and announces `Leaving` first).
    pub async fn stopped(&self) {
        // The actor owns the receiving end of the command channel until it returns.
        self.commands.closed().await
    }

    /// Removes every peer socket, drains the transfers in flight through them (bounded by
    /// [`LEAVE_DRAIN_BOUND`], then aborted), announces `Leaving` and closes the endpoint.
    /// Later calls do nothing.
    pub async fn leave(&self) {
        self.cancel.cancel();
        let actor = self.actor.lock().ok().and_then(|mut a| a.take());
        if let Some(actor) = actor {
            actor.await.ok();
            self.router.shutdown().await.ok();
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
