//! The client side of the Nix worker protocol, for reading paths out of a nix-daemon:
//! handshake (protocol 1.34 of Nix 2.8 up to the newest Nix and Lix, which needs >= 1.35),
//! STDERR log frames and remote errors, QueryPathInfo, QueryPathFromHashPart,
//! QueryValidPaths, AddTempRoot and NarFromPath.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWrite as W};

use crate::{NarHash, StoreDir, StorePath, nar::NarSummary};

/// Why a daemon operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The connection failed or ended early.
    #[error("nix-daemon connection: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon speaks something else or a version we do not.
    #[error("nix-daemon handshake: {0}")]
    Handshake(String),
    /// The daemon reported an error for this operation.
    #[error("nix-daemon: {0}")]
    Remote(String),
    /// The daemon sent something that breaks the protocol.
    #[error("nix-daemon protocol: {0}")]
    Protocol(String),
    /// The NAR the daemon sent was malformed.
    #[error(transparent)]
    Nar(#[from] crate::nar::NarError),
}

/// A valid path's metadata, as QueryPathInfo returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The path.
    pub path: StorePath,
    /// Its deriver, if known.
    pub deriver: Option<StorePath>,
    /// The NAR hash.
    pub nar_hash: NarHash,
    /// References (basenames).
    pub references: Vec<StorePath>,
    /// Registration time (seconds since the epoch).
    pub registration_time: u64,
    /// NAR size.
    pub nar_size: u64,
    /// Built locally.
    pub ultimate: bool,
    /// Signatures, as the store holds them (`name:base64`).
    pub sigs: Vec<String>,
    /// Content address, if any.
    pub ca: Option<String>,
}

/// A negotiated protocol version, `(major, minor)`.
pub type ProtocolVersion = (u8, u8);

/// One connection to a nix-daemon, after the handshake.
#[derive(Debug)]
pub struct DaemonClient<S> {
    stream: S,
    version: ProtocolVersion,
    store_dir: StoreDir,
}

impl<S: AsyncRead + AsyncWrite + Unpin> DaemonClient<S> {
    /// Performs the client handshake on `stream` (negotiating the lower version).
    pub async fn handshake(stream: S, store_dir: StoreDir) -> Result<Self, WorkerError> {
        let _ = (stream, store_dir);
        todo!()
    }
    /// The negotiated version.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }
    /// The store directory paths are parsed against.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }
    /// QueryPathInfo: `None` when the path is not valid.
    pub async fn query_path_info(
        &mut self,
        path: &StorePath,
    ) -> Result<Option<PathInfo>, WorkerError> {
        let _ = (path, &mut self.stream);
        todo!()
    }
    /// QueryPathFromHashPart: the valid path with this hash part, if any.
    pub async fn query_path_from_hash_part(
        &mut self,
        hash_part: &str,
    ) -> Result<Option<StorePath>, WorkerError> {
        todo!("{hash_part}")
    }
    /// QueryValidPaths: those of `paths` that are valid (no substitution).
    pub async fn query_valid_paths(
        &mut self,
        paths: &[StorePath],
    ) -> Result<Vec<StorePath>, WorkerError> {
        todo!("{paths:?}")
    }
    /// AddTempRoot: keeps `path` from garbage collection while this connection lives.
    pub async fn add_temp_root(&mut self, path: &StorePath) -> Result<(), WorkerError> {
        todo!("{path}")
    }
    /// NarFromPath: streams the path's NAR to `sink` (validated and hashed on the way) and
    /// leaves the connection ready for the next operation.
    pub async fn nar_from_path<Out: W + Unpin>(
        &mut self,
        path: &StorePath,
        sink: &mut Out,
    ) -> Result<NarSummary, WorkerError> {
        let _ = (path, sink);
        todo!()
    }
}
