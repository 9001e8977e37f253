//! The pull side of n2p: the `n2p/store` ALPN (a read-only view of a node's store, answered
//! through its nix-daemon) and the local HTTP binary-cache facade that stock Nix substitutes
//! from.
//!
//! - [`proto`]: the store protocol's messages and framing.
//! - [`server`]: [`server::StoreService`], the protocol handler a node registers on its
//!   router beside the daemon ALPN.
//! - [`client`]: [`client::StoreClient`], one cached connection per peer.
//! - [`signing`]: the node's Nix signing key in `$N2P_HOME`.
//! - [`facade`]: the HTTP binary cache on loopback that asks the live peers.

mod answers;
pub mod client;
pub mod facade;
pub mod proto;
pub mod server;
pub mod signing;
