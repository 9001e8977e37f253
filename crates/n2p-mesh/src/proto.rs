//! The mesh's rules, without I/O: what an announcement looks like on the wire, how the topic
//! and keys follow from the team secret, which names are safe, and who is live.
//!
//! Nothing here opens a socket, reads a clock or needs tokio: the time comes in as an
//! argument (an [`std::time::Instant`] for the peer table, Unix milliseconds for sequence
//! numbers), so every rule is tested directly. [`crate::node`] drives these parts over
//! iroh-gossip.
//!
//! ```
//! use std::time::Instant;
//!
//! use iroh::SecretKey;
//! use n2p_mesh::proto::{
//!     announce::{AnnounceKind, Announcement, decode_verified, encode},
//!     table::PeerTable,
//!     team::{SecretSource, TeamConfig},
//!     topic::{MeshKeys, TeamSecret},
//! };
//!
//! let keys = MeshKeys::derive(&TeamSecret::new(b"0123456789abcdef".to_vec())?, "t")?;
//! let bob = SecretKey::from_bytes(&[2; 32]);
//! let mut ann = Announcement::new(bob.public(), "bob", 1, AnnounceKind::Alive);
//! ann.shares_daemon = true;
//! let bytes = encode(&ann, &bob, keys.announce_key())?;
//!
//! let team = TeamConfig::open_team(SecretSource::Env("S".into()), Default::default());
//! let mut table = PeerTable::new(SecretKey::from_bytes(&[1; 32]).public(), "alice", team);
//! table.apply(&decode_verified(&bytes, keys.announce_key())?, Instant::now())?;
//! assert_eq!(table.sockets().get("bob"), Some(&bob.public()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! One part reads files: [`team`] has [`team::TeamConfig::load`], which reads the team file,
//! and the team secret loaders, which read the secret file or an environment variable
//! (blocking reads, still no sockets and no clock). Parsing and checking the team file,
//! [`team::TeamConfig::parse`], takes text.

pub mod announce;
pub mod digest;
pub mod names;
pub mod table;
pub mod team;
pub mod ticket;
pub mod topic;
