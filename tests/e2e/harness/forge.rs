//! Forged mesh nodes: in-process nodes built from the n2p-mesh library that hold the team
//! secret but announce whatever name they are given. The `n2p` binary refuses unsafe names
//! before it joins, so only a node like this can show what real nodes make of a name such
//! as `../../x` arriving over the wire.
//!
//! ```ignore
//! let forgers = Forgers::join(root, &team_file, &alice.invite(), &["../../x", ".hidden"]);
//! // ... look at alice's peers dir ...
//! drop(forgers); // they leave the mesh
//! ```

use std::path::Path;
use std::time::Duration;

use n2p_core::endpoint::{EndpointOptions, RelayChoice};
use n2p_core::home::N2pHome;
use n2p_core::identity::load_or_create_secret_key;
use n2p_mesh::node::{MeshNode, MeshSettings};
use n2p_mesh::proto::team::TeamConfig;
use n2p_mesh::proto::ticket::MeshTicket;

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::STARTUP_TIMEOUT;
use n2p_testkit::net::free_loopback_addr;

/// Longest forgers get to announce that they leave.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One forged node: its id (as `n2p id` would print it) and the name it announces.
pub(crate) struct Forger {
    /// Its endpoint id.
    pub(crate) id: String,
    /// The name it announces, as given.
    pub(crate) name: String,
    node: MeshNode,
}

impl Forger {
    /// The short form of the id that n2p uses in name suffixes.
    pub(crate) fn short_id(&self) -> &str {
        &self.id[..10]
    }
}

/// Forged nodes running on a runtime of their own; they leave the mesh on drop.
pub(crate) struct Forgers {
    /// The nodes, in the order of their names.
    pub(crate) nodes: Vec<Forger>,
    runtime: tokio::runtime::Runtime,
    _dir: ScratchDir,
}

impl Forgers {
    /// Starts one forged node per entry of `names`, sharing their (non-existent) daemons,
    /// in the team of `team_file` (whose secret they load like `n2p` does), bootstrapping
    /// from `ticket`. Their homes and peers dirs go in a directory inside `parent`.
    pub(crate) fn join(parent: &Path, team_file: &Path, ticket: &str, names: &[&str]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building a tokio runtime for the forged nodes");
        let dir = ScratchDir::new_in(parent, "forgers");
        let team = TeamConfig::load(team_file)
            .unwrap_or_else(|error| panic!("loading {}: {error}", team_file.display()));
        let ticket: MeshTicket = ticket
            .parse()
            .unwrap_or_else(|error| panic!("parsing the ticket {ticket:?}: {error}"));
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let home = N2pHome::new(dir.join(&format!("forger{i}")));
                let key = load_or_create_secret_key(&home)
                    .unwrap_or_else(|error| panic!("making a key for forger {i}: {error}"));
                let id = key.public().to_string();
                let settings = MeshSettings {
                    topic: ticket.topic.clone(),
                    name: (*name).to_owned(),
                    share_daemon: true,
                    daemon_socket: dir.join("no-daemon.sock"),
                    team: team.clone(),
                    secret: team
                        .load_secret()
                        .unwrap_or_else(|error| panic!("loading the team secret: {error}")),
                    peers_dir: home.peers_dir(),
                    peers_access: Default::default(),
                    peer_idle_close: n2p_core::idle::PEER_IDLE_CLOSE,
                    bootstrap: ticket.peers.clone(),
                    endpoint: EndpointOptions {
                        relay: RelayChoice::Disabled,
                        bind: vec![free_loopback_addr()],
                        ..Default::default()
                    },
                    protocols: Vec::new(),
                };
                let node = runtime
                    .block_on(async {
                        tokio::time::timeout(STARTUP_TIMEOUT, MeshNode::join(key, settings)).await
                    })
                    .unwrap_or_else(|_| {
                        panic!("forger {name:?} did not join within {STARTUP_TIMEOUT:?}")
                    })
                    .unwrap_or_else(|error| panic!("forger {name:?} could not join: {error}"));
                Forger {
                    id,
                    name: (*name).to_owned(),
                    node,
                }
            })
            .collect();
        Self {
            nodes,
            runtime,
            _dir: dir,
        }
    }
}

impl Drop for Forgers {
    fn drop(&mut self) {
        // All at once: each leave waits a moment for its announcement to go out.
        let nodes = std::mem::take(&mut self.nodes);
        self.runtime.block_on(async {
            let mut leaving = tokio::task::JoinSet::new();
            for forger in nodes {
                leaving.spawn(async move {
                    let _ = tokio::time::timeout(LEAVE_TIMEOUT, forger.node.leave()).await;
                });
            }
            while leaving.join_next().await.is_some() {}
        });
    }
}
