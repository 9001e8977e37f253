//! What every n2p mode shares: the node's home directory and identity, server addresses,
//! iroh endpoint construction, the access check, and the one forwarding path that joins a
//! local unix-socket connection to an iroh stream.
//!
//! The pieces fit together like this:
//!
//! - [`home::N2pHome`] finds `$N2P_HOME` (default `~/.n2p`) and keeps its permissions tight.
//! - [`identity`] loads or creates the node's ed25519 key and the access secret beside it.
//! - [`secret_file`] is the one reader of secret files: it checks the opened file's type and
//!   mode (owner-only) and creates new ones atomically with mode 0600.
//! - [`address::ServerAddress`] is what `n2p server` prints and `n2p client` parses.
//! - [`endpoint`] builds an iroh endpoint for a relay choice and bind address;
//!   [`congestion`] is n2p's own congestion controller, one of its choices.
//! - [`daemon`] is the `n2p/daemon/1` protocol: the serving side checks access and joins
//!   each stream to a fresh nix-daemon connection; the dialing side keeps one QUIC
//!   connection per peer and opens a stream per local connection; [`idle`] says when
//!   that connection has gone unused long enough to close.
//! - [`conn_stats`] logs the QUIC connection's own counters (RTT, window, losses) at debug
//!   level under the target `n2p::stats`.
//! - [`forward`] copies bytes both ways with half-close carried through; [`hello`] answers
//!   a Nix client's handshake from the peer daemon's recorded answer, saving round trips.
//! - [`limits`] bounds what a peer may hold before and after it proves access.
//! - [`unix`] binds unix sockets safely (0600, stale files replaced, live ones kept).

pub mod accept;
pub mod access;
pub mod address;
pub mod config_file;
pub mod congestion;
pub mod conn_stats;
pub mod daemon;
pub mod endpoint;
pub mod forward;
pub mod hello;
pub mod home;
pub mod identity;
pub mod idle;
pub mod limits;
pub mod secret_file;
pub mod unix;

pub use iroh::{EndpointAddr, EndpointId, SecretKey};
