//! The client side of the Nix worker protocol, for reading paths out of a nix-daemon:
//! handshake (protocol 1.21 of Nix 2.3 up to 1.38 of the newest Nix; Lix needs >= 1.35),
//! STDERR log frames and remote errors, QueryPathInfo, QueryPathFromHashPart,
//! QueryValidPaths, AddTempRoot and NarFromPath; and, for daemons whose handshake does not
//! say whether they trust us, a refused AddToStoreNar that tells ([`signature_probe`]).
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
//! the caller opens a new connection. Nothing here has a deadline of its own: callers bound
//! each operation (e.g. `tokio::time::timeout`), and a connection whose operation timed out
//! is unusable in the same way.
//!
//! Daemon versions: Nix 2.3 speaks 1.21, 2.8 1.34 (tested against it), 2.15 and Lix 1.35
//! (Lix refuses clients below it), 2.20 1.37, 2.24 and later 1.38 and above; this client
//! offers 1.38 and both sides use the lower version.

pub mod hello;
pub mod notice;
pub mod signature_probe;
mod stderr;
mod wire;

pub use self::signature_probe::{SIGNATURE_PROBE_MIN_VERSION, SignatureCheck};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWrite as W, AsyncWriteExt, BufStream};

use self::stderr::STDERR_ERROR;
use self::wire::{read_bool, read_string, read_strings, read_u64, write_bytes, write_u64};
use crate::nar::{Copied, NarSummary, copy_nar_until};
use crate::{NarHash, StoreDir, StorePath};

/// The minor part of a wire version (`1 << 8 | minor`).
pub(crate) fn minor(version: u64) -> u64 {
    version & 0xff
}

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
    /// A store path the caller gave is not valid (nothing was sent).
    #[error("nix-daemon request: {0}")]
    InvalidPath(#[from] crate::store_path::StorePathError),
    /// The negotiated protocol is older than this operation needs.
    #[error(
        "nix-daemon protocol {}.{} is older than the {}.{} that {operation} needs",
        version.0, version.1, needs.0, needs.1
    )]
    TooOld {
        /// The operation refused.
        operation: &'static str,
        /// The negotiated version.
        version: ProtocolVersion,
        /// The oldest version the operation works with.
        needs: ProtocolVersion,
    },
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
    pub(super) const ADD_TO_STORE_NAR: u64 = 39;
}

/// One connection to a nix-daemon, after the handshake.
///
/// It owns the stream behind one read buffer for the connection's whole life, so the bytes
/// the daemon sends after a NAR are never lost between operations.
#[derive(Debug)]
pub struct DaemonClient<S> {
    stream: BufStream<S>,
    version: ProtocolVersion,
    daemon_version: ProtocolVersion,
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
            daemon_version,
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

    /// The version the daemon offered, which may be newer than the negotiated
    /// [`Self::version`].
    pub fn daemon_version(&self) -> ProtocolVersion {
        self.daemon_version
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
    /// (an invalid path on newer Nix, a missing file on Nix 2.8, which has already sent the
    /// NAR's magic then) in the NAR's place and then closes the connection: that is
    /// [`WorkerError::Remote`] with [`Self::is_usable`] false. A failure in the middle of a
    /// file's contents cannot be told from them: it is a [`WorkerError::Nar`] error.
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
        // A failure while the daemon dumps the path comes as STDERR_ERROR where the NAR
        // (or its next string) should be.
        match copy_nar_until(&mut self.stream, sink, Some(STDERR_ERROR)).await? {
            Copied::Whole(summary) => {
                self.broken = false;
                Ok(summary)
            }
            Copied::Interrupted { offset } => {
                let error = stderr::read_error(&mut self.stream, self.version).await?;
                tracing::debug!(offset, %error, "nix-daemon stopped a NAR");
                Err(error)
            }
        }
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// A recorded daemon: reads come from its recording, writes are kept for comparison.
    pub(super) struct Replay<'a> {
        pub(super) from_daemon: &'a [u8],
        pub(super) from_client: Vec<u8>,
    }

    impl AsyncRead for Replay<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = buf.remaining().min(self.from_daemon.len());
            buf.put_slice(&self.from_daemon[..n]);
            self.from_daemon = &self.from_daemon[n..];
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Replay<'_> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.from_client.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// One recording (see `tests/daemon.rs`, `record_handshake_and_query_path_info`).
    struct Recording {
        from_daemon: &'static [u8],
        from_client: &'static [u8],
        version: ProtocolVersion,
        nix: &'static str,
        trusted: Option<bool>,
        info: PathInfo,
    }

    fn path(basename: &str) -> StorePath {
        StorePath::from_basename(basename).expect("a valid basename")
    }

    fn nix_2_8() -> Recording {
        Recording {
            from_daemon: include_bytes!("../../tests/fixtures/daemon-2.8.0.from-daemon.bin"),
            from_client: include_bytes!("../../tests/fixtures/daemon-2.8.0.from-client.bin"),
            version: (1, 34),
            nix: "2.8.0",
            trusted: None,
            info: PathInfo {
                path: path("gvgfvm2b27csbkkiqxxkxkykpc1kfbnh-top"),
                deriver: None,
                nar_hash: "sha256:02375lijq085a43ivxqqh1cy1bbga1zm9knb5l46i6i0v1ssi34b"
                    .parse()
                    .expect("a hash"),
                references: vec![path("r3z4jv0vv64bg5bx1qw11vrqrb7hfbzc-dep")],
                registration_time: 1795934342,
                nar_size: 168,
                ultimate: false,
                sigs: vec!["n2p-worker-test-1:VPXQgTemrScnL8y9j+R9wA3in58cWyJ2yzewglkWIz0lBdYIsIgwnJ1W9UQXkKo6UAmymO1ctt24ZfeyU+kzBQ==".into()],
                ca: Some("text:sha256:1vv8c0jkg389y85jkc05zmj7ryr2z8h3kmr9zq5al5l6w3py3jq5".into()),
            },
        }
    }

    /// Nix 2.26.3 (Debian trixie) negotiates 1.38: features are exchanged, trust is sent.
    fn nix_2_26() -> Recording {
        let mut info = nix_2_8().info;
        info.registration_time = 1795934640;
        info.sigs = vec!["n2p-worker-test-1:cLBnkx+o+0LtEqsY/qAyplHOD8vbvRx02du36fgt568zTXBVQGyUDlXk3Oefq0cenCj6mOgNN+oSEvq0nOIsDA==".into()];
        Recording {
            from_daemon: include_bytes!("../../tests/fixtures/daemon-2.26.3.from-daemon.bin"),
            from_client: include_bytes!("../../tests/fixtures/daemon-2.26.3.from-client.bin"),
            version: (1, 38),
            nix: "2.26.3",
            trusted: Some(true),
            info,
        }
    }

    fn recordings() -> Vec<Recording> {
        vec![nix_2_8(), nix_2_26()]
    }

    /// The handshake and QueryPathInfo of `path` against `from_daemon`.
    async fn replay<'a>(
        from_daemon: &'a [u8],
        path: &StorePath,
    ) -> Result<(DaemonClient<Replay<'a>>, Option<PathInfo>), WorkerError> {
        let stream = Replay {
            from_daemon,
            from_client: Vec::new(),
        };
        let mut client = DaemonClient::handshake(stream, StoreDir::default()).await?;
        let info = client.query_path_info(path).await?;
        Ok((client, info))
    }

    #[tokio::test]
    async fn recorded_daemons_replay() {
        for recording in recordings() {
            let (client, info) = replay(recording.from_daemon, &recording.info.path)
                .await
                .expect("the recorded exchange");
            assert_eq!(client.version(), recording.version);
            assert_eq!(client.daemon_version(), recording.version);
            assert_eq!(client.daemon_nix_version(), Some(recording.nix));
            assert_eq!(client.trusted(), recording.trusted);
            assert_eq!(info.as_ref(), Some(&recording.info));
            assert!(client.is_usable());
            let stream = client.stream.into_inner();
            assert!(
                stream.from_daemon.is_empty(),
                "the whole recording was read"
            );
            assert_eq!(
                stream.from_client, recording.from_client,
                "the client sends what it sent to the real daemon"
            );
        }
    }

    #[tokio::test]
    async fn every_truncated_recording_is_an_error() {
        for recording in recordings() {
            for len in 0..recording.from_daemon.len() {
                match replay(&recording.from_daemon[..len], &recording.info.path).await {
                    Err(WorkerError::Io(error)) => {
                        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{len}")
                    }
                    Err(other) => panic!("prefix of {len} bytes: {other}"),
                    Ok(_) => panic!("prefix of {len} bytes was taken for a whole exchange"),
                }
            }
        }
    }

    #[tokio::test]
    async fn old_daemons_and_other_majors_are_refused() {
        for version in [(1u64 << 8) | 20, (2 << 8) | 38, 0x1_0000_0122] {
            let mut wire = WORKER_MAGIC_2.to_le_bytes().to_vec();
            wire.extend_from_slice(&version.to_le_bytes());
            match replay(&wire, &path("gvgfvm2b27csbkkiqxxkxkykpc1kfbnh-top")).await {
                Err(WorkerError::Handshake(_)) => {}
                Err(other) => panic!("version {version:#x}: {other}"),
                Ok(_) => panic!("version {version:#x} accepted"),
            }
        }
    }

    #[tokio::test]
    async fn daemons_at_1_38_and_newer_exchange_features_and_trust_in_1_38() {
        for (minor, trust, trusted) in [(38u8, 1u64, Some(true)), (40, 2, Some(false))] {
            // What a Nix 2.24+ daemon sends: magic, its version, its features, its Nix
            // version, trust (1 = trusted, 2 = not), no start-up messages.
            let mut wire = Vec::new();
            for word in [WORKER_MAGIC_2, (1 << 8) | u64::from(minor), 1] {
                wire.extend_from_slice(&word.to_le_bytes());
            }
            wire::write_bytes(&mut wire, b"some-feature")
                .await
                .expect("vec");
            wire::write_bytes(&mut wire, b"2.30.0").await.expect("vec");
            wire.extend_from_slice(&trust.to_le_bytes());
            wire.extend_from_slice(&stderr::STDERR_LAST.to_le_bytes());
            let stream = Replay {
                from_daemon: &wire,
                from_client: Vec::new(),
            };
            let client = DaemonClient::handshake(stream, StoreDir::default())
                .await
                .expect("handshake");
            assert_eq!(client.version(), (1, 38));
            assert_eq!(client.daemon_version(), (1, minor));
            assert_eq!(client.daemon_nix_version(), Some("2.30.0"));
            assert_eq!(client.trusted(), trusted);
            let sent = client.stream.into_inner().from_client;
            let words: Vec<u64> = sent
                .chunks(8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                .collect();
            // magic, version, no features, CPU affinity 0, reserveSpace 0.
            assert_eq!(words, [WORKER_MAGIC_1, (1 << 8) | 38, 0, 0, 0]);
        }
    }

    /// A client past the handshake with a 1.34 daemon that will send `from_daemon`.
    pub(super) async fn client_on(from_daemon: &[u8]) -> DaemonClient<Replay<'_>> {
        DaemonClient {
            stream: BufStream::new(Replay {
                from_daemon,
                from_client: Vec::new(),
            }),
            version: (1, 34),
            daemon_version: (1, 34),
            store_dir: StoreDir::default(),
            daemon_nix_version: None,
            trusted: None,
            broken: false,
        }
    }

    const TREE: &[u8] = include_bytes!("../../tests/fixtures/tree.nar");

    #[tokio::test]
    async fn a_nar_reply_is_read_to_its_end_and_no_further() {
        // Everything arrives at once, so the read buffer holds the next reply too.
        let mut wire = stderr::STDERR_LAST.to_le_bytes().to_vec();
        wire.extend_from_slice(TREE);
        wire.extend_from_slice(&stderr::STDERR_LAST.to_le_bytes());
        wire.extend_from_slice(&1u64.to_le_bytes()); // AddTempRoot's reply
        let mut client = client_on(&wire).await;
        let top = path("gvgfvm2b27csbkkiqxxkxkykpc1kfbnh-top");
        let mut nar = Vec::new();
        let summary = client.nar_from_path(&top, &mut nar).await.expect("NAR");
        assert_eq!(nar, TREE);
        assert_eq!(summary.size, TREE.len() as u64);
        client
            .add_temp_root(&top)
            .await
            .expect("the next operation");
        assert!(client.is_usable());
    }

    #[tokio::test]
    async fn an_error_in_place_of_the_nar_is_remote_and_ends_the_connection() {
        // Nix 2.8 sends the NAR's magic, then fails to read the path.
        let mut wire = stderr::STDERR_LAST.to_le_bytes().to_vec();
        wire.extend_from_slice(&TREE[..24]);
        wire.extend_from_slice(&STDERR_ERROR.to_le_bytes());
        wire::write_bytes(&mut wire, b"Error").await.expect("vec");
        wire.extend_from_slice(&0u64.to_le_bytes());
        wire::write_bytes(&mut wire, b"Error").await.expect("vec");
        wire::write_bytes(&mut wire, b"getting status of '/nix/store/x': No such file")
            .await
            .expect("vec");
        wire.extend_from_slice(&[0u8; 16]); // no position, no traces
        let mut client = client_on(&wire).await;
        let top = path("gvgfvm2b27csbkkiqxxkxkykpc1kfbnh-top");
        match client.nar_from_path(&top, &mut tokio::io::sink()).await {
            Err(WorkerError::Remote(message)) => assert!(message.contains("No such file")),
            other => panic!("expected a remote error, got {other:?}"),
        }
        assert!(!client.is_usable());
        assert!(matches!(
            client.add_temp_root(&top).await,
            Err(WorkerError::Protocol(_))
        ));
    }
}
