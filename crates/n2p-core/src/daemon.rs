//! The `n2p/daemon/1` protocol: raw nix-daemon protocol carried over iroh, one QUIC stream
//! per daemon connection.
//!
//! Each stream starts with the client's 32-byte [`AccessProof`]; the serving side
//! ([`DaemonService`]) checks it with its [`AccessPolicy`] and only then opens a fresh
//! connection to the local nix-daemon socket and joins the two with [`forward`]. A refused
//! peer gets its whole connection closed with [`ACCESS_DENIED`] and never a byte through.
//!
//! The dialing side ([`DaemonDialer`]) keeps one QUIC connection per peer, reconnecting when
//! it has dropped, and [`serve_local_listener`] turns every connection on a local unix
//! socket into one stream on it; a [`ListenerShutdown`] stops it accepting at once and lets
//! the forwards in flight finish, or aborts them.

use std::{
    convert::Infallible,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use iroh::{
    Endpoint, EndpointAddr, EndpointId,
    endpoint::{
        ApplicationClose, ConnectError, ConnectingError, Connection, ConnectionError,
        ConnectionState, OutgoingZeroRttConnection, VarInt, WeakConnectionHandle, ZeroRttStatus,
    },
    protocol::{AcceptError, ProtocolHandler},
};
use n2p_nix::worker::notice::FailureNotice;
use tokio::{
    io::AsyncWriteExt,
    net::{UnixListener, UnixStream},
    sync::Mutex,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    accept::{prove_stream, serve_streams},
    access::{AccessPolicy, AccessProof, AccessSecret},
    forward::{
        ForwardError, ForwardStats, LiveStream, NixClient, QuicPair, forward, forward_nix_client,
    },
    hello::HelloCache,
    idle::{IdleClock, idle_check_every},
    limits::{AcceptBackoff, ConnectionGate, Limits, PeerSlots, UnprovenPermit},
};

/// ALPN of the raw daemon protocol.
pub const DAEMON_ALPN: &[u8] = b"n2p/daemon/1";

/// Application close code: the peer is not allowed to use this daemon.
pub const ACCESS_DENIED: VarInt = VarInt::from_u32(403);

/// Close code used when a node shuts down.
pub const SHUTTING_DOWN: VarInt = VarInt::from_u32(0);

/// Close code used when a dialer closes a connection nothing has used for a while
/// ([`DaemonDialer::close_idle`]); its next stream connects again.
pub const IDLE_CLOSE: VarInt = VarInt::from_u32(1);

/// Most bytes read from a daemon stream before the daemon connection is made (Nix's first
/// message, its 8-byte magic and version, fits many times).
const FIRST_READ: usize = 4096;

/// Default bound on establishing a connection to a peer.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the local nix-daemon to peers that pass the access policy, within [`Limits`]: a
/// connection that has not proved access may have only a few streams waiting and is closed
/// if no proof arrives by the deadline; each peer may hold only so many daemon connections.
#[derive(Debug, Clone)]
pub struct DaemonService {
    daemon_socket: Arc<PathBuf>,
    policy: AccessPolicy,
    me: EndpointId,
    limits: Limits,
    peer_slots: Arc<PeerSlots>,
}

impl DaemonService {
    /// Forwards accepted streams to the daemon at `daemon_socket`; `me` is this node's id.
    /// Applies [`Limits::default`].
    pub fn new(daemon_socket: PathBuf, policy: AccessPolicy, me: EndpointId) -> Self {
        let limits = Limits::default();
        Self {
            daemon_socket: Arc::new(daemon_socket),
            policy,
            me,
            limits,
            peer_slots: Arc::new(PeerSlots::new(limits.max_per_peer)),
        }
    }

    /// The same service with other limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self.peer_slots = Arc::new(PeerSlots::new(limits.max_per_peer));
        self
    }

    /// Checks the stream's proof, then joins it to a fresh daemon connection. Every early
    /// return drops `streams`, which resets them.
    async fn handle_stream(
        &self,
        conn: &Connection,
        gate: &ConnectionGate,
        unproven: UnprovenPermit,
        mut streams: QuicPair,
    ) {
        let proven = prove_stream(
            conn,
            gate,
            unproven,
            &mut streams.recv,
            &self.policy,
            self.me,
            self.limits.proof_deadline,
            "refused peer",
        )
        .await;
        if !proven {
            return;
        }
        let peer = conn.remote_id();
        // Nix speaks first on a daemon connection, so waiting for its first bytes before
        // connecting to the daemon costs nothing; a stream that ends right after its proof
        // is an access check ([`DaemonDialer::check_access`]): answered with a clean finish
        // and no daemon connection at all.
        let mut first = vec![0u8; FIRST_READ];
        let first_len = match streams.recv.read(&mut first).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                debug!("access check passed");
                streams.send.finish().ok();
                streams.completed();
                return;
            }
            Err(e) => {
                debug!("stream ended before its first daemon bytes: {e}");
                return;
            }
        };
        // Each forward holds a daemon worker: a peer gets only so many at once.
        let _slot = match self.peer_slots.acquire(peer) {
            Ok(slot) => slot,
            Err(hit) => {
                if hit.first {
                    warn!(peer = %peer,
                        "peer {peer} holds {} daemon connections, the most allowed; refusing more until it holds none",
                        hit.limit
                    );
                }
                return;
            }
        };
        let mut daemon = match connect_daemon(self.daemon_socket.as_path()).await {
            Ok(daemon) => daemon,
            Err(e) => {
                error!(
                    "cannot connect to the nix-daemon at {}: {e} (is nix-daemon running? set --daemon-socket or NIX_DAEMON_SOCKET_PATH)",
                    self.daemon_socket.display()
                );
                return;
            }
        };
        if let Err(e) = daemon.write_all(&first[..first_len]).await {
            warn!("writing to the nix-daemon failed: {e}");
            return;
        }
        drop(first);
        // Logged there; the serving side has nothing else to do about it.
        let _ = logged("daemon stream", forward(daemon, streams).await);
    }
}

impl ProtocolHandler for DaemonService {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = conn.remote_id();
        let span = info_span!("peer", me = %self.me.fmt_short(), remote = %peer.fmt_short());
        async {
            if let Err(refusal) = self.policy.check_peer(peer) {
                warn!(peer = %peer, "refused peer {peer}: {refusal}");
                conn.close(ACCESS_DENIED, refusal.to_string().as_bytes());
                return Ok(());
            }
            debug!("peer connected");
            crate::conn_stats::spawn_logger(&conn, "accept");
            let service = self.clone();
            serve_streams(
                &conn,
                "daemon",
                &self.limits,
                None,
                move |conn, gate, unproven, pair| {
                    let service = service.clone();
                    async move { service.handle_stream(&conn, &gate, unproven, pair).await }
                },
            )
            .await;
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// Why opening a daemon stream to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// No connection could be established in time.
    #[error(
        "peer {peer} did not answer within {:.1} s (is it running, and is the address current?)",
        after.as_secs_f64()
    )]
    Timeout {
        /// The peer.
        peer: EndpointId,
        /// How long we waited.
        after: Duration,
    },
    /// The connection attempt failed.
    #[error("cannot connect to peer {peer}")]
    Connect {
        /// The peer.
        peer: EndpointId,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The peer refused us.
    #[error("peer {peer} refused access: {reason}")]
    Refused {
        /// The peer.
        peer: EndpointId,
        /// What it said.
        reason: String,
    },
    /// The last attempt to connect failed moments ago ([`RETRY_AFTER`]): failed at once
    /// instead of waiting for another attempt.
    #[error(
        "peer {peer} unreachable for {} s (last attempt: {reason}); next attempt in {:.1} s",
        failing_for.as_secs(),
        retry_in.as_secs_f64()
    )]
    Unreachable {
        /// The peer.
        peer: EndpointId,
        /// Since the first failed attempt of this outage.
        failing_for: Duration,
        /// Until the next attempt is made.
        retry_in: Duration,
        /// Why the last attempt failed.
        reason: String,
    },
    /// The connection dropped while opening the stream.
    #[error("connection to peer {peer} lost: {reason}")]
    Lost {
        /// The peer.
        peer: EndpointId,
        /// What happened.
        reason: String,
    },
}

/// After a failed connection attempt, how long further requests fail at once
/// ([`DialError::Unreachable`]) instead of each waiting for an attempt of its own.
pub const RETRY_AFTER: Duration = Duration::from_secs(3);

/// While a peer stays unreachable, how often [`DaemonDialer::open_stream`] logs it.
pub const UNREACHABLE_LOG_EVERY: Duration = Duration::from_secs(30);

/// Opens daemon streams to one peer over one shared, lazily (re)established connection
/// (or, with [`DaemonDialer::with_alpn`], streams of another proof-first protocol).
///
/// One connection attempt at a time: callers that arrive while one is under way wait for
/// its outcome, and after a failure they (and everyone for [`RETRY_AFTER`]) fail at once,
/// so a burst of Nix connections to an unreachable peer costs one connect timeout, not one
/// each. [`Self::open_stream`] logs an outage when it starts and every
/// [`UNREACHABLE_LOG_EVERY`] while it lasts, with how long it has lasted.
#[derive(Debug)]
pub struct DaemonDialer {
    endpoint: Endpoint,
    target: EndpointAddr,
    alpn: &'static [u8],
    proof: AccessProof,
    connect_timeout: Duration,
    /// Whether a connection that resumes a session sends its first streams with 0-RTT
    /// ([`Self::with_early_data`]; never with [`DAEMON_ALPN`]).
    early_data: bool,
    /// Shared with the task that waits for a 0-RTT connection's handshake.
    shared: Arc<Shared>,
    /// Streams opened so far, for telling whether the dialer was used between two looks.
    opened: AtomicU64,
    /// Stream pairs opened and not yet dropped.
    live: Arc<AtomicUsize>,
    /// The peer daemon's handshake, for answering the next client's at once.
    hello: HelloCache,
}

/// A reading of the open connection to a peer ([`DaemonDialer::heard`]): which connection,
/// the datagrams received on it so far, and its round-trip time.
#[derive(Debug, Clone, Copy)]
pub struct Heard {
    conn: usize,
    datagrams: u64,
    rtt: Option<Duration>,
}

impl Heard {
    /// The round-trip time of the connection's selected path (QUIC's smoothed estimate;
    /// [`crate::endpoint::INITIAL_RTT`] on a path with no sample yet).
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Whether the peer was heard from between `earlier` and this reading: a datagram
    /// arrived on the same connection, or this connection was made since (no connection
    /// was open at `earlier`, `None`, or another one).
    pub fn is_news_since(&self, earlier: Option<&Heard>) -> bool {
        earlier.is_none_or(|e| e.conn != self.conn || e.datagrams != self.datagrams)
    }
}

/// The dialer's connection, or the outage in progress.
#[derive(Debug, Default)]
struct DialState {
    conn: Option<Connection>,
    /// A connection sent with 0-RTT whose handshake is under way; it becomes `conn` when
    /// the handshake completes ([`settle`]).
    early: Option<OutgoingZeroRttConnection>,
    outage: Option<Outage>,
}

/// The dialer's state, and what can be read of it without waiting for it.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<DialState>,
    /// The latest connection made, for reading it ([`DaemonDialer::heard`]) without waiting
    /// for `state` (held while connecting); weak, so it keeps nothing open.
    latest: std::sync::Mutex<Option<WeakConnectionHandle>>,
}

impl Shared {
    fn latest(&self) -> std::sync::MutexGuard<'_, Option<WeakConnectionHandle>> {
        self.latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `conn` the dialer's connection.
    fn connected(&self, state: &mut DialState, conn: Connection) {
        let peer = conn.remote_id();
        if let Some(outage) = state.outage.take() {
            info!(peer = %peer.fmt_short(),
                "reached peer {peer} again after {} s unreachable",
                outage.since.elapsed().as_secs()
            );
        }
        info!(peer = %peer.fmt_short(), "connected to {}", peer);
        tokio::spawn(log_when_closed(conn.clone()));
        crate::conn_stats::spawn_logger(&conn, "dial");
        *self.latest() = Some(conn.weak_handle());
        state.conn = Some(conn);
    }
}

/// What a connection attempt made: a connection, or one that resumed a session and whose
/// handshake is still under way.
enum Dialed {
    Done(Connection),
    Early(OutgoingZeroRttConnection),
}

/// Waits up to `timeout` for the handshake of `early`, then, if the dialer still holds it,
/// puts what it became in its place: the connection (its 0-RTT data accepted or not), or
/// an outage. Whoever sees the outcome first (the task started with the connection, or an
/// opener that needs the full connection) does it.
async fn settle(
    shared: &Shared,
    early: &OutgoingZeroRttConnection,
    peer: EndpointId,
    timeout: Duration,
    started: Instant,
) -> Result<(), DialError> {
    let outcome = tokio::time::timeout(timeout, early.handshake_completed()).await;
    let mut state = shared.state.lock().await;
    if state
        .early
        .as_ref()
        .is_none_or(|held| held.stable_id() != early.stable_id())
    {
        return Ok(());
    }
    state.early = None;
    let error = match outcome {
        Ok(Ok(status)) => {
            let (fate, conn) = match status {
                ZeroRttStatus::Accepted(conn) => ("accepted", conn),
                ZeroRttStatus::Rejected(conn) => ("rejected; its streams are sent again", conn),
            };
            debug!(peer = %peer.fmt_short(), "0-RTT data {fate}");
            shared.connected(&mut state, conn);
            return Ok(());
        }
        Ok(Err(source)) => DialError::Connect {
            peer,
            source: source.into(),
        },
        Err(_) => {
            early.close(SHUTTING_DOWN, b"handshake timed out");
            DialError::Timeout {
                peer,
                after: started.elapsed(),
            }
        }
    };
    record_failure(&mut state, started, &error);
    Err(error)
}

/// Notes a failed connection attempt (begun at `started`) in `state`'s outage.
fn record_failure(state: &mut DialState, started: Instant, error: &DialError) {
    let reason = error.to_string();
    match &mut state.outage {
        Some(outage) => {
            outage.last_attempt = Instant::now();
            outage.reason = reason;
        }
        None => {
            state.outage = Some(Outage {
                since: started,
                last_attempt: Instant::now(),
                reason,
                failed_streams: 0,
                logged: None,
            });
        }
    }
}

/// A stream from [`DaemonDialer::open_early_stream`], proof already sent.
#[derive(Debug)]
pub struct EarlyStream {
    /// The stream.
    pub pair: QuicPair,
    /// The connection in its handshake, when the stream went out with 0-RTT.
    sent_early: Option<OutgoingZeroRttConnection>,
}

impl EarlyStream {
    /// Whether the stream went out with 0-RTT.
    pub fn sent_early(&self) -> bool {
        self.sent_early.is_some()
    }

    /// Whether the stream went out with 0-RTT and the peer refused it (waits for the
    /// handshake to tell): then the stream failed, and its request should be sent again on
    /// a new one.
    pub async fn was_refused(&self) -> bool {
        match &self.sent_early {
            Some(conn) => matches!(
                conn.handshake_completed().await,
                Ok(ZeroRttStatus::Rejected(_))
            ),
            None => false,
        }
    }
}

/// A peer that could not be reached, since when.
#[derive(Debug)]
struct Outage {
    since: Instant,
    last_attempt: Instant,
    /// Why the last attempt failed.
    reason: String,
    /// Streams refused during the outage, and when it was last logged.
    failed_streams: u64,
    logged: Option<Instant>,
}

impl DaemonDialer {
    /// A dialer to `target` that proves knowledge of `secret`.
    pub fn new(endpoint: Endpoint, target: EndpointAddr, secret: &AccessSecret) -> Self {
        let proof = secret.proof(endpoint.id(), target.id);
        Self {
            endpoint,
            target,
            alpn: DAEMON_ALPN,
            proof,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            early_data: false,
            shared: Arc::default(),
            opened: AtomicU64::new(0),
            live: Arc::new(AtomicUsize::new(0)),
            hello: HelloCache::new(),
        }
    }

    /// Sets how long a connection attempt may take.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Speaks `alpn` instead of [`DAEMON_ALPN`]: for other protocols whose streams also
    /// start with an [`AccessProof`] (the pull side's store protocol).
    pub fn with_alpn(mut self, alpn: &'static [u8]) -> Self {
        self.alpn = alpn;
        self
    }

    /// Sends the first streams of a connection that resumes an earlier session with the
    /// peer with 0-RTT, before the handshake completes, when they are opened with
    /// [`Self::open_early_stream`]: a round trip saved on each reconnection. Such streams
    /// are replayable by someone who recorded them, so only for a protocol whose requests
    /// change nothing (the store protocol's lookups); never on [`DAEMON_ALPN`], whatever
    /// this says.
    pub fn with_early_data(mut self) -> Self {
        self.early_data = true;
        self
    }

    /// The peer's id.
    pub fn peer(&self) -> EndpointId {
        self.target.id
    }

    /// The peer daemon's recorded handshake ([`crate::hello`]).
    pub fn hello(&self) -> &HelloCache {
        &self.hello
    }

    /// The live connection, connecting first if there is none or it has closed (and
    /// waiting for the handshake of one sent with 0-RTT); fails at once during the
    /// [`RETRY_AFTER`] that follows a failed attempt.
    pub async fn connection(&self) -> Result<Connection, DialError> {
        loop {
            match self.held(false).await? {
                Dialed::Done(conn) => return Ok(conn),
                Dialed::Early(early) => {
                    let started = Instant::now();
                    settle(
                        &self.shared,
                        &early,
                        self.target.id,
                        self.connect_timeout,
                        started,
                    )
                    .await?;
                }
            }
        }
    }

    /// The live connection, or one sent with 0-RTT whose handshake is under way; connects
    /// first if there is neither (with 0-RTT when `early` and the dialer sends early
    /// data); fails at once during the [`RETRY_AFTER`] that follows a failed attempt.
    async fn held(&self, early: bool) -> Result<Dialed, DialError> {
        let mut state = self.shared.state.lock().await;
        if let Some(conn) = state.early.as_ref() {
            match conn.close_reason() {
                None => return Ok(Dialed::Early(conn.clone())),
                // Failed in its handshake: its settling records why.
                Some(reason) => debug!("reconnecting: {}", describe_close(&reason)),
            }
            state.early = None;
        }
        if let Some(conn) = state.conn.as_ref() {
            match conn.close_reason() {
                None => return Ok(Dialed::Done(conn.clone())),
                Some(reason) => debug!("reconnecting: {}", describe_close(&reason)),
            }
        }
        let peer = self.target.id;
        if let Some(outage) = &state.outage {
            let since_attempt = outage.last_attempt.elapsed();
            if since_attempt < RETRY_AFTER {
                return Err(DialError::Unreachable {
                    peer,
                    failing_for: outage.since.elapsed(),
                    retry_in: RETRY_AFTER - since_attempt,
                    reason: outage.reason.clone(),
                });
            }
        }
        let started = Instant::now();
        let early = early && self.early_data && self.alpn != DAEMON_ALPN;
        match self.connect(started, early).await {
            Ok(Dialed::Done(conn)) => {
                self.shared.connected(&mut state, conn.clone());
                Ok(Dialed::Done(conn))
            }
            Ok(Dialed::Early(conn)) => {
                debug!(peer = %peer.fmt_short(), "resuming the session with {peer} with 0-RTT");
                state.early = Some(conn.clone());
                let (shared, timeout) = (self.shared.clone(), self.connect_timeout);
                let early = conn.clone();
                tokio::spawn(async move {
                    // A failure is recorded there, for the next stream to find.
                    let _ = settle(&shared, &early, peer, timeout, started).await;
                });
                Ok(Dialed::Early(conn))
            }
            Err(e) => {
                record_failure(&mut state, started, &e);
                Err(e)
            }
        }
    }

    /// One connection attempt, bounded by the connect timeout: with `early`, one that
    /// resumes a session is handed back as soon as its first flight is out.
    async fn connect(&self, started: Instant, early: bool) -> Result<Dialed, DialError> {
        let peer = self.target.id;
        let timed_out = || DialError::Timeout {
            peer,
            after: started.elapsed(),
        };
        // QUIC gives up on a silent peer after its idle timeout, before ours: say so with
        // the time really waited, not as iroh's chain of "timed out".
        let failed = |source: ConnectError| {
            if is_timeout(&source) {
                timed_out()
            } else {
                DialError::Connect { peer, source }
            }
        };
        let attempt = async {
            let connecting = self
                .endpoint
                .connect_with_opts(self.target.clone(), self.alpn, Default::default())
                .await
                .map_err(ConnectError::from)?;
            let connecting = if early {
                match connecting.into_0rtt() {
                    Ok(conn) => return Ok(Dialed::Early(conn)),
                    Err(connecting) => connecting,
                }
            } else {
                connecting
            };
            Ok(Dialed::Done(connecting.await.map_err(ConnectError::from)?))
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| timed_out())?
            .map_err(failed)
    }

    /// Opens one daemon stream, proof already sent. Retries once on a fresh connection when
    /// the cached one turns out to be dead. While the peer is unreachable, logs so when the
    /// outage starts and every [`UNREACHABLE_LOG_EVERY`] (with how long it has lasted and
    /// how many streams failed); other failures are the caller's to log.
    pub async fn open_stream(&self) -> Result<QuicPair, DialError> {
        Ok(self.open(false).await?.pair)
    }

    /// Opens a stream as [`Self::open_stream`] does, but with [`Self::with_early_data`] it
    /// goes out with 0-RTT when the connection has to be made again and resumes a session:
    /// before the handshake completes. The peer may refuse 0-RTT data, and then the stream
    /// fails; [`EarlyStream::was_refused`] tells, and the request should be sent again.
    pub async fn open_early_stream(&self) -> Result<EarlyStream, DialError> {
        self.open(true).await
    }

    /// [`Self::try_open`], with an unreachable peer counted and logged.
    async fn open(&self, early: bool) -> Result<EarlyStream, DialError> {
        let result = self.try_open(early).await;
        if let Err(
            e @ (DialError::Timeout { .. }
            | DialError::Connect { .. }
            | DialError::Unreachable { .. }),
        ) = &result
        {
            self.report_unreachable(e).await;
        }
        result
    }

    /// Counts a stream that failed because the peer is unreachable; logs when due.
    async fn report_unreachable(&self, error: &DialError) {
        let mut state = self.shared.state.lock().await;
        let Some(outage) = state.outage.as_mut() else {
            return;
        };
        outage.failed_streams += 1;
        if outage
            .logged
            .is_some_and(|at| at.elapsed() < UNREACHABLE_LOG_EVERY)
        {
            return;
        }
        outage.logged = Some(Instant::now());
        let peer = self.target.id;
        // What a failed stream was to the user: a Nix connection through a peer socket, or
        // a request of another protocol (the cache's lookups and NARs).
        let failed = if self.alpn == DAEMON_ALPN {
            "Nix connection(s)"
        } else {
            "request(s)"
        };
        error!(peer = %peer.fmt_short(),
            "cannot reach peer {peer} for {} s ({} {failed} failed): {error}; if it moved (new port or network) or was re-keyed, this address is stale: get its current one",
            outage.since.elapsed().as_secs(),
            outage.failed_streams,
        );
    }

    /// Counts a stream about to be opened: in [`Self::streams_opened`], and as live until
    /// the returned guard (or the pair it goes into) is dropped. Done before the connection
    /// is looked up, so that a `close_idle` finds the connection gone or untouched (see
    /// there).
    fn stream_starts(&self) -> LiveStream {
        self.opened.fetch_add(1, Ordering::SeqCst);
        LiveStream::counted_in(&self.live)
    }

    async fn try_open(&self, early: bool) -> Result<EarlyStream, DialError> {
        let live = self.stream_starts();
        let peer = self.target.id;
        let mut last = None;
        for _attempt in 0..2 {
            let (opened, close_reason, sent_early) = match self.held(early).await? {
                Dialed::Early(conn) if early => {
                    (self.open_on(&conn).await, conn.close_reason(), Some(conn))
                }
                Dialed::Early(_) => {
                    let conn = self.connection().await?;
                    (self.open_on(&conn).await, conn.close_reason(), None)
                }
                Dialed::Done(conn) => (self.open_on(&conn).await, conn.close_reason(), None),
            };
            match opened {
                Ok(pair) => {
                    return Ok(EarlyStream {
                        pair: pair.counted_as(live),
                        sent_early,
                    });
                }
                Err(reason) => {
                    if let Some(refused) = close_reason.as_ref().and_then(refusal_of) {
                        return Err(DialError::Refused {
                            peer,
                            reason: refused,
                        });
                    }
                    last = Some(reason);
                }
            }
        }
        Err(DialError::Lost {
            peer,
            reason: last.unwrap_or_default(),
        })
    }

    async fn open_on<S: ConnectionState>(&self, conn: &Connection<S>) -> Result<QuicPair, String> {
        let (send, recv) = conn.open_bi().await.map_err(|e| describe_close(&e))?;
        let mut streams = QuicPair::new(send, recv);
        streams
            .send
            .write_all(&self.proof.0)
            .await
            .map_err(|e| e.to_string())?;
        Ok(streams)
    }

    /// Checks that the peer accepts us, without touching its daemon: sends a stream that
    /// ends right after its access proof, which the serving side answers with a clean
    /// finish, or by closing the connection as a refusal (wrong secret, identity not
    /// allowed). Bounded by the connect timeout.
    pub async fn check_access(&self) -> Result<(), DialError> {
        let _live = self.stream_starts();
        let peer = self.target.id;
        let started = std::time::Instant::now();
        let conn = self.connection().await?;
        let answer = async {
            let mut streams = self.open_on(&conn).await?;
            streams.send.finish().map_err(|e| e.to_string())?;
            streams
                .recv
                .read_to_end(0)
                .await
                .map_err(|e| e.to_string())?;
            streams.completed();
            Ok::<(), String>(())
        };
        let outcome = tokio::time::timeout(self.connect_timeout, answer).await;
        if let Some(reason) = conn.close_reason().as_ref().and_then(refusal_of) {
            return Err(DialError::Refused { peer, reason });
        }
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => {
                // A refusal closes the connection just after the stream ends: give the close
                // a moment to arrive before calling it something else.
                let closed = tokio::time::timeout(REFUSAL_GRACE, conn.closed()).await;
                match closed.ok().as_ref().and_then(refusal_of) {
                    Some(reason) => Err(DialError::Refused { peer, reason }),
                    None => Err(DialError::Lost { peer, reason }),
                }
            }
            Err(_) => Err(DialError::Timeout {
                peer,
                after: started.elapsed(),
            }),
        }
    }

    /// How many streams the dialer has opened (or begun to open) so far.
    pub fn streams_opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }

    /// How many of the stream pairs it opened are still alive (not yet dropped).
    pub fn streams_live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Closes the current connection as idle ([`IDLE_CLOSE`]) if it is open, none of its
    /// stream pairs is alive and no stream has been opened since [`Self::streams_opened`]
    /// returned `seen`; returns whether it closed one. The next [`Self::open_stream`]
    /// connects again.
    ///
    /// A stream counts, as opened and as live, from the start of [`Self::open_stream`]
    /// (or [`Self::check_access`]), before it takes the connection, until its pair is
    /// dropped; the counts are compared under the same lock. A stream that starts during
    /// this call either stops it closing or waits and gets a new connection, so it is
    /// never cut.
    pub async fn close_idle(&self, seen: u64) -> bool {
        let mut state = self.shared.state.lock().await;
        if self.streams_opened() != seen || self.streams_live() > 0 {
            return false;
        }
        // A connection still in its 0-RTT handshake with nothing on it goes too, before
        // its handshake makes it the dialer's connection.
        if let Some(early) = state.early.take() {
            early.close(IDLE_CLOSE, b"idle");
        }
        match state.conn.take() {
            Some(conn) if conn.close_reason().is_none() => {
                conn.close(IDLE_CLOSE, b"idle");
                true
            }
            _ => false,
        }
    }

    /// Closes the connection each time it has gone unused for `after`: no stream pair
    /// alive, none opened, and `busy` false at every look in between (looks every
    /// `idle::idle_check_every(after)`). Runs until dropped.
    pub async fn close_when_idle(&self, after: Duration, busy: impl Fn() -> bool) -> Infallible {
        let mut clock = IdleClock::new(after, Instant::now());
        let mut looks = tokio::time::interval(idle_check_every(after));
        looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut opened = self.streams_opened();
        loop {
            looks.tick().await;
            let now_opened = self.streams_opened();
            let in_use = busy() || self.streams_live() > 0 || now_opened != opened;
            opened = now_opened;
            if clock.observe(in_use, Instant::now()) && self.close_idle(now_opened).await {
                debug!(peer = %self.peer().fmt_short(), "closed the connection after {after:?} without use");
            }
        }
    }

    /// A reading of the open connection to the peer: what it has sent so far (two readings
    /// tell whether it was heard from in between, [`Heard::is_news_since`]) and the round-trip
    /// time. A far peer acknowledges a request within its round trip; one that is stuck or
    /// gone sends nothing, whatever the estimate says (late acknowledgements from a peer
    /// that was held up even make it grow). `None` while no connection is open.
    pub fn heard(&self) -> Option<Heard> {
        let conn = self.shared.latest().clone();
        // noq's stats are read with the lock released.
        conn.as_ref()
            .and_then(WeakConnectionHandle::upgrade)
            .filter(|conn| conn.close_reason().is_none())
            .map(|conn| Heard {
                conn: conn.stable_id(),
                datagrams: conn.stats().udp_rx.datagrams,
                rtt: selected_rtt(&conn),
            })
    }

    /// Closes the current connection, if any.
    pub async fn close(&self) {
        let (conn, early) = {
            let mut state = self.shared.state.lock().await;
            (state.conn.take(), state.early.take())
        };
        if let Some(conn) = conn {
            conn.close(SHUTTING_DOWN, b"bye");
        }
        if let Some(conn) = early {
            conn.close(SHUTTING_DOWN, b"bye");
        }
    }
}

/// The round-trip time of `conn`'s selected path.
fn selected_rtt(conn: &Connection) -> Option<Duration> {
    conn.paths()
        .iter()
        .find(|p| p.is_selected())
        .map(|p| p.rtt())
}

/// How long to keep trying a daemon socket whose listen queue is full.
const DAEMON_BUSY_PATIENCE: Duration = Duration::from_secs(10);

/// Connects to the nix-daemon socket at `path`. A non-blocking connect to a unix socket
/// whose listen queue is full fails with `EAGAIN` where a blocking one (as Nix's own
/// clients use) would wait; nix-daemon listens with a short queue and forks per connection,
/// so a burst of connections hits that. Such a connect is retried, with growing pauses, for
/// up to `DAEMON_BUSY_PATIENCE`.
pub async fn connect_daemon(path: &std::path::Path) -> std::io::Result<UnixStream> {
    let deadline = tokio::time::Instant::now() + DAEMON_BUSY_PATIENCE;
    let mut pause = Duration::from_millis(2);
    loop {
        match UnixStream::connect(path).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// How long [`DaemonDialer::check_access`] waits for a refusal's close after a failed read.
const REFUSAL_GRACE: Duration = Duration::from_millis(500);

/// Whether a connection attempt failed because the peer never answered.
fn is_timeout(err: &ConnectError) -> bool {
    match err {
        ConnectError::Connection { source, .. } => matches!(source, ConnectionError::TimedOut),
        ConnectError::Connecting { source, .. } => matches!(
            source,
            ConnectingError::ConnectionError {
                source: ConnectionError::TimedOut,
                ..
            }
        ),
        _ => false,
    }
}

/// If the connection was closed because the peer refused us, what it said.
fn refusal_of(err: &ConnectionError) -> Option<String> {
    match err {
        ConnectionError::ApplicationClosed(ApplicationClose { error_code, reason })
            if *error_code == ACCESS_DENIED =>
        {
            Some(String::from_utf8_lossy(reason).into_owned())
        }
        _ => None,
    }
}

/// A short human description of why a connection closed.
pub fn describe_close(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ApplicationClosed(close) if close.error_code == ACCESS_DENIED => {
            format!("access refused: {}", String::from_utf8_lossy(&close.reason))
        }
        ConnectionError::ApplicationClosed(close) if close.error_code == SHUTTING_DOWN => {
            "the peer shut down".to_owned()
        }
        ConnectionError::ApplicationClosed(close) if close.error_code == IDLE_CLOSE => {
            "the peer closed it after an idle period".to_owned()
        }
        ConnectionError::LocallyClosed => "closed locally".to_owned(),
        ConnectionError::TimedOut => "the peer stopped answering (timed out)".to_owned(),
        other => other.to_string(),
    }
}

async fn log_when_closed(conn: Connection) {
    let peer = conn.remote_id();
    let reason = conn.closed().await;
    match refusal_of(&reason) {
        Some(refused) => error!("peer {peer} refused access: {refused}"),
        None if matches!(reason, ConnectionError::LocallyClosed) => {}
        None => info!(peer = %peer.fmt_short(), "connection closed: {}", describe_close(&reason)),
    }
}

/// Stops a [`serve_local_listener`]: first its accepting, then (if need be) its forwards.
///
/// Clones share the same state. [`Self::abort`] implies [`Self::stop`].
#[derive(Debug, Clone)]
pub struct ListenerShutdown {
    stop: CancellationToken,
    abort: CancellationToken,
    in_flight: Arc<AtomicUsize>,
}

impl Default for ListenerShutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl ListenerShutdown {
    /// A shutdown control that has fired nothing yet.
    pub fn new() -> Self {
        let abort = CancellationToken::new();
        Self {
            stop: abort.child_token(),
            abort,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Stop accepting connections; forwards in flight go on until they end on their own.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stop accepting and abort every forward in flight (each one resets its QUIC stream and
    /// closes its local connection without a half-close, so neither end sees a clean end).
    pub fn abort(&self) {
        self.abort.cancel();
    }

    /// How many local connections are being forwarded now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Counts one forward in flight while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts connections on `listener`, forwarding each over a new stream from `dialer`,
/// until `shutdown` is stopped or aborted; returns once no forward is left. A connection
/// whose stream cannot be opened is closed (Nix sees a closed connection) and the reason
/// logged.
///
/// Shutdown order:
/// 1. [`ListenerShutdown::stop`]: the accept loop ends and the listener is dropped. The
///    caller removes the socket file (before or right after), so no new connection arrives.
/// 2. Forwards in flight go on and end on their own (Nix closes its connection, or the peer
///    or the QUIC connection fails); this function returns when the last one has ended.
/// 3. [`ListenerShutdown::abort`], at any time: every forward still in flight is dropped,
///    which resets its QUIC streams and closes its local connection, and the function
///    returns. A bounded drain is `stop`, a timeout on this future, then `abort`.
///
/// The caller closes the dialer's connection after this returns, never before: that would
/// cut the forwards still draining.
pub async fn serve_local_listener(
    listener: UnixListener,
    dialer: Arc<DaemonDialer>,
    shutdown: ListenerShutdown,
) {
    let mut tasks = JoinSet::new();
    let mut backoff = AcceptBackoff::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((local, _)) => {
                    backoff.succeeded();
                    let dialer = dialer.clone();
                    let abort = shutdown.abort.child_token();
                    let counted = InFlight::new(&shutdown.in_flight);
                    tasks.spawn(async move {
                        let _counted = counted;
                        forward_local_connection(local, &dialer, &abort).await;
                    }.in_current_span());
                }
                Err(e) => {
                    // Out of descriptors, say: back off instead of spinning; log once per run.
                    let (pause, first) = backoff.failed();
                    if first {
                        warn!("accepting a local connection failed: {e}; retrying with growing pauses");
                    } else {
                        debug!("accepting a local connection failed again: {e}");
                    }
                    tokio::time::sleep(pause).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    if !tasks.is_empty() {
        debug!("stopped accepting; {} forwards in flight", tasks.len());
    }
    loop {
        tokio::select! {
            biased;
            _ = shutdown.abort.cancelled() => break,
            next = tasks.join_next() => if next.is_none() { break },
        }
    }
    // After an abort every task has seen its child token: each tells its client why, where
    // the protocol allows, and closes, within a bound; any still running after it is dropped.
    let told = async { while tasks.join_next().await.is_some() {} };
    tokio::time::timeout(ABORT_BOUND, told).await.ok();
    tasks.shutdown().await;
}

/// How long aborted forwards get to tell their clients and close: one write and
/// [`crate::forward::TELL_BOUND`] of taking what the client still sends.
const ABORT_BOUND: std::time::Duration =
    crate::forward::TELL_BOUND.saturating_add(crate::forward::RESET_GRACE.saturating_mul(2));

async fn forward_local_connection(
    mut local: UnixStream,
    dialer: &DaemonDialer,
    abort: &CancellationToken,
) {
    let before_forward = async {
        let mut streams = dialer.open_stream().await?;
        let relayed = crate::hello::relay(&mut local, &mut streams, &dialer.hello).await;
        Ok::<_, DialError>((streams, relayed))
    };
    let opened = tokio::select! {
        biased;
        _ = abort.cancelled() => {
            debug!("local connection aborted before its forward began");
            return;
        }
        opened = before_forward => opened,
    };
    let (streams, relayed) = match opened {
        Ok(opened) => opened,
        // The dialer reports an unreachable peer itself, once per outage and periodically.
        Err(
            e @ (DialError::Timeout { .. }
            | DialError::Connect { .. }
            | DialError::Unreachable { .. }),
        ) => {
            debug!("local connection closed: {e}");
            return;
        }
        Err(e) => {
            error!("{e}");
            return;
        }
    };
    let outcome = match relayed {
        Ok(relayed) => {
            let client = NixClient {
                owed: &relayed.owed,
                notice: relayed.version.map(FailureNotice::after_handshake),
                abort,
            };
            logged(
                "local connection",
                forward_nix_client(local, streams, client).await,
            )
        }
        Err(e) => {
            warn!("local connection aborted during the handshake: {e}");
            Err(e)
        }
    };
    if let Err(ForwardError::HelloMismatch) = outcome {
        dialer.hello.forget();
    }
}

/// Logs how a forward (`what`) ended and returns it.
fn logged(what: &str, result: Result<ForwardStats, ForwardError>) -> Result<(), ForwardError> {
    match result {
        Ok(stats) => {
            debug!(sent = stats.sent, received = stats.received, "{what} done");
            Ok(())
        }
        Err(e) => {
            warn!("{what} aborted: {e}");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use iroh::{SecretKey, protocol::Router};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{
        access::{AccessPolicy, Permission, ServerAuthority},
        endpoint::{EndpointOptions, INITIAL_RTT, bind_endpoint},
    };

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A stand-in daemon (unit test only; end-to-end tests use real nix-daemons) that
    /// answers each connection with the length of what it read (8 bytes LE) after the client half-closes, then the bytes reversed; counts
    /// connections.
    async fn spawn_echo_daemon(path: PathBuf) -> std::io::Result<Arc<AtomicUsize>> {
        let listener = UnixListener::bind(&path)?;
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    stream.read_to_end(&mut data).await.ok();
                    stream
                        .write_all(&(data.len() as u64).to_le_bytes())
                        .await
                        .ok();
                    data.reverse();
                    stream.write_all(&data).await.ok();
                    stream.shutdown().await.ok();
                });
            }
        });
        Ok(connections)
    }

    /// An offline loopback endpoint with the key seeded by `seed`, accepting nothing.
    async fn client_endpoint(seed: u8) -> Result<Endpoint, crate::endpoint::EndpointBindError> {
        bind_endpoint(
            SecretKey::from_bytes(&[seed; 32]),
            vec![],
            &EndpointOptions::loopback(),
        )
        .await
    }

    async fn server(
        dir: &std::path::Path,
        secret: &AccessSecret,
    ) -> Result<(Router, Arc<AtomicUsize>), Box<dyn std::error::Error>> {
        server_with(dir, secret, Limits::default()).await
    }

    async fn server_with(
        dir: &std::path::Path,
        secret: &AccessSecret,
        limits: Limits,
    ) -> Result<(Router, Arc<AtomicUsize>), Box<dyn std::error::Error>> {
        let daemon_path = dir.join("daemon.sock");
        let connections = spawn_echo_daemon(daemon_path.clone()).await?;
        Ok((service_on(daemon_path, secret, limits).await?, connections))
    }

    /// A node serving the daemon at `daemon_path` to holders of `secret`.
    async fn service_on(
        daemon_path: PathBuf,
        secret: &AccessSecret,
        limits: Limits,
    ) -> Result<Router, Box<dyn std::error::Error>> {
        let endpoint = bind_endpoint(
            SecretKey::from_bytes(&[1; 32]),
            vec![DAEMON_ALPN.to_vec()],
            &EndpointOptions::loopback(),
        )
        .await?;
        let policy = AccessPolicy::new(
            Arc::new(ServerAuthority::new(secret.clone())),
            Permission::Push,
        );
        let service = DaemonService::new(daemon_path, policy, endpoint.id()).with_limits(limits);
        Ok(Router::builder(endpoint)
            .accept(DAEMON_ALPN, service)
            .spawn())
    }

    #[tokio::test]
    async fn forwards_both_ways_with_half_close_and_no_loss() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = served(dir.path()).await?;
        let socket = s.socket.clone();

        // Several connections at once, one large, all over one QUIC connection.
        let mut tasks = JoinSet::new();
        for size in [0usize, 1, 70_000, 5 << 20] {
            let socket = socket.clone();
            tasks.spawn(async move {
                let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
                let mut stream = UnixStream::connect(&socket).await?;
                stream.write_all(&data).await?;
                stream.shutdown().await?; // half-close: the reply must still arrive in full
                let mut reply = Vec::new();
                stream.read_to_end(&mut reply).await?;
                if size == 0 {
                    // A connection that sends nothing is an access check to the server:
                    // answered with a clean end, no daemon connection (counted below).
                    assert!(
                        reply.is_empty(),
                        "an empty stream got {} bytes",
                        reply.len()
                    );
                    return Ok(());
                }
                let mut expected = (size as u64).to_le_bytes().to_vec();
                expected.extend(data.iter().rev());
                assert_eq!(reply.len(), expected.len());
                assert!(reply == expected, "reply differs for size {size}");
                Ok::<_, std::io::Error>(())
            });
        }
        while let Some(result) = tasks.join_next().await {
            result??;
        }
        assert_eq!(s.connections.load(Ordering::SeqCst), 3);
        s.shutdown.stop();
        s.finish().await
    }

    /// A client and a served local listener in `dir`, over a server answering as
    /// [`spawn_echo_daemon`] does.
    struct Served {
        router: Router,
        client: Endpoint,
        dialer: Arc<DaemonDialer>,
        socket: PathBuf,
        shutdown: ListenerShutdown,
        serving: tokio::task::JoinHandle<()>,
        /// Connections the stand-in daemon has had.
        connections: Arc<AtomicUsize>,
    }

    async fn served(dir: &std::path::Path) -> Result<Served, Box<dyn std::error::Error>> {
        let secret = AccessSecret::from_bytes([5; 32]);
        let (router, connections) = server(dir, &secret).await?;
        Served::through(dir, router, &secret, connections).await
    }

    impl Served {
        /// A local socket in `dir` whose connections go to `router` through a dialer.
        async fn through(
            dir: &std::path::Path,
            router: Router,
            secret: &AccessSecret,
            connections: Arc<AtomicUsize>,
        ) -> Result<Served, Box<dyn std::error::Error>> {
            let client = client_endpoint(2).await?;
            let dialer = Arc::new(DaemonDialer::new(
                client.clone(),
                router.endpoint().addr(),
                secret,
            ));
            let socket = dir.join("client.sock");
            let listener = UnixListener::bind(&socket)?;
            let shutdown = ListenerShutdown::new();
            let serving = tokio::spawn(serve_local_listener(
                listener,
                dialer.clone(),
                shutdown.clone(),
            ));
            Ok(Served {
                router,
                client,
                dialer,
                socket,
                shutdown,
                serving,
                connections,
            })
        }

        /// Checks that serving has ended (bounded) with nothing in flight; closes all.
        async fn finish(self) -> TestResult {
            tokio::time::timeout(Duration::from_secs(10), self.serving).await??;
            assert_eq!(self.shutdown.in_flight(), 0);
            self.dialer.close().await;
            self.client.close().await;
            self.router.shutdown().await?;
            Ok(())
        }
    }

    /// Waits (bounded) until `shutdown` counts `n` forwards in flight.
    async fn until_in_flight(shutdown: &ListenerShutdown, n: usize) -> TestResult {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while shutdown.in_flight() != n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        waited.map_err(|_| format!("{} forwards in flight, not {n}", shutdown.in_flight()).into())
    }

    #[tokio::test]
    async fn stop_refuses_new_connections_and_lets_one_in_flight_finish() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = served(dir.path()).await?;
        let data: Vec<u8> = (0..(3usize << 20)).map(|i| (i % 253) as u8).collect();
        let mut stream = UnixStream::connect(&s.socket).await?;
        stream.write_all(&data[..1 << 20]).await?;
        until_in_flight(&s.shutdown, 1).await?;

        s.shutdown.stop();
        // The accept loop ends and drops the listener: nothing answers there any more.
        let refused = tokio::time::timeout(Duration::from_secs(10), async {
            while UnixStream::connect(&s.socket).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(refused.is_ok(), "the stopped listener still accepts");
        assert!(
            !s.serving.is_finished(),
            "returned with a forward in flight"
        );

        // The connection in flight goes on to its end, reply complete.
        stream.write_all(&data[1 << 20..]).await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        let mut expected = (data.len() as u64).to_le_bytes().to_vec();
        expected.extend(data.iter().rev());
        assert!(reply == expected, "the drained reply differs");
        drop(stream);
        s.finish().await
    }

    #[tokio::test]
    async fn abort_cuts_forwards_in_flight() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = served(dir.path()).await?;
        let mut stream = UnixStream::connect(&s.socket).await?;
        stream.write_all(&[7u8; 100_000]).await?;
        until_in_flight(&s.shutdown, 1).await?;

        s.shutdown.stop();
        s.shutdown.abort();
        // Serving ends at once, with nothing left in flight.
        s.finish().await?;
        // The local end is closed without a reply: the echo daemon answers only after a
        // clean end of its input, which an aborted forward never gives it.
        let mut reply = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await?;
        assert!(
            read.is_err() || reply.is_empty(),
            "an aborted forward delivered {} bytes of reply",
            reply.len()
        );
        // And it takes no more input.
        let mut wrote = Ok(());
        for _ in 0..64 {
            wrote = stream.write_all(&[0u8; 65536]).await;
            if wrote.is_err() {
                break;
            }
        }
        assert!(
            wrote.is_err(),
            "the aborted local connection still takes writes"
        );
        Ok(())
    }

    #[tokio::test]
    async fn wrong_secret_never_reaches_the_daemon() -> TestResult {
        let dir = tempfile::tempdir()?;
        let secret = AccessSecret::from_bytes([5; 32]);
        let (router, connections) = server(dir.path(), &secret).await?;
        let client = client_endpoint(3).await?;
        let wrong = AccessSecret::from_bytes([6; 32]);
        let dialer = DaemonDialer::new(client.clone(), router.endpoint().addr(), &wrong);
        let conn = dialer.connection().await?;
        let mut streams = dialer.open_stream().await?;
        streams.send.write_all(b"hello daemon").await.ok();
        streams.send.finish().ok();
        // The refusal closes the connection: the stream ends in an error, never in data or
        // a clean (empty) finish.
        let read = streams.recv.read_to_end(1024).await;
        assert!(read.is_err(), "refused stream ended with {read:?}");
        assert_eq!(connections.load(Ordering::SeqCst), 0);
        // The whole connection was closed as a refusal.
        let reason = conn.closed().await;
        assert!(refusal_of(&reason).is_some(), "{reason}");
        client.close().await;
        router.shutdown().await?;
        Ok(())
    }

    /// The access check passes with the right secret and never opens a daemon connection;
    /// with a wrong one it says the server refused, and why.
    #[tokio::test]
    async fn access_check_passes_or_says_why_without_touching_the_daemon() -> TestResult {
        let dir = tempfile::tempdir()?;
        let secret = AccessSecret::from_bytes([5; 32]);
        let (router, connections) = server(dir.path(), &secret).await?;
        let client = client_endpoint(3).await?;
        let dialer = DaemonDialer::new(client.clone(), router.endpoint().addr(), &secret);
        dialer.check_access().await?;
        assert_eq!(
            connections.load(Ordering::SeqCst),
            0,
            "the check reached the daemon"
        );

        let wrong = AccessSecret::from_bytes([6; 32]);
        let dialer = DaemonDialer::new(client.clone(), router.endpoint().addr(), &wrong);
        let err = dialer.check_access().await.expect_err("wrong secret");
        assert!(
            matches!(&err, DialError::Refused { reason, .. } if reason == "wrong access secret"),
            "{err}"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 0);
        client.close().await;
        router.shutdown().await?;
        Ok(())
    }

    /// A daemon socket whose listen queue is full (nix-daemon's is short) makes a
    /// non-blocking connect fail with EAGAIN; the connect waits for room instead.
    #[tokio::test]
    async fn a_full_daemon_queue_is_waited_for_not_failed() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("busy.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        // SAFETY: listen(2) on a socket we own; a backlog of 0 keeps the queue at one.
        if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 0) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // Fill the queue with connections nobody accepts yet.
        let mut queued = Vec::new();
        let full = loop {
            match UnixStream::connect(&path).await {
                Ok(stream) => queued.push(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(e) => return Err(e.into()),
            }
            if queued.len() > 64 {
                break false;
            }
        };
        assert!(full, "the listen queue never filled up");
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started_draining = draining.clone();
        let accepting = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            started_draining.store(true, Ordering::SeqCst);
            let mut accepted = Vec::new();
            while accepted.len() < 66 {
                match tokio::time::timeout(Duration::from_secs(2), listener.accept()).await {
                    Ok(Ok((stream, _))) => accepted.push(stream),
                    _ => break,
                }
            }
            accepted.len()
        });
        connect_daemon(&path).await?;
        assert!(
            draining.load(Ordering::SeqCst),
            "the connect returned before anyone made room in the queue"
        );
        drop(queued);
        accepting.await?;
        Ok(())
    }

    /// A connection that proves nothing (here: opens no stream at all) is closed as a
    /// refusal at the proof deadline.
    #[tokio::test]
    async fn a_connection_without_a_proof_is_closed_at_the_deadline() -> TestResult {
        let dir = tempfile::tempdir()?;
        let secret = AccessSecret::from_bytes([5; 32]);
        let limits = Limits {
            proof_deadline: Duration::from_millis(300),
            ..Limits::default()
        };
        let (router, connections) = server_with(dir.path(), &secret, limits).await?;
        let client = client_endpoint(6).await?;
        let conn = client
            .connect(router.endpoint().addr(), DAEMON_ALPN)
            .await?;
        let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await?;
        assert_eq!(
            refusal_of(&reason).as_deref(),
            Some("no access proof in time"),
            "{reason}"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 0);
        client.close().await;
        router.shutdown().await?;
        Ok(())
    }

    /// Before any proof, a connection may have only `max_unproven_streams` streams waiting:
    /// further ones are reset at once while the first wait for their proofs.
    #[tokio::test]
    async fn an_unproven_connection_holds_only_a_few_streams() -> TestResult {
        let dir = tempfile::tempdir()?;
        let secret = AccessSecret::from_bytes([5; 32]);
        // A deadline far off: only the cap may end the third stream early.
        let limits = Limits {
            max_unproven_streams: 2,
            proof_deadline: Duration::from_secs(30),
            ..Limits::default()
        };
        let (router, connections) = server_with(dir.path(), &secret, limits).await?;
        let client = client_endpoint(7).await?;
        let conn = client
            .connect(router.endpoint().addr(), DAEMON_ALPN)
            .await?;
        let mut open = Vec::new();
        for _ in 0..3 {
            let (mut send, recv) = conn.open_bi().await?;
            // One byte of a proof: the stream is seen, and waits for the rest.
            send.write_all(&[0]).await?;
            open.push((send, recv));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, mut third) = open.pop().ok_or("three streams")?;
        let read = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(64)).await?;
        assert!(
            read.is_err(),
            "the third unproven stream was not reset: {read:?}"
        );
        for (_, recv) in &mut open {
            let waiting =
                tokio::time::timeout(Duration::from_millis(300), recv.read_to_end(64)).await;
            assert!(waiting.is_err(), "an admitted stream ended: {waiting:?}");
        }
        assert!(conn.close_reason().is_none(), "the connection was closed");
        assert_eq!(connections.load(Ordering::SeqCst), 0);
        client.close().await;
        router.shutdown().await?;
        Ok(())
    }

    /// A peer that proved access holds at most `max_per_peer` daemon connections at once:
    /// the next stream is reset without reaching the daemon, and once one ends there is room.
    #[tokio::test]
    async fn a_peer_holds_at_most_its_share_of_daemon_connections() -> TestResult {
        let dir = tempfile::tempdir()?;
        let secret = AccessSecret::from_bytes([5; 32]);
        let limits = Limits {
            max_per_peer: 2,
            ..Limits::default()
        };
        let (router, connections) = server_with(dir.path(), &secret, limits).await?;
        let client = client_endpoint(8).await?;
        let dialer = DaemonDialer::new(client.clone(), router.endpoint().addr(), &secret);
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut pair = dialer.open_stream().await?;
            pair.send.write_all(b"held open").await?;
            held.push(pair);
        }
        let until_two = tokio::time::timeout(Duration::from_secs(10), async {
            while connections.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        until_two.await?;
        let mut extra = dialer.open_stream().await?;
        extra.send.write_all(b"one too many").await?;
        extra.send.finish()?;
        let read = tokio::time::timeout(Duration::from_secs(5), extra.recv.read_to_end(64)).await?;
        assert!(
            read.is_err(),
            "the stream over the cap was served: {read:?}"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 2);

        let mut first = held.remove(0);
        first.send.finish()?;
        let reply = first.recv.read_to_end(1024).await?;
        assert_eq!(reply.len(), 8 + b"held open".len());
        first.completed();
        let mut again = dialer.open_stream().await?;
        again.send.write_all(b"room again").await?;
        again.send.finish()?;
        let reply = again.recv.read_to_end(1024).await?;
        assert_eq!(reply.len(), 8 + b"room again".len());
        again.completed();
        assert_eq!(connections.load(Ordering::SeqCst), 3);
        drop(extra);
        drop(held);
        dialer.close().await;
        client.close().await;
        router.shutdown().await?;
        Ok(())
    }

    /// The idle close keeps a connection a stream has used since the idle look, even one
    /// that has ended by then, and closes one nothing has used since.
    #[tokio::test]
    async fn an_idle_close_spares_a_stream_opened_after_the_look() -> TestResult {
        let dir = tempfile::tempdir()?;
        let secret = AccessSecret::from_bytes([5; 32]);
        let (router, _connections) = server_with(dir.path(), &secret, Limits::default()).await?;
        let client = client_endpoint(9).await?;
        let dialer = DaemonDialer::new(client.clone(), router.endpoint().addr(), &secret);
        let looked = dialer.streams_opened();
        let mut pair = dialer.open_stream().await?;
        pair.send.write_all(b"after the look").await?;
        pair.send.finish()?;
        let reply = pair.recv.read_to_end(1024).await?;
        assert_eq!(reply.len(), 8 + b"after the look".len());
        pair.completed();
        assert_eq!(dialer.streams_live(), 0);
        assert!(
            !dialer.close_idle(looked).await,
            "closed a connection a stream used after the look"
        );
        assert!(
            dialer.close_idle(dialer.streams_opened()).await,
            "an unused connection was not closed"
        );
        client.close().await;
        router.shutdown().await?;
        Ok(())
    }

    /// The idle close spares a connection while a stream pair it opened is alive, however
    /// long ago it was opened.
    #[tokio::test]
    async fn an_idle_close_waits_for_every_open_stream_pair() -> TestResult {
        let dir = tempfile::tempdir()?;
        let secret = AccessSecret::from_bytes([7; 32]);
        let (router, _connections) = server_with(dir.path(), &secret, Limits::default()).await?;
        let client = client_endpoint(11).await?;
        let dialer = DaemonDialer::new(client.clone(), router.endpoint().addr(), &secret);
        let first = dialer.open_stream().await?;
        let second = dialer.open_stream().await?;
        let looked = dialer.streams_opened();
        assert_eq!(dialer.streams_live(), 2);
        drop(first);
        assert_eq!(dialer.streams_live(), 1);
        assert!(
            !dialer.close_idle(looked).await,
            "closed a connection under a stream pair still alive"
        );
        drop(second);
        assert_eq!(dialer.streams_live(), 0);
        assert!(
            dialer.close_idle(looked).await,
            "a connection with no stream pair left was not closed"
        );
        client.close().await;
        router.shutdown().await?;
        Ok(())
    }

    /// A stream counts as live from the start of `open_stream`, while it still waits for a
    /// connection, so an idle close cannot take the connection it is about to get.
    #[tokio::test]
    async fn a_stream_is_live_while_it_waits_for_its_connection() -> TestResult {
        // A peer address that swallows every datagram: the connect waits out its timeout.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let client = client_endpoint(13).await?;
        let target = EndpointAddr::new(SecretKey::from_bytes(&[10; 32]).public())
            .with_ip_addr(silent.local_addr()?);
        let dialer = Arc::new(
            DaemonDialer::new(client.clone(), target, &AccessSecret::from_bytes([0; 32]))
                .with_connect_timeout(Duration::from_secs(2)),
        );
        let opening = tokio::spawn({
            let dialer = dialer.clone();
            async move { dialer.open_stream().await.map(|_| ()) }
        });
        let waited = Instant::now();
        while dialer.streams_live() == 0 && waited.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            dialer.streams_live(),
            1,
            "the connecting stream was not live"
        );
        assert!(!opening.is_finished(), "the connect did not wait");
        opening.await?.expect_err("a silent peer");
        assert_eq!(dialer.streams_live(), 0, "a failed stream stayed live");
        client.close().await;
        Ok(())
    }

    /// `close_when_idle` closes the connection once it has gone unused for the period after
    /// its last stream pair ended, not while one is alive, and the next stream connects
    /// again.
    #[tokio::test]
    async fn close_when_idle_closes_after_the_period_without_a_stream() -> TestResult {
        const AFTER: Duration = Duration::from_millis(300);
        let dir = tempfile::tempdir()?;
        let secret = AccessSecret::from_bytes([8; 32]);
        let (router, _connections) = server_with(dir.path(), &secret, Limits::default()).await?;
        let client = client_endpoint(12).await?;
        let dialer = Arc::new(DaemonDialer::new(
            client.clone(),
            router.endpoint().addr(),
            &secret,
        ));
        let watcher = tokio::spawn({
            let dialer = dialer.clone();
            async move { match dialer.close_when_idle(AFTER, || false).await {} }
        });
        let pair = dialer.open_stream().await?;
        let conn = dialer.connection().await?;
        tokio::time::sleep(AFTER * 3).await;
        assert!(
            conn.close_reason().is_none(),
            "closed under a stream pair still alive"
        );
        drop(pair);
        let ended = Instant::now();
        let reason = tokio::time::timeout(AFTER * 5, conn.closed()).await?;
        let after = ended.elapsed();
        assert!(
            matches!(&reason, ConnectionError::LocallyClosed),
            "closed by {reason:?}"
        );
        // The last look that saw the pair may be a tenth of the period before its end.
        assert!(
            after >= AFTER - AFTER / 5,
            "closed {after:?} after the last stream, within the idle period of {AFTER:?}"
        );
        let again = dialer.connection().await?;
        assert!(again.close_reason().is_none(), "the next connection");
        watcher.abort();
        client.close().await;
        router.shutdown().await?;
        Ok(())
    }

    /// A reading is of the open connection: none before the first one or after a close;
    /// a measured round-trip time while it is open; news once the peer sent something, or
    /// when the connection is a new one.
    #[tokio::test]
    async fn what_was_heard_is_read_from_the_open_connection() -> TestResult {
        let dir = tempfile::tempdir()?;
        let secret = AccessSecret::from_bytes([6; 32]);
        let (router, _connections) = server_with(dir.path(), &secret, Limits::default()).await?;
        let client = client_endpoint(10).await?;
        let dialer = DaemonDialer::new(client.clone(), router.endpoint().addr(), &secret)
            .with_connect_timeout(Duration::from_millis(500));
        assert!(dialer.heard().is_none(), "a reading before any connection");
        dialer.connection().await?;
        let first = dialer.heard().ok_or("no reading of an open connection")?;
        assert!(first.is_news_since(None), "a new connection is news");
        let rtt = first
            .rtt()
            .ok_or("no round-trip time on an open connection")?;
        // Loopback: measured, so far below the 100 ms assumed before a measurement.
        assert!(rtt < INITIAL_RTT, "round-trip time {rtt:?} on loopback");
        let again = dialer.heard().ok_or("no second reading")?;
        assert!(!again.is_news_since(Some(&first)), "news with nothing sent");
        // A stream the peer answers (its refusal of the daemon connection is enough).
        let (mut send, mut recv) = dialer.connection().await?.open_bi().await?;
        send.write_all(b"x").await?;
        send.finish()?;
        let _ = recv.read_to_end(1024).await;
        let answered = dialer.heard().ok_or("no reading after an answer")?;
        assert!(answered.is_news_since(Some(&again)), "an answer is no news");

        assert!(dialer.close_idle(dialer.streams_opened()).await);
        assert!(dialer.heard().is_none(), "a reading after an idle close");
        dialer.connection().await?;
        let other = dialer.heard().ok_or("no reading of the new connection")?;
        assert!(
            other.is_news_since(Some(&answered)),
            "a new connection is no news"
        );
        dialer.close().await;
        assert!(dialer.heard().is_none(), "a reading after a close");
        router.shutdown().await?;
        client.close().await;
        Ok(())
    }

    /// A stand-in daemon with Nix 2.8's handshake (the bytes `n2p_nix`'s recorded 2.8
    /// exchange has): magic, then version and options, answered with `version` (read per
    /// connection) and `STDERR_LAST`; then each 8-byte request is answered with
    /// `STDERR_LAST` and the request. It answers nothing while `open` is false.
    async fn spawn_handshaking_daemon(
        path: PathBuf,
        version: Arc<std::sync::Mutex<String>>,
        open: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let listener = UnixListener::bind(&path)?;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let version = version.lock().map(|v| v.clone()).unwrap_or_default();
                let mut open = open.clone();
                tokio::spawn(async move {
                    let mut word = [0u8; 8];
                    let mut options = [0u8; 24];
                    stream.read_exact(&mut word).await?;
                    open.wait_for(|open| *open).await.ok();
                    stream.write_all(&hello_words(&[DXIO, 0x122])).await?;
                    stream.read_exact(&mut options).await?;
                    let mut answer = hello_words(&[version.len() as u64]);
                    answer.extend_from_slice(version.as_bytes());
                    answer.resize(8 + version.len().div_ceil(8) * 8, 0);
                    answer.extend_from_slice(&hello_words(&[STLA]));
                    stream.write_all(&answer).await?;
                    while stream.read_exact(&mut word).await.is_ok() {
                        open.wait_for(|open| *open).await.ok();
                        stream.write_all(&hello_words(&[STLA])).await?;
                        stream.write_all(&word).await?;
                    }
                    Ok::<(), std::io::Error>(())
                });
            }
        });
        Ok(())
    }

    const NIXC: u64 = 0x6e69_7863;
    const DXIO: u64 = 0x6478_696f;
    const STLA: u64 = 0x616c_7473;

    fn hello_words(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Nix 2.8's side of the handshake on `socket`; returns the connection and the daemon's
    /// Nix version. Bounded.
    async fn nix_2_8_handshake(
        socket: &std::path::Path,
    ) -> Result<(UnixStream, String), Box<dyn std::error::Error>> {
        let mut stream = UnixStream::connect(socket).await?;
        let exchange = async {
            stream.write_all(&hello_words(&[NIXC])).await?;
            let mut answer = [0u8; 16];
            stream.read_exact(&mut answer).await?;
            assert_eq!(answer.as_slice(), hello_words(&[DXIO, 0x122]));
            stream.write_all(&hello_words(&[0x122, 0, 0])).await?;
            let mut len = [0u8; 8];
            stream.read_exact(&mut len).await?;
            let len = u64::from_le_bytes(len) as usize;
            let mut text = vec![0u8; len.div_ceil(8) * 8 + 8];
            stream.read_exact(&mut text).await?;
            assert_eq!(text[text.len() - 8..], STLA.to_le_bytes());
            text.truncate(len);
            Ok::<_, Box<dyn std::error::Error>>(String::from_utf8(text)?)
        };
        let version = tokio::time::timeout(Duration::from_secs(5), exchange).await??;
        Ok((stream, version))
    }

    /// Sends request `n` and reads its answer (bounded).
    async fn request(stream: &mut UnixStream, n: u64) -> Result<(), Box<dyn std::error::Error>> {
        stream.write_all(&hello_words(&[n])).await?;
        let mut answer = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer)).await??;
        assert_eq!(answer.as_slice(), hello_words(&[STLA, n]));
        Ok(())
    }

    /// The first connection records the daemon's handshake; the next is answered without
    /// the daemon saying a word (it is held silent until the client's handshake is done);
    /// once the daemon answers otherwise, that one connection is cut (its client told so as
    /// a daemon error) and the recording dropped, and the next learns the new answer.
    #[tokio::test]
    async fn a_recorded_handshake_is_answered_at_once_and_checked() -> TestResult {
        let dir = tempfile::tempdir()?;
        let secret = AccessSecret::from_bytes([5; 32]);
        let daemon_path = dir.path().join("daemon.sock");
        let version = Arc::new(std::sync::Mutex::new("2.8.0".to_owned()));
        let (open, gate) = tokio::sync::watch::channel(true);
        spawn_handshaking_daemon(daemon_path.clone(), version.clone(), gate).await?;
        let router = service_on(daemon_path, &secret, Limits::default()).await?;
        let s = Served::through(dir.path(), router, &secret, Arc::default()).await?;

        let (mut first, said) = nix_2_8_handshake(&s.socket).await?;
        assert_eq!(said, "2.8.0");
        request(&mut first, 7).await?;
        assert!(s.dialer.hello().is_recorded());

        open.send(false)?;
        let (mut second, said) = nix_2_8_handshake(&s.socket).await?;
        assert_eq!(said, "2.8.0", "answered while the daemon was silent");
        open.send(true)?;
        request(&mut second, 8).await?;

        *version.lock().map_err(|_| "poisoned")? = "2.8.1".to_owned();
        // Silent until the client has sent its first request, so that the mismatch comes
        // while it waits for that request's end.
        open.send(false)?;
        let (mut third, said) = nix_2_8_handshake(&s.socket).await?;
        assert_eq!(said, "2.8.0", "the recording answered");
        third.write_all(&hello_words(&[9])).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        open.send(true)?;
        let mut rest = Vec::new();
        let end =
            tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut rest)).await?;
        // Nothing of the daemon's: only n2p's error for the operation it waits on.
        let told = n2p_nix::worker::notice::error_message(
            0x122,
            &format!(
                "n2p: {}; the operation did not complete",
                ForwardError::HelloMismatch
            ),
        );
        assert!(
            end.is_ok() && rest == told,
            "a connection whose recorded answer was wrong got {rest:?} ({end:?})"
        );
        assert!(
            !s.dialer.hello().is_recorded(),
            "the wrong recording was kept"
        );

        let (mut fourth, said) = nix_2_8_handshake(&s.socket).await?;
        assert_eq!(said, "2.8.1");
        request(&mut fourth, 10).await?;
        assert!(s.dialer.hello().is_recorded());
        drop((first, second, third, fourth));
        s.shutdown.stop();
        s.finish().await
    }

    #[tokio::test]
    async fn unreachable_peer_times_out() -> TestResult {
        let client = client_endpoint(4).await?;
        // Nothing listens on this port: the attempt must end within the bound.
        let nobody = EndpointAddr::new(SecretKey::from_bytes(&[9; 32]).public())
            .with_ip_addr("127.0.0.1:9".parse()?);
        let dialer = DaemonDialer::new(client.clone(), nobody, &AccessSecret::from_bytes([0; 32]))
            .with_connect_timeout(Duration::from_millis(500));
        let started = std::time::Instant::now();
        let err = dialer.connection().await.expect_err("unreachable");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(err, DialError::Timeout { .. } | DialError::Connect { .. }),
            "{err}"
        );
        client.close().await;
        Ok(())
    }

    /// After a failed attempt, a burst of streams to the same unreachable peer fails at
    /// once, saying for how long the peer has been unreachable and when the next attempt
    /// is, instead of each waiting for an attempt of its own; after [`RETRY_AFTER`] one
    /// new attempt is made.
    #[tokio::test]
    async fn an_unreachable_peer_fails_a_burst_at_once_then_retries() -> TestResult {
        let client = client_endpoint(5).await?;
        let nobody = EndpointAddr::new(SecretKey::from_bytes(&[9; 32]).public())
            .with_ip_addr("127.0.0.1:9".parse()?);
        let dialer = Arc::new(
            DaemonDialer::new(client.clone(), nobody, &AccessSecret::from_bytes([0; 32]))
                .with_connect_timeout(Duration::from_millis(300)),
        );
        let first = dialer.open_stream().await.expect_err("unreachable");
        assert!(
            matches!(first, DialError::Timeout { .. } | DialError::Connect { .. }),
            "{first}"
        );
        let mut burst = JoinSet::new();
        for _ in 0..10 {
            let dialer = dialer.clone();
            burst.spawn(async move { dialer.open_stream().await.map(|_| ()) });
        }
        while let Some(result) = burst.join_next().await {
            let err = result?.expect_err("unreachable");
            assert!(
                matches!(&err, DialError::Unreachable { retry_in, .. } if *retry_in <= RETRY_AFTER),
                "{err}"
            );
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "peer {} unreachable for 0 s (last attempt: ",
                    dialer.peer()
                )) && text.contains("; next attempt in "),
                "{text}"
            );
        }
        assert_eq!(
            dialer
                .shared
                .state
                .lock()
                .await
                .outage
                .as_ref()
                .map(|o| o.failed_streams),
            Some(11)
        );
        tokio::time::sleep(RETRY_AFTER).await;
        let again = dialer.open_stream().await.expect_err("still unreachable");
        assert!(
            matches!(again, DialError::Timeout { .. } | DialError::Connect { .. }),
            "after RETRY_AFTER a new attempt is made: {again}"
        );
        client.close().await;
        Ok(())
    }
}

/// What 0-RTT does between two iroh endpoints, as n2p's store protocol relies on it
/// (docs/PROTOCOL.md, `n2p/store/1`).
#[cfg(test)]
mod zero_rtt {
    use super::*;
    use crate::endpoint::{EndpointOptions, bind_endpoint};
    use iroh::SecretKey;

    /// Sends a few bytes on a new stream and reads the echo: whether it came back.
    async fn echoed(conn: &Connection<impl ConnectionState>) -> bool {
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            return false;
        };
        if send.write_all(b"hi").await.is_err() || send.finish().is_err() {
            return false;
        }
        recv.read_to_end(16).await.is_ok_and(|echo| echo == b"hi")
    }

    /// A first connection has no session to resume; the next ones of the same protocol
    /// send their stream with 0-RTT and it is accepted; one of another protocol, holding
    /// only a ticket from those, has its 0-RTT data refused (iroh keeps one ticket store
    /// per peer, not per protocol).
    #[tokio::test]
    async fn only_a_ticket_of_the_same_protocol_carries_0rtt_data()
    -> Result<(), Box<dyn std::error::Error>> {
        let server = bind_endpoint(
            SecretKey::from_bytes(&[3; 32]),
            vec![b"x".to_vec(), b"y".to_vec()],
            &EndpointOptions::loopback(),
        )
        .await?;
        let client = bind_endpoint(
            SecretKey::from_bytes(&[4; 32]),
            vec![],
            &EndpointOptions::loopback(),
        )
        .await?;
        let accepting = server.clone();
        let echo = tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let Ok(accepting) = incoming.accept() else {
                    continue;
                };
                tokio::spawn(async move {
                    let conn = accepting.into_0rtt();
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let data = recv.read_to_end(16).await.unwrap_or_default();
                        let _ = send.write_all(&data).await;
                        let _ = send.finish();
                    }
                });
            }
        });
        // Whether 0-RTT was tried, and whether its data was accepted.
        let attempt = |alpn: &'static [u8]| {
            let (client, addr) = (client.clone(), server.addr());
            async move {
                let connecting = client
                    .connect_with_opts(addr, alpn, Default::default())
                    .await?;
                let outcome = match connecting.into_0rtt() {
                    Ok(early) => {
                        let sent = echoed(&early).await;
                        let status = early.handshake_completed().await?;
                        let accepted = matches!(status, ZeroRttStatus::Accepted(_));
                        let (ZeroRttStatus::Accepted(conn) | ZeroRttStatus::Rejected(conn)) =
                            status;
                        assert_eq!(
                            sent, accepted,
                            "an early stream's fate and the 0-RTT status differ"
                        );
                        // The connection lives until its tickets are in.
                        assert!(echoed(&conn).await, "no echo after the handshake");
                        Some(accepted)
                    }
                    Err(connecting) => {
                        let conn = connecting.await?;
                        assert!(echoed(&conn).await, "no echo");
                        None
                    }
                };
                Ok::<_, Box<dyn std::error::Error>>(outcome)
            }
        };
        assert_eq!(
            attempt(b"x").await?,
            None,
            "0-RTT without a session to resume"
        );
        for _ in 0..2 {
            assert_eq!(
                attempt(b"x").await?,
                Some(true),
                "0-RTT refused on the same protocol"
            );
        }
        assert_eq!(
            attempt(b"y").await?,
            Some(false),
            "0-RTT data accepted on another protocol's ticket"
        );
        echo.abort();
        client.close().await;
        server.close().await;
        Ok(())
    }
}
