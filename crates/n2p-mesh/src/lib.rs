//! Gossip membership for n2p: who is in the mesh, what they are called, and which of them get
//! a socket in the peers directory.
//!
//! Two layers, in the spirit of iroh-gossip's `proto` and `net`:
//!
//! - [`proto`] holds the rules and does no I/O: no sockets, no clock reads, no tokio (its
//!   [`proto::team`] module is the one part that reads files: the team file and the team
//!   secret).
//!   - [`proto::team`] reads and checks the team file (members, rights, fixed addresses,
//!     relay, where the secret comes from) and loads the secret.
//!   - [`proto::topic`] derives the gossip topic id, the announcement key and the open-team
//!     access secret from the team secret.
//!   - [`proto::announce`] is the versioned, signed and MAC'd wire format of announcements.
//!   - [`proto::names`] checks and sanitises peer names into safe socket file names.
//!   - [`proto::table`] is the live peer table: verified announcements and the time in, the
//!     wanted set of sockets out.
//!   - [`proto::ticket`] is the invite ticket's text form.
//! - [`node`] does the I/O: one actor task owns the peer table, speaks iroh-gossip, runs the
//!   announce and expiry timers and keeps the peers directory ([`node::peer_sockets`]); it
//!   is used through the [`node::MeshNode`] handle.
//! - [`status`] is what a running node reports ([`status::MeshStatus`]): plain data, and the
//!   schema of `n2p status --json` and `n2p mesh peers --json`.

pub mod node;
pub mod proto;
pub mod status;

pub use iroh_gossip::TopicId;
