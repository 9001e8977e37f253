//! The Nix side spoken by n2p itself: the worker-protocol client that reads paths out of a
//! nix-daemon, a streaming NAR parser, Nix's base32 ("nix32"), narinfo files and Nix-format
//! ed25519 signatures.
//!
//! Pure protocol: nothing here opens a socket or a file; callers hand it streams
//! (`AsyncRead`/`AsyncWrite`) and strings.
//!
//! # Why not an existing crate
//!
//! snix's (formerly tvix's) `nix-compat` does nix32, narinfo and signatures well, but it is
//! GPL-3.0-only and crates.io carries only a `0.0.0-pre` placeholder of it, while n2p is
//! MIT OR Apache-2.0 and pins crates.io releases. cachix's `nix-narinfo` (Apache-2.0) is at
//! 0.4 and brings its own store-dir, path and signature types (from `nix-derivation`), so
//! the worker client and the cache would translate between two sets of types; `nix-base32`
//! covers only the encoding. The codec here is small (nix32, hash spellings, store-path
//! rules, the `name:base64` key format over `ed25519-dalek`, narinfo lines), and every part
//! is checked against the real Nix CLI in `tests/nix_cli.rs`.

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
