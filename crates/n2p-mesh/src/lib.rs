//! Gossip membership for n2p: who is in the mesh, what they are called, and which of them get
//! a socket in the peers directory.
//!
//! This crate holds the pure, I/O-free parts, in the spirit of iroh-gossip's `proto`
//! module: state machines and codecs that take time as an argument and touch neither
//! sockets nor clocks, so every rule can be tested directly. The actor that drives them
//! over iroh-gossip and keeps the peers directory lives on top.
//!
//! - [`team`] reads the team file (members, rights, fixed addresses, relay, where the
//!   secret comes from) and loads the secret.
//! - [`topic`] derives the gossip topic id, the announcement key and the open-team access
//!   secret from the team secret.
//! - [`announce`] is the versioned, signed and MAC'd wire format of announcements.
//! - [`names`] checks and sanitises peer names into safe socket file names.
//! - [`table`] is the live peer table: verified announcements and the time in, the wanted
//!   set of sockets out.

pub mod announce;
pub mod names;
pub mod node;
pub mod peer_sockets;
pub mod table;
pub mod team;
pub mod ticket;
pub mod topic;

pub use iroh_gossip::TopicId;
