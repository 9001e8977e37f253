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
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use iroh::{
    Endpoint, EndpointAddr, EndpointId,
    endpoint::{
        ApplicationClose, ConnectError, ConnectingError, Connection, ConnectionError, VarInt,
    },
    protocol::{AcceptError, ProtocolHandler},
};
use tokio::{
    io::AsyncWriteExt,
    net::{UnixListener, UnixStream},
    sync::Mutex,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    access::{AccessPolicy, AccessProof, AccessSecret},
    forward::{QuicPair, forward},
};

/// ALPN of the raw daemon protocol.
pub const DAEMON_ALPN: &[u8] = b"n2p/daemon/1";

/// Application close code: the peer is not allowed to use this daemon.
pub const ACCESS_DENIED: VarInt = VarInt::from_u32(403);

/// Close code used when a node shuts down.
pub const SHUTTING_DOWN: VarInt = VarInt::from_u32(0);

/// How long a peer has to send its proof after opening a stream.
const PROOF_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes read from a daemon stream before the daemon connection is made (Nix's first
/// message, its 8-byte magic and version, fits many times).
const FIRST_READ: usize = 4096;

/// Default bound on establishing a connection to a peer.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the local nix-daemon to peers that pass the access policy.
#[derive(Debug, Clone)]
pub struct DaemonService {
    daemon_socket: Arc<PathBuf>,
    policy: Arc<dyn AccessPolicy>,
    me: EndpointId,
}

impl DaemonService {
    /// Forwards accepted streams to the daemon at `daemon_socket`; `me` is this node's id.
    pub fn new(daemon_socket: PathBuf, policy: Arc<dyn AccessPolicy>, me: EndpointId) -> Self {
        Self {
            daemon_socket: Arc::new(daemon_socket),
            policy,
            me,
        }
    }

    /// Checks the stream's proof, then joins it to a fresh daemon connection. Every early
    /// return drops `streams`, which resets them.
    async fn handle_stream(&self, conn: &Connection, mut streams: QuicPair) {
        let peer = conn.remote_id();
        let mut proof = [0u8; AccessProof::LEN];
        match tokio::time::timeout(PROOF_TIMEOUT, streams.recv.read_exact(&mut proof)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!("stream ended before its access proof: {e}");
                return;
            }
            Err(_) => {
                warn!(peer = %peer, "refused peer {peer}: no access proof within {PROOF_TIMEOUT:?}");
                conn.close(ACCESS_DENIED, b"no access proof");
                return;
            }
        }
        if let Err(refusal) = self.policy.check_stream(peer, self.me, &AccessProof(proof)) {
            warn!(peer = %peer, "refused peer {peer}: {refusal}");
            conn.close(ACCESS_DENIED, refusal.to_string().as_bytes());
            return;
        }
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
        forward_unix_stream("daemon stream", daemon, streams).await;
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
            // The stream tasks borrow nothing from the accept loop, so a set owned here and
            // drained on exit bounds their lifetime to the connection's.
            let mut streams = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = conn.accept_bi() => match accepted {
                        Ok((send, recv)) => {
                            let conn = conn.clone();
                            let service = self.clone();
                            streams.spawn(async move {
                                service.handle_stream(&conn, QuicPair::new(send, recv)).await
                            }.in_current_span());
                        }
                        Err(e) => {
                            debug!("peer connection ended: {}", describe_close(&e));
                            break;
                        }
                    },
                    Some(_) = streams.join_next(), if !streams.is_empty() => {}
                }
            }
            while streams.join_next().await.is_some() {}
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
    /// The connection dropped while opening the stream.
    #[error("connection to peer {peer} lost: {reason}")]
    Lost {
        /// The peer.
        peer: EndpointId,
        /// What happened.
        reason: String,
    },
}

/// Opens daemon streams to one peer over one shared, lazily (re)established connection
/// (or, with [`DaemonDialer::with_alpn`], streams of another proof-first protocol).
#[derive(Debug)]
pub struct DaemonDialer {
    endpoint: Endpoint,
    target: EndpointAddr,
    alpn: &'static [u8],
    proof: AccessProof,
    connect_timeout: Duration,
    conn: Mutex<Option<Connection>>,
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
            conn: Mutex::new(None),
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

    /// The peer's id.
    pub fn peer(&self) -> EndpointId {
        self.target.id
    }

    /// The live connection, connecting first if there is none or it has closed.
    pub async fn connection(&self) -> Result<Connection, DialError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            match conn.close_reason() {
                None => return Ok(conn.clone()),
                Some(reason) => debug!("reconnecting: {}", describe_close(&reason)),
            }
        }
        let peer = self.target.id;
        let started = std::time::Instant::now();
        let conn = tokio::time::timeout(
            self.connect_timeout,
            self.endpoint.connect(self.target.clone(), self.alpn),
        )
        .await
        .map_err(|_| DialError::Timeout {
            peer,
            after: started.elapsed(),
        })?
        .map_err(|source| {
            // QUIC gives up on a silent peer after its idle timeout, before ours: say so
            // with the time really waited, not as iroh's chain of "timed out".
            if is_timeout(&source) {
                DialError::Timeout {
                    peer,
                    after: started.elapsed(),
                }
            } else {
                DialError::Connect { peer, source }
            }
        })?;
        info!(peer = %peer.fmt_short(), "connected to {}", peer);
        tokio::spawn(log_when_closed(conn.clone()));
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Opens one daemon stream, proof already sent. Retries once on a fresh connection when
    /// the cached one turns out to be dead.
    pub async fn open_stream(&self) -> Result<QuicPair, DialError> {
        let peer = self.target.id;
        let mut last = None;
        for _attempt in 0..2 {
            let conn = self.connection().await?;
            match self.open_on(&conn).await {
                Ok(pair) => return Ok(pair),
                Err(reason) => {
                    if let Some(refused) = conn.close_reason().as_ref().and_then(refusal_of) {
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

    async fn open_on(&self, conn: &Connection) -> Result<QuicPair, String> {
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

    /// Closes the current connection, if any.
    pub async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            conn.close(SHUTTING_DOWN, b"bye");
        }
    }
}

/// How long to keep trying a daemon socket whose listen queue is full.
const DAEMON_BUSY_PATIENCE: Duration = Duration::from_secs(10);

/// Connects to the nix-daemon socket at `path`. A non-blocking connect to a unix socket
/// whose listen queue is full fails with `EAGAIN` where a blocking one (as Nix's own
/// clients use) would wait; nix-daemon listens with a short queue and forks per connection,
/// so a burst of connections hits that. Such a connect is retried, with growing pauses, for
/// up to [`DAEMON_BUSY_PATIENCE`].
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
    loop {
        tokio::select! {
            biased;
            _ = shutdown.stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((local, _)) => {
                    let dialer = dialer.clone();
                    let abort = shutdown.abort.child_token();
                    let counted = InFlight::new(&shutdown.in_flight);
                    tasks.spawn(async move {
                        let _counted = counted;
                        tokio::select! {
                            _ = abort.cancelled() => debug!("local connection aborted"),
                            _ = forward_local_connection(local, &dialer) => {}
                        }
                    }.in_current_span());
                }
                Err(e) => {
                    warn!("accepting a local connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
    // After an abort: every task has seen its child token; this also ends any that has not
    // been polled since.
    tasks.shutdown().await;
}

async fn forward_local_connection(local: UnixStream, dialer: &DaemonDialer) {
    let streams = match dialer.open_stream().await {
        Ok(pair) => pair,
        Err(e) => {
            error!("{e}");
            return;
        }
    };
    forward_unix_stream("local connection", local, streams).await;
}

/// Joins a unix stream to an iroh stream pair until both directions end; logs the outcome.
async fn forward_unix_stream(what: &str, stream: UnixStream, streams: QuicPair) {
    match forward(stream, streams).await {
        Ok(stats) => debug!(sent = stats.sent, received = stats.received, "{what} done"),
        Err(e) => warn!("{what} aborted: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use iroh::{SecretKey, protocol::Router};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{
        access::SecretPolicy,
        endpoint::{EndpointOptions, bind_endpoint},
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
        let daemon_path = dir.join("daemon.sock");
        let connections = spawn_echo_daemon(daemon_path.clone()).await?;
        let endpoint = bind_endpoint(
            SecretKey::from_bytes(&[1; 32]),
            vec![DAEMON_ALPN.to_vec()],
            &EndpointOptions::loopback(),
        )
        .await?;
        let policy = Arc::new(SecretPolicy::new(secret.clone()));
        let service = DaemonService::new(daemon_path, policy, endpoint.id());
        let router = Router::builder(endpoint)
            .accept(DAEMON_ALPN, service)
            .spawn();
        Ok((router, connections))
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
        let client = client_endpoint(2).await?;
        let dialer = Arc::new(DaemonDialer::new(
            client.clone(),
            router.endpoint().addr(),
            &secret,
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

    impl Served {
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
        let accepting = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut accepted = Vec::new();
            while accepted.len() < 66 {
                match tokio::time::timeout(Duration::from_secs(2), listener.accept()).await {
                    Ok(Ok((stream, _))) => accepted.push(stream),
                    _ => break,
                }
            }
            accepted.len()
        });
        let started = std::time::Instant::now();
        connect_daemon(&path).await?;
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "the connect should have waited for the queue to drain"
        );
        drop(queued);
        accepting.await?;
        Ok(())
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
}
