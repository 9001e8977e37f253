//! What a running mesh node reports about itself and its live peers: one [`MeshStatus`],
//! produced by the node's actor ([`crate::node::MeshNode::status`]) and read back by
//! `n2p status` and `n2p mesh peers`, which print it as text or as this JSON.
//!
//! ```
//! use n2p_mesh::status::{MeshStatus, PeerPath};
//!
//! let status: MeshStatus = serde_json::from_str(
//!     r#"{"id": "b3c1", "name": "alice", "topic": "dev", "shares_daemon": true,
//!         "open_team": false, "addrs": ["192.168.1.10:7001"], "peers_dir": "/home/a/.n2p/peers",
//!         "peers": [{"name": "bob", "id": "8a88", "shares_daemon": true,
//!                    "socket": "/home/a/.n2p/peers/bob.sock", "path": "direct",
//!                    "rtt_ms": 0.8, "last_seen_secs": 0.5, "member": true}]}"#,
//! )?;
//! assert_eq!(status.peers[0].path, PeerPath::Direct);
//! # Ok::<(), serde_json::Error>(())
//! ```
//!
//! The field names and shapes are an interface (scripts read `--json`): a unit test below
//! pins them to a fixed JSON text.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::proto::table::PeerInfo;

/// A snapshot of what a mesh node sees: the answer to `n2p status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// My endpoint id.
    pub id: String,
    /// My name.
    pub name: String,
    /// The topic name.
    pub topic: String,
    /// Whether I share my daemon.
    pub shares_daemon: bool,
    /// Whether the team is open (anyone holding the secret may join).
    pub open_team: bool,
    /// My direct addresses.
    pub addrs: Vec<SocketAddr>,
    /// The peers directory.
    pub peers_dir: PathBuf,
    /// Every live peer, sorted by name: the answer to `n2p mesh peers`.
    pub peers: Vec<PeerStatus>,
    /// The iroh connections open now, by protocol (absent in the answers of older nodes).
    #[serde(default)]
    pub connections: ConnectionCounts,
    /// How long each dial of my checks of peers waits for an answer now, in ms, before the
    /// peer counts as unreachable: 2000 while I keep up, up to nine times that while I do
    /// not (absent in the answers of older nodes).
    #[serde(default)]
    pub check_wait_ms: Option<u64>,
}

/// How many iroh connections a node has open, by protocol, whichever side opened them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionCounts {
    /// Gossip (membership) connections.
    pub gossip: usize,
    /// Daemon connections: peer sockets in use, and peers using my daemon.
    pub daemon: usize,
    /// Connections of any other protocol (the store protocol of `n2p pull`).
    pub other: usize,
}

/// One live peer in a [`MeshStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The name it goes by here.
    pub name: String,
    /// Its endpoint id.
    pub id: String,
    /// Whether it shares its daemon.
    pub shares_daemon: bool,
    /// Its socket, when I have one for it.
    pub socket: Option<PathBuf>,
    /// How traffic reaches it: the path a live connection to it sends on now.
    pub path: PeerPath,
    /// That path's round-trip time as QUIC estimates it, in milliseconds; `None` without
    /// a connection.
    pub rtt_ms: Option<f64>,
    /// Seconds since it was last heard from.
    pub last_seen_secs: f64,
    /// Whether it is listed in the team file.
    pub member: bool,
}

impl PeerStatus {
    /// The status of the peer table's record `info`, at `now`: its socket file name placed
    /// in `peers_dir`, reached over `path` with round-trip time `rtt`.
    pub(crate) fn from_info(
        info: PeerInfo,
        peers_dir: &Path,
        (path, rtt): (PeerPath, Option<Duration>),
        now: Instant,
    ) -> Self {
        Self {
            socket: info.socket.map(|file| peers_dir.join(file)),
            name: info.name,
            id: info.id.to_string(),
            shares_daemon: info.shares_daemon,
            path,
            rtt_ms: rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
            last_seen_secs: now.saturating_duration_since(info.last_seen).as_secs_f64(),
            member: info.member,
        }
    }
}

/// How traffic reaches a peer; in JSON the lowercase variant name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerPath {
    /// Straight to one of its addresses.
    Direct,
    /// Through a relay server.
    Relay,
    /// No connection in use yet.
    None,
}

impl PeerPath {
    /// `direct`, `relay` or `none`, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relay => "relay",
            Self::None => "none",
        }
    }
}

impl fmt::Display for PeerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so width and alignment in format strings apply.
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iroh::SecretKey;
    use n2p_core::endpoint::RelayChoice;

    use super::*;
    use crate::proto::{
        announce::{AnnounceKind, Announcement},
        table::PeerTable,
        team::{SecretSource, TeamConfig},
    };

    /// `n2p status --json` for [`sample`]. A change here is a change of the interface that
    /// scripts and the end-to-end tests read: keep old fields, add new ones deliberately.
    const GOLDEN: &str = r#"{
  "id": "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
  "name": "alice",
  "topic": "dev",
  "shares_daemon": true,
  "open_team": false,
  "addrs": [
    "192.168.1.10:7001",
    "[fe80::1]:7001"
  ],
  "peers_dir": "/home/alice/.n2p/peers",
  "peers": [
    {
      "name": "bob",
      "id": "b3c1a7d6a40f28e2bd1f1b1c6d87a4f1b3d0e4a2c5f6e7d8091a2b3c4d5e6f70",
      "shares_daemon": true,
      "socket": "/home/alice/.n2p/peers/bob.sock",
      "path": "direct",
      "rtt_ms": 12.5,
      "last_seen_secs": 1.25,
      "member": true
    },
    {
      "name": "carol",
      "id": "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00",
      "shares_daemon": false,
      "socket": null,
      "path": "relay",
      "rtt_ms": 48.0,
      "last_seen_secs": 0.0,
      "member": false
    },
    {
      "name": "dave",
      "id": "d00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00d",
      "shares_daemon": true,
      "socket": null,
      "path": "none",
      "rtt_ms": null,
      "last_seen_secs": 4.5,
      "member": true
    }
  ],
  "connections": {
    "gossip": 5,
    "daemon": 1,
    "other": 0
  },
  "check_wait_ms": 4000
}"#;

    fn sample() -> MeshStatus {
        let peer =
            |name: &str, id: &str, shares_daemon, socket: Option<&str>, path, seen| PeerStatus {
                name: name.to_owned(),
                id: id.to_owned(),
                shares_daemon,
                socket: socket.map(PathBuf::from),
                path,
                rtt_ms: match path {
                    PeerPath::Direct => Some(12.5),
                    PeerPath::Relay => Some(48.0),
                    PeerPath::None => None,
                },
                last_seen_secs: seen,
                member: name != "carol",
            };
        MeshStatus {
            id: "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c".to_owned(),
            name: "alice".to_owned(),
            topic: "dev".to_owned(),
            shares_daemon: true,
            open_team: false,
            addrs: vec![
                "192.168.1.10:7001".parse().expect("v4"),
                "[fe80::1]:7001".parse().expect("v6"),
            ],
            peers_dir: PathBuf::from("/home/alice/.n2p/peers"),
            peers: vec![
                peer(
                    "bob",
                    "b3c1a7d6a40f28e2bd1f1b1c6d87a4f1b3d0e4a2c5f6e7d8091a2b3c4d5e6f70",
                    true,
                    Some("/home/alice/.n2p/peers/bob.sock"),
                    PeerPath::Direct,
                    1.25,
                ),
                peer(
                    "carol",
                    "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00",
                    false,
                    None,
                    PeerPath::Relay,
                    0.0,
                ),
                peer(
                    "dave",
                    "d00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00dd00d",
                    true,
                    None,
                    PeerPath::None,
                    4.5,
                ),
            ],
            connections: ConnectionCounts {
                gossip: 5,
                daemon: 1,
                other: 0,
            },
            check_wait_ms: Some(4000),
        }
    }

    #[test]
    fn json_is_the_golden_text() -> Result<(), serde_json::Error> {
        assert_eq!(serde_json::to_string_pretty(&sample())?, GOLDEN);
        Ok(())
    }

    #[test]
    fn golden_text_reads_back() -> Result<(), serde_json::Error> {
        assert_eq!(serde_json::from_str::<MeshStatus>(GOLDEN)?, sample());
        let compact = serde_json::to_string(&sample())?;
        assert_eq!(serde_json::from_str::<MeshStatus>(&compact)?, sample());
        Ok(())
    }

    #[test]
    fn an_older_nodes_answer_without_the_check_wait_reads_back() -> Result<(), serde_json::Error> {
        let older = GOLDEN.replacen("  },\n  \"check_wait_ms\": 4000\n", "  }\n", 1);
        assert_ne!(older, GOLDEN);
        let status = serde_json::from_str::<MeshStatus>(&older)?;
        assert_eq!(status.check_wait_ms, None);
        assert_eq!(status.connections, sample().connections);
        Ok(())
    }

    #[test]
    fn unknown_path_is_refused() {
        let text = GOLDEN.replacen("\"direct\"", "\"carrier-pigeon\"", 1);
        assert!(serde_json::from_str::<MeshStatus>(&text).is_err());
    }

    #[test]
    fn path_prints_as_in_json_and_pads() {
        for path in [PeerPath::Direct, PeerPath::Relay, PeerPath::None] {
            assert_eq!(
                serde_json::to_string(&path).expect("json"),
                format!("\"{path}\"")
            );
        }
        assert_eq!(format!("[{:<7}]", PeerPath::Relay), "[relay  ]");
    }

    #[test]
    fn peer_status_from_the_table() {
        let me = SecretKey::from_bytes(&[1; 32]).public();
        let bob = SecretKey::from_bytes(&[2; 32]).public();
        let team = TeamConfig::open_team(SecretSource::Env("S".into()), RelayChoice::Disabled);
        let mut table = PeerTable::new(me, "alice", team);
        let t0 = Instant::now();
        let mut ann = Announcement::new(bob, "bob", 1, AnnounceKind::Alive);
        ann.shares_daemon = true;
        table.apply(&ann, t0).expect("bob");
        let info = table.peer(&bob).expect("live");

        let later = t0 + Duration::from_millis(1500);
        let path = (PeerPath::Relay, Some(Duration::from_micros(15_250)));
        let status = PeerStatus::from_info(info, Path::new("/p"), path, later);
        assert_eq!(
            status,
            PeerStatus {
                name: "bob".to_owned(),
                id: bob.to_string(),
                shares_daemon: true,
                socket: Some(PathBuf::from("/p/bob.sock")),
                path: PeerPath::Relay,
                rtt_ms: Some(15.25),
                last_seen_secs: 1.5,
                member: false,
            }
        );
    }
}
