//! The client side of the Nix worker protocol, for reading paths out of a nix-daemon:
//! handshake (protocol 1.21 of Nix 2.3 up to 1.38 of the newest Nix; Lix needs >= 1.35),
//! STDERR log frames and remote errors, QueryPathInfo, QueryPathFromHashPart,
//! QueryValidPaths, AddTempRoot and NarFromPath.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use n2p_nix::{DaemonClient, StoreDir};
//!
//! let socket = tokio::net::UnixStream::connect("/nix/var/nix/daemon-socket/socket").await?;
//! let mut daemon = DaemonClient::handshake(socket, StoreDir::default()).await?;
//! let path = daemon.store_dir().parse_path("/nix/store/00000000000000000000000000000000-x")?;
//! if let Some(info) = daemon.query_path_info(&path).await? {
//!     let mut nar = tokio::io::sink();
//!     let summary = daemon.nar_from_path(&path, &mut nar).await?;
//!     assert_eq!(summary.hash, info.nar_hash);
//! }
//! # Ok(()) }
//! ```
//!
//! After an error other than [`WorkerError::Remote`], or when an operation's future is
//! dropped before it finishes, the two sides no longer agree on where they are in the stream:
//! the client then refuses every further operation ([`DaemonClient::is_usable`] is false) and
//! the caller opens a new connection.

mod stderr;
mod wire;

use std::io::Cursor;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWrite as W, AsyncWriteExt, BufStream};

use self::stderr::STDERR_ERROR;
use self::wire::{read_bool, read_string, read_strings, read_u64, write_bytes, write_u64};
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
    /// References (store paths).
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

/// The first word a client sends.
const WORKER_MAGIC_1: u64 = 0x6e69_7863;
/// The first word a daemon answers.
const WORKER_MAGIC_2: u64 = 0x6478_696f;
/// The newest version this client speaks: 1.38 (Nix 2.24 and later), whose only addition
/// over 1.37 for these operations is the exchange of feature lists (this client has none).
pub const CLIENT_VERSION: ProtocolVersion = (1, 38);
/// The oldest daemon version this client accepts: 1.21 (Nix 2.3).
pub const MIN_VERSION: ProtocolVersion = (1, 21);

/// Read buffer size: NAR contents pass from this buffer straight to the caller's sink.
const READ_BUFFER: usize = 128 * 1024;
/// Write buffer size: requests are small; one flush sends each.
const WRITE_BUFFER: usize = 8 * 1024;

/// Operation codes.
mod op {
    pub(super) const ADD_TEMP_ROOT: u64 = 11;
    pub(super) const QUERY_PATH_INFO: u64 = 26;
    pub(super) const QUERY_PATH_FROM_HASH_PART: u64 = 29;
    pub(super) const QUERY_VALID_PATHS: u64 = 31;
    pub(super) const NAR_FROM_PATH: u64 = 38;
}

/// One connection to a nix-daemon, after the handshake.
///
/// It owns the stream behind one read buffer for the connection's whole life, so the bytes
/// the daemon sends after a NAR are never lost between operations.
#[derive(Debug)]
pub struct DaemonClient<S> {
    stream: BufStream<S>,
    version: ProtocolVersion,
    store_dir: StoreDir,
    daemon_nix_version: Option<String>,
    trusted: Option<bool>,
    /// Set while an operation runs and left set when it fails mid-way (or its future is
    /// dropped): the stream's position is then unknown.
    broken: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> DaemonClient<S> {
    /// Performs the client handshake on `stream` (negotiating the lower version).
    ///
    /// Sends [`CLIENT_VERSION`], refuses a daemon whose version is below [`MIN_VERSION`] or
    /// of another major version with [`WorkerError::Handshake`], and reads the daemon's Nix
    /// version (>= 1.33), whether it trusts us (>= 1.35) and its start-up messages.
    pub async fn handshake(stream: S, store_dir: StoreDir) -> Result<Self, WorkerError> {
        let mut stream = BufStream::with_capacity(READ_BUFFER, WRITE_BUFFER, stream);
        write_u64(&mut stream, WORKER_MAGIC_1).await?;
        write_u64(&mut stream, encode_version(CLIENT_VERSION)).await?;
        stream.flush().await?;
        let magic = read_u64(&mut stream).await?;
        if magic != WORKER_MAGIC_2 {
            return Err(WorkerError::Handshake(format!(
                "the peer is not a nix-daemon (it answered {magic:#x})"
            )));
        }
        let daemon = read_u64(&mut stream).await?;
        let daemon_version = decode_version(daemon).ok_or_else(|| {
            WorkerError::Handshake(format!("the daemon speaks protocol {daemon:#x}, not 1.x"))
        })?;
        let version = daemon_version.min(CLIENT_VERSION);
        if version < MIN_VERSION {
            return Err(WorkerError::Handshake(format!(
                "the daemon speaks protocol {}.{}, older than the {}.{} (Nix 2.3) this client needs",
                version.0, version.1, MIN_VERSION.0, MIN_VERSION.1
            )));
        }
        if version >= (1, 38) {
            // Our features: none. The daemon's are read (and unused).
            write_u64(&mut stream, 0).await?;
            stream.flush().await?;
            let features = read_strings(&mut stream, "daemon features").await?;
            tracing::debug!(?features, "nix-daemon protocol features");
        }
        if version >= (1, 14) {
            write_u64(&mut stream, 0).await?; // obsolete CPU affinity: none
        }
        if version >= (1, 11) {
            write_u64(&mut stream, 0).await?; // obsolete reserveSpace: false
        }
        stream.flush().await?;
        let daemon_nix_version = if version >= (1, 33) {
            Some(read_string(&mut stream, "daemon Nix version").await?)
        } else {
            None
        };
        let trusted = if version >= (1, 35) {
            match read_u64(&mut stream).await? {
                0 => None,
                1 => Some(true),
                2 => Some(false),
                other => {
                    return Err(WorkerError::Handshake(format!(
                        "the daemon sent trust status {other}, not 0, 1 or 2"
                    )));
                }
            }
        } else {
            None
        };
        stderr::process(&mut stream, version).await?;
        tracing::debug!(
            protocol = %format_args!("{}.{}", version.0, version.1),
            nix = daemon_nix_version.as_deref().unwrap_or("unknown"),
            ?trusted,
            "connected to nix-daemon"
        );
        Ok(Self {
            stream,
            version,
            store_dir,
            daemon_nix_version,
            trusted,
            broken: false,
        })
    }

    /// The negotiated version.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The store directory paths are parsed against.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// The daemon's Nix version, as it reported it (protocol >= 1.33, i.e. Nix >= 2.8).
    pub fn daemon_nix_version(&self) -> Option<&str> {
        self.daemon_nix_version.as_deref()
    }

    /// Whether the daemon trusts this connection (protocol >= 1.35; `None` when the daemon
    /// did not say).
    pub fn trusted(&self) -> Option<bool> {
        self.trusted
    }

    /// Whether the connection can take another operation: false after an error that left the
    /// stream at an unknown position, or a NarFromPath the daemon failed (it closes the
    /// connection then).
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// QueryPathInfo: `None` when the path is not valid.
    pub async fn query_path_info(
        &mut self,
        path: &StorePath,
    ) -> Result<Option<PathInfo>, WorkerError> {
        self.request(op::QUERY_PATH_INFO).await?;
        write_bytes(&mut self.stream, self.store_dir.display(path).as_bytes()).await?;
        self.await_reply().await?;
        let info = if read_bool(&mut self.stream, "QueryPathInfo valid").await? {
            Some(self.read_path_info(path.clone()).await?)
        } else {
            None
        };
        self.broken = false;
        Ok(info)
    }

    /// QueryPathFromHashPart: the valid path with this hash part, if any.
    pub async fn query_path_from_hash_part(
        &mut self,
        hash_part: &str,
    ) -> Result<Option<StorePath>, WorkerError> {
        self.request(op::QUERY_PATH_FROM_HASH_PART).await?;
        write_bytes(&mut self.stream, hash_part.as_bytes()).await?;
        self.await_reply().await?;
        let path = self.read_optional_path("QueryPathFromHashPart").await?;
        self.broken = false;
        Ok(path)
    }

    /// QueryValidPaths: those of `paths` that are valid (no substitution).
    pub async fn query_valid_paths(
        &mut self,
        paths: &[StorePath],
    ) -> Result<Vec<StorePath>, WorkerError> {
        self.request(op::QUERY_VALID_PATHS).await?;
        write_u64(&mut self.stream, paths.len() as u64).await?;
        for path in paths {
            write_bytes(&mut self.stream, self.store_dir.display(path).as_bytes()).await?;
        }
        if self.version >= (1, 27) {
            write_u64(&mut self.stream, 0).await?; // substitute: no
        }
        self.await_reply().await?;
        let valid = read_strings(&mut self.stream, "QueryValidPaths").await?;
        let valid = valid
            .iter()
            .map(|full| self.parse_path(full, "QueryValidPaths"))
            .collect::<Result<_, _>>()?;
        self.broken = false;
        Ok(valid)
    }

    /// AddTempRoot: keeps `path` from garbage collection while this connection lives.
    pub async fn add_temp_root(&mut self, path: &StorePath) -> Result<(), WorkerError> {
        self.request(op::ADD_TEMP_ROOT).await?;
        write_bytes(&mut self.stream, self.store_dir.display(path).as_bytes()).await?;
        self.await_reply().await?;
        let reply = read_u64(&mut self.stream).await?;
        if reply != 1 {
            return Err(WorkerError::Protocol(format!(
                "AddTempRoot: expected 1, got {reply:#x}"
            )));
        }
        self.broken = false;
        Ok(())
    }

    /// NarFromPath: streams the path's NAR to `sink` (validated and hashed on the way) and
    /// leaves the connection ready for the next operation.
    ///
    /// The daemon sends the NAR unframed after its `STDERR_LAST`, so it reports a failure
    /// (an invalid path on newer Nix, a missing file on Nix 2.8) in its place and then closes
    /// the connection: that is [`WorkerError::Remote`] with [`Self::is_usable`] false.
    /// Nix 2.8 dumps whatever lies at the path without checking that it is valid: ask
    /// [`Self::query_path_info`] first and compare the returned hash with its `nar_hash`.
    /// On any error the sink has received a prefix of the NAR at most and must be discarded.
    pub async fn nar_from_path<Out: W + Unpin>(
        &mut self,
        path: &StorePath,
        sink: &mut Out,
    ) -> Result<NarSummary, WorkerError> {
        self.request(op::NAR_FROM_PATH).await?;
        write_bytes(&mut self.stream, self.store_dir.display(path).as_bytes()).await?;
        self.await_reply().await?;
        // The NAR's first word is its magic's length (13); an error comes instead of it.
        let first = read_u64(&mut self.stream).await?;
        if first == STDERR_ERROR {
            return Err(stderr::read_error(&mut self.stream, self.version).await?);
        }
        let mut nar = Cursor::new(first.to_le_bytes()).chain(&mut self.stream);
        let summary = crate::nar::copy_nar(&mut nar, sink).await?;
        self.broken = false;
        Ok(summary)
    }

    /// Starts an operation: refuses it on a broken connection, marks the connection busy and
    /// writes the operation code.
    async fn request(&mut self, op: u64) -> Result<(), WorkerError> {
        if self.broken {
            return Err(WorkerError::Protocol(
                "the connection is unusable after an earlier failure; open a new one".into(),
            ));
        }
        self.broken = true;
        write_u64(&mut self.stream, op).await
    }

    /// Sends the request and reads the daemon's messages up to the reply. A remote error
    /// ends the operation cleanly: the connection stays usable.
    async fn await_reply(&mut self) -> Result<(), WorkerError> {
        self.stream.flush().await?;
        match stderr::process(&mut self.stream, self.version).await {
            Err(WorkerError::Remote(message)) => {
                self.broken = false;
                Err(WorkerError::Remote(message))
            }
            other => other,
        }
    }

    /// Reads the fields of a ValidPathInfo after its path.
    async fn read_path_info(&mut self, path: StorePath) -> Result<PathInfo, WorkerError> {
        const OP: &str = "QueryPathInfo";
        let deriver = self.read_optional_path("QueryPathInfo deriver").await?;
        let hash = read_string(&mut self.stream, "QueryPathInfo narHash").await?;
        let nar_hash = NarHash::from_base16(&hash)
            .map_err(|error| WorkerError::Protocol(format!("{OP}: narHash: {error}")))?;
        let references = read_strings(&mut self.stream, "QueryPathInfo references").await?;
        let references = references
            .iter()
            .map(|full| self.parse_path(full, "QueryPathInfo reference"))
            .collect::<Result<_, _>>()?;
        let registration_time = read_u64(&mut self.stream).await?;
        let nar_size = read_u64(&mut self.stream).await?;
        let ultimate = read_bool(&mut self.stream, "QueryPathInfo ultimate").await?;
        let sigs = read_strings(&mut self.stream, "QueryPathInfo sigs").await?;
        let ca = read_string(&mut self.stream, "QueryPathInfo ca").await?;
        Ok(PathInfo {
            path,
            deriver,
            nar_hash,
            references,
            registration_time,
            nar_size,
            ultimate,
            sigs,
            ca: (!ca.is_empty()).then_some(ca),
        })
    }

    /// Reads a store path or the empty string for none.
    async fn read_optional_path(&mut self, what: &str) -> Result<Option<StorePath>, WorkerError> {
        let full = read_string(&mut self.stream, what).await?;
        if full.is_empty() {
            return Ok(None);
        }
        self.parse_path(&full, what).map(Some)
    }

    fn parse_path(&self, full: &str, what: &str) -> Result<StorePath, WorkerError> {
        self.store_dir
            .parse_path(full)
            .map_err(|error| WorkerError::Protocol(format!("{what}: {error}")))
    }
}

/// `major << 8 | minor`, as on the wire.
fn encode_version((major, minor): ProtocolVersion) -> u64 {
    u64::from(major) << 8 | u64::from(minor)
}

/// A 1.x version from the wire, or `None` for another major version or garbage.
fn decode_version(wire: u64) -> Option<ProtocolVersion> {
    let major = u8::try_from(wire >> 8).ok()?;
    (major == 1).then_some((major, (wire & 0xff) as u8))
}
