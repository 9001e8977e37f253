//! The Nix side spoken by n2p itself: the worker-protocol client that reads paths out of a
//! nix-daemon, a streaming NAR parser, Nix's base32 ("nix32"), narinfo files and Nix-format
//! ed25519 signatures.
//!
//! Pure protocol: nothing here opens a socket or a file; callers hand it streams
//! (`AsyncRead`/`AsyncWrite`) and strings.

pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod nix32;
pub mod signature;
pub mod store_path;
pub mod worker;

pub use hash::NarHash;
pub use narinfo::NarInfo;
pub use signature::{PublicKey, SecretKey, Signature};
pub use store_path::{StoreDir, StorePath};
pub use worker::{DaemonClient, PathInfo, WorkerError};
