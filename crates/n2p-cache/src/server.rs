//! The serving side of [`crate::proto`]: answers narinfo and NAR requests from the node's
//! own store, through its nix-daemon, to peers its [`AccessPolicy`] lets in.
//!
//! Per stream: the access proof is read and checked before anything touches the store (a
//! refused peer gets its whole connection closed with [`ACCESS_DENIED`], as on daemon
//! streams); then one request is read and answered through the daemon (over a kept
//! connection when one is idle), so the daemon's own view (a chroot store in tests) is what
//! peers see. A narinfo hit is remembered for a few seconds (`ANSWER_TTL` of the private
//! `answers` module) and repeats of it within that time are answered from memory, since Nix
//! asks for each narinfo several times in one `nix copy`; misses are always looked up. A NAR
//! is never sent from memory: only for a path the daemon reports valid at that request, whose
//! NAR hash is the one asked for, under a temporary GC root, streamed straight from the
//! daemon into the QUIC stream; the stream is finished only when the NAR was whole and hashed
//! as expected, and reset otherwise.
//!
//! Bounds: before a connection has proved access, the pre-auth limits of
//! [`n2p_core::limits`] as on daemon connections ([`StoreLimits::pre_auth`]: a few streams
//! waiting for their proof, extra ones reset, and the connection closed when no proof came
//! within the deadline); after, [`StoreLimits::streams_per_connection`] requests in flight
//! per connection (the next stream is not accepted before one ends) and
//! [`StoreLimits::nars_per_peer`] NARs in flight per peer identity, across its connections.
//!
//! A peer that resumes an earlier session sends its first requests with 0-RTT, and they are
//! answered before the handshake completes ([`Resumed`]): a lookup after an idle close
//! costs one round trip instead of two. The requests of this protocol change nothing but
//! a temporary GC root that lives as long as its daemon connection, so a replayed first
//! flight changes nothing lasting (and its sender cannot read the answers).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use iroh::{
    EndpointId,
    endpoint::{Accepting, Connection, SendStream},
    protocol::{AcceptError, ProtocolHandler},
};
use n2p_core::{
    accept::{Resumed, Served, prove_stream, serve_streams},
    access::AccessPolicy,
    daemon::{ACCESS_DENIED, connect_daemon},
    forward::QuicPair,
    limits::{ConnectionGate, Limits, UnprovenPermit},
};
use n2p_nix::{
    DaemonClient, NarHash, NarInfo, SecretKey, Signature, StoreDir, StorePath, WorkerError,
    store_path::is_hash_part,
};
use tokio::{net::UnixStream, sync::Semaphore};
use tracing::{Instrument, debug, info_span, warn};

use crate::answers::{ANSWER_CAPACITY, ANSWER_TTL, Answers};
use crate::proto::{
    BAD_REQUEST, BUSY, MAX_HASH_PARTS, NAR_ABORTED, NarHeader, NarInfosReply, Request, WireInfo,
    read_frame, write_frame,
};

/// How long a peer has to send its request after its proof.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Daemon connections kept open between requests (each new one costs the daemon a fork and
/// a handshake, most of a small path's time). Enough for one puller's parallel downloads:
/// Nix runs up to 25 (`http-connections`), of which [`StoreLimits::nars_per_peer`] NARs;
/// with fewer, each burst of requests closed the extra connections and opened them again.
const IDLE_DAEMON_CONNECTIONS: usize = 32;

/// NARs one daemon connection serves (each leaving a temporary root) before it is closed.
/// A new connection costs the daemon ~5-10 ms of CPU (fork, store open), several small
/// paths' worth; the roots pin paths just served, and only until the connection is closed
/// (at the latest [`StoreLimits::idle_daemon_timeout`] after its last request), so at most
/// `IDLE_DAEMON_CONNECTIONS` × 64 paths stay pinned that long.
const TEMP_ROOTS_PER_CONNECTION: u32 = 64;

/// Bounds on what one peer may ask at once.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Requests handled at once on one connection.
    pub streams_per_connection: usize,
    /// NARs sent at once to one peer identity (over all its connections).
    pub nars_per_peer: usize,
    /// How long a NAR request waits for one of its peer's slots before its stream is reset
    /// with [`crate::proto::BUSY`] (default 25 s, inside the client's 30 s wait for a NAR's
    /// header, so the client learns why).
    pub nar_slot_wait: Duration,
    /// Streams waiting for their proof before one has passed, and the deadline for a proof
    /// (its `max_per_peer` is not used here: `nars_per_peer` bounds the expensive part).
    pub pre_auth: Limits,
    /// A kept daemon connection idle this long is closed, so its worker exits and the
    /// temporary roots it holds stop pinning the paths it served (default 30 s).
    pub idle_daemon_timeout: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            streams_per_connection: 64,
            nars_per_peer: 8,
            nar_slot_wait: Duration::from_secs(25),
            pre_auth: Limits::default(),
            idle_daemon_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves the local store, read-only, on [`crate::proto::STORE_ALPN`].
#[derive(Debug, Clone)]
pub struct StoreService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    daemon_socket: PathBuf,
    store_dir: StoreDir,
    policy: AccessPolicy,
    me: EndpointId,
    key: SecretKey,
    limits: StoreLimits,
    nar_slots: Mutex<HashMap<EndpointId, Arc<Semaphore>>>,
    /// Daemon connections whose last operation succeeded, for the next requests.
    idle: Mutex<Vec<Pooled>>,
    /// Recent signed narinfo hits, answered again without the daemon.
    answers: Mutex<Answers<String, WireInfo>>,
    /// Connections served from their first flight ([`Resumed`]).
    resumed: AtomicU64,
}

/// An idle daemon connection and how many temporary roots it holds: a root lives as long
/// as its connection, so one that has served [`TEMP_ROOTS_PER_CONNECTION`] NARs is closed
/// rather than kept, and the paths it pinned become collectable again.
#[derive(Debug)]
struct Pooled {
    client: DaemonClient<UnixStream>,
    temp_roots: u32,
    /// When it was last put back idle.
    idle_since: Instant,
}

impl Pooled {
    fn new(client: DaemonClient<UnixStream>) -> Self {
        Self {
            client,
            temp_roots: 0,
            idle_since: Instant::now(),
        }
    }
}

/// Closes the pool's connections idle for [`StoreLimits::idle_daemon_timeout`], checking a
/// few times per timeout, until the service is gone.
async fn close_idle_daemons(inner: Weak<Inner>, timeout: Duration) {
    let mut tick = tokio::time::interval(timeout / 3);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let mut idle = inner
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = idle.len();
        idle.retain(|pooled| pooled.idle_since.elapsed() < timeout);
        if idle.len() < before {
            debug!("closed {} idle daemon connection(s)", before - idle.len());
        }
    }
}

/// Why one request failed on the serving side (logged; the peer sees a reset stream).
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("cannot connect to the nix-daemon at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Frame(#[from] crate::proto::FrameError),
    #[error("the NAR of {path} came out as {got:?} ({size} bytes), not the expected {expected}")]
    NarChanged {
        path: StorePath,
        got: NarHash,
        size: u64,
        expected: NarHash,
    },
}

impl StoreService {
    /// Answers from the nix-daemon at `daemon_socket` (whose store directory is
    /// `store_dir`), signing narinfos with `key`; `me` is this node's id.
    pub fn new(
        daemon_socket: PathBuf,
        store_dir: StoreDir,
        policy: AccessPolicy,
        me: EndpointId,
        key: SecretKey,
        limits: StoreLimits,
    ) -> Self {
        let inner = Arc::new(Inner {
            daemon_socket,
            store_dir,
            policy,
            me,
            key,
            limits,
            nar_slots: Mutex::new(HashMap::new()),
            idle: Mutex::new(Vec::new()),
            answers: Mutex::new(Answers::new(ANSWER_TTL, ANSWER_CAPACITY)),
            resumed: AtomicU64::new(0),
        });
        // Outside a runtime (never in n2p) idle connections are only closed when the
        // service is dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(close_idle_daemons(
                Arc::downgrade(&inner),
                limits.idle_daemon_timeout,
            ));
        }
        Self { inner }
    }

    /// How many connections resumed a session and were served from their first flight
    /// (their 0-RTT streams, if the peer sent any and they were accepted, before the
    /// handshake completed).
    pub fn resumed_connections(&self) -> u64 {
        self.inner.resumed.load(Ordering::Relaxed)
    }

    /// The semaphore bounding NARs in flight to `peer`.
    fn nar_slots(&self, peer: EndpointId) -> Arc<Semaphore> {
        let mut slots = self
            .inner
            .nar_slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Forget peers with nothing in flight, so the map stays as small as the live set.
        slots.retain(|_, s| Arc::strong_count(s) > 1);
        slots
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(self.inner.limits.nars_per_peer)))
            .clone()
    }

    /// An idle daemon connection, if one is kept.
    fn idle(&self) -> Option<Pooled> {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
    }

    async fn daemon(&self) -> Result<DaemonClient<UnixStream>, ServeError> {
        let socket = &self.inner.daemon_socket;
        let stream = connect_daemon(socket)
            .await
            .map_err(|source| ServeError::Connect {
                socket: socket.clone(),
                source,
            })?;
        Ok(DaemonClient::handshake(stream, self.inner.store_dir.clone()).await?)
    }

    /// Checks the proof, reads the request, answers it. Every early return drops `streams`,
    /// which resets them.
    async fn handle_stream(
        &self,
        conn: &impl Served,
        gate: &ConnectionGate,
        unproven: UnprovenPermit,
        mut streams: QuicPair,
    ) {
        let proven = prove_stream(
            conn,
            gate,
            unproven,
            &mut streams.recv,
            &self.inner.policy,
            self.inner.me,
            self.inner.limits.pre_auth.proof_deadline,
            "refused store access to",
        )
        .await;
        if !proven {
            return;
        }
        let peer = conn.peer();
        let request = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            read_frame::<_, Request>(&mut streams.recv),
        )
        .await
        {
            Ok(Ok(request)) => request,
            Ok(Err(e)) => {
                debug!("unreadable store request: {e}");
                streams.send.reset(BAD_REQUEST).ok();
                return;
            }
            Err(_) => {
                debug!("no store request within {REQUEST_TIMEOUT:?}");
                streams.send.reset(BAD_REQUEST).ok();
                return;
            }
        };
        let outcome = match request {
            Request::NarInfos { hash_parts } if hash_parts.len() > MAX_HASH_PARTS => {
                debug!(
                    "refused a batch of {} hash parts (at most {MAX_HASH_PARTS})",
                    hash_parts.len()
                );
                streams.send.reset(BAD_REQUEST).ok();
                return;
            }
            Request::NarInfos { hash_parts } => {
                self.answer_narinfos(&hash_parts, &mut streams.send).await
            }
            Request::Nar {
                store_path,
                nar_hash,
            } => {
                let Ok(path) = StorePath::from_basename(&store_path) else {
                    debug!("refused a NAR request for {store_path:?}: not a store path");
                    streams.send.reset(BAD_REQUEST).ok();
                    return;
                };
                let slots = self.nar_slots(peer);
                let wait = self.inner.limits.nar_slot_wait;
                let _permit = match tokio::time::timeout(wait, slots.acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        debug!(
                            "{}: all {} NAR slots taken for {wait:?}; refused {path}",
                            peer.fmt_short(),
                            self.inner.limits.nars_per_peer
                        );
                        streams.send.reset(BUSY).ok();
                        return;
                    }
                };
                self.send_nar(&path, NarHash(nar_hash), &mut streams.send)
                    .await
            }
        };
        match outcome {
            Ok(()) => {
                if streams.send.finish().is_ok() {
                    streams.completed();
                }
            }
            Err(e) => {
                warn!("store request from {} failed: {e}", peer.fmt_short());
                streams.send.reset(NAR_ABORTED).ok();
            }
        }
    }

    async fn answer_narinfos(
        &self,
        hash_parts: &[String],
        send: &mut SendStream,
    ) -> Result<(), ServeError> {
        let mut infos = self.remembered(hash_parts);
        let unknown: Vec<&str> = hash_parts
            .iter()
            .zip(&infos)
            .filter(|(_, info)| info.is_none())
            .map(|(hash_part, _)| hash_part.as_str())
            .collect();
        if !unknown.is_empty() {
            let mut looked_up = self.daemon_lookups(&unknown).await?.into_iter();
            for info in infos.iter_mut().filter(|info| info.is_none()) {
                *info = looked_up.next().flatten();
            }
        }
        write_frame(send, &NarInfosReply { infos }).await?;
        Ok(())
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers<String, WireInfo>> {
        self.inner
            .answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The remembered answer for each hash part, `None` where there is none.
    fn remembered(&self, hash_parts: &[String]) -> Vec<Option<WireInfo>> {
        let now = Instant::now();
        let mut answers = self.answers();
        hash_parts
            .iter()
            .map(|hash_part| answers.get(hash_part, now))
            .collect()
    }

    /// Looks `hash_parts` up through the daemon, on an idle connection if one is kept.
    async fn daemon_lookups(
        &self,
        hash_parts: &[&str],
    ) -> Result<Vec<Option<WireInfo>>, ServeError> {
        match self.idle() {
            Some(mut daemon) => match self.lookups(&mut daemon.client, hash_parts).await {
                Ok(infos) => {
                    self.keep(daemon);
                    Ok(infos)
                }
                // An idle connection may have died (a restarted daemon): one more try on
                // a fresh one.
                Err(e) => {
                    debug!("an idle daemon connection failed ({e}); connecting afresh");
                    self.fresh_lookups(hash_parts).await
                }
            },
            None => self.fresh_lookups(hash_parts).await,
        }
    }

    async fn fresh_lookups(
        &self,
        hash_parts: &[&str],
    ) -> Result<Vec<Option<WireInfo>>, ServeError> {
        let mut daemon = self.daemon().await?;
        let infos = self.lookups(&mut daemon, hash_parts).await?;
        self.keep(Pooled::new(daemon));
        Ok(infos)
    }

    /// Keeps a daemon connection whose operations all succeeded for later requests.
    fn keep(&self, mut daemon: Pooled) {
        daemon.idle_since = Instant::now();
        if daemon.temp_roots >= TEMP_ROOTS_PER_CONNECTION {
            return;
        }
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < IDLE_DAEMON_CONNECTIONS {
            idle.push(daemon);
        }
    }

    /// Looks each hash part up and remembers the hits.
    async fn lookups(
        &self,
        daemon: &mut DaemonClient<UnixStream>,
        hash_parts: &[&str],
    ) -> Result<Vec<Option<WireInfo>>, ServeError> {
        let mut infos = Vec::with_capacity(hash_parts.len());
        for hash_part in hash_parts {
            infos.push(self.lookup(daemon, hash_part).await?);
        }
        let now = Instant::now();
        let mut answers = self.answers();
        for (hash_part, info) in hash_parts.iter().zip(&infos) {
            if let Some(info) = info {
                answers.remember(hash_part.to_string(), info.clone(), now);
            }
        }
        Ok(infos)
    }

    /// One path's metadata, signed by this node, or `None` when there is no valid path
    /// with this hash part.
    async fn lookup(
        &self,
        daemon: &mut DaemonClient<UnixStream>,
        hash_part: &str,
    ) -> Result<Option<WireInfo>, ServeError> {
        if !is_hash_part(hash_part) {
            return Ok(None);
        }
        let Some(path) = daemon.query_path_from_hash_part(hash_part).await? else {
            return Ok(None);
        };
        let Some(info) = daemon.query_path_info(&path).await? else {
            return Ok(None);
        };
        // Malformed signatures are dropped: newer Nix refuses a narinfo carrying one.
        let sigs = info
            .sigs
            .iter()
            .filter_map(|sig| Signature::parse(sig).ok())
            .collect();
        let mut narinfo = NarInfo {
            store_path: info.path,
            url: String::new(),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references,
            deriver: info.deriver,
            sigs,
            ca: info.ca,
        };
        narinfo.sign(&self.inner.store_dir, &self.inner.key);
        Ok(Some(WireInfo {
            store_path: narinfo.store_path.to_string(),
            nar_hash: narinfo.nar_hash.0,
            nar_size: narinfo.nar_size,
            references: narinfo.references.iter().map(|r| r.to_string()).collect(),
            deriver: narinfo.deriver.as_ref().map(|d| d.to_string()),
            sigs: narinfo.sigs.iter().map(|s| s.to_string()).collect(),
            ca: narinfo.ca,
        }))
    }

    /// Sends the header and, for a valid path with the expected hash, the NAR. `Ok` means
    /// the stream may be finished: a refusal header, or a NAR sent whole and verified.
    async fn send_nar(
        &self,
        path: &StorePath,
        expected: NarHash,
        send: &mut SendStream,
    ) -> Result<(), ServeError> {
        // An idle connection may have died (a restarted daemon): the query before the
        // header is retried once on a fresh one; nothing has been sent yet.
        let (mut daemon, info) = match self.idle() {
            Some(mut daemon) => match daemon.client.query_path_info(path).await {
                Ok(info) => (daemon, info),
                Err(e) => {
                    debug!("an idle daemon connection failed ({e}); connecting afresh");
                    let mut fresh = Pooled::new(self.daemon().await?);
                    let info = fresh.client.query_path_info(path).await?;
                    (fresh, info)
                }
            },
            None => {
                let mut fresh = Pooled::new(self.daemon().await?);
                let info = fresh.client.query_path_info(path).await?;
                (fresh, info)
            }
        };
        let header = match info {
            None => NarHeader::NotFound,
            Some(info) if info.nar_hash != expected => NarHeader::HashMismatch,
            Some(info) => NarHeader::Ok {
                nar_size: info.nar_size,
            },
        };
        let NarHeader::Ok { nar_size } = header else {
            debug!("NAR of {path}: {header:?}");
            write_frame(send, &header).await?;
            self.keep(daemon);
            return Ok(());
        };
        // Kept from garbage collection while this daemon connection lives.
        daemon.client.add_temp_root(path).await?;
        daemon.temp_roots += 1;
        write_frame(send, &header).await?;
        let summary = daemon.client.nar_from_path(path, send).await?;
        if summary.hash != expected || summary.size != nar_size {
            return Err(ServeError::NarChanged {
                path: path.clone(),
                got: summary.hash,
                size: summary.size,
                expected,
            });
        }
        debug!("sent the NAR of {path} ({nar_size} bytes)");
        self.keep(daemon);
        Ok(())
    }
}

impl StoreService {
    /// Serves `conn`'s streams until it ends, if its peer is let in.
    async fn serve(&self, conn: impl Served) {
        let peer = conn.peer();
        let span = info_span!("store", me = %self.inner.me.fmt_short(), remote = %peer.fmt_short());
        async {
            if let Err(refusal) = self.inner.policy.check_peer(peer) {
                warn!(peer = %peer, "refused store access to {peer}: {refusal}");
                conn.close(ACCESS_DENIED, refusal.to_string().as_bytes());
                return;
            }
            let service = self.clone();
            serve_streams(
                &conn,
                "store",
                &self.inner.limits.pre_auth,
                Some(self.inner.limits.streams_per_connection),
                move |conn, gate, unproven, pair| {
                    let service = service.clone();
                    async move { service.handle_stream(&conn, &gate, unproven, pair).await }
                },
            )
            .await;
        }
        .instrument(span)
        .await
    }
}

impl ProtocolHandler for StoreService {
    /// A connection that resumed a session, from a peer the policy lets in, is served here
    /// from its first 0-RTT stream on, and handed on closed (to [`Self::accept`], which
    /// then has nothing to do); any other is handed on once its handshake completes.
    async fn on_accepting(&self, accepting: Accepting) -> Result<Connection, AcceptError> {
        match Resumed::of(accepting.into_0rtt()) {
            Ok(resumed) if self.inner.policy.check_peer(resumed.peer()).is_ok() => {
                debug!(peer = %resumed.peer().fmt_short(), "serving a resumed session from its first flight");
                self.inner.resumed.fetch_add(1, Ordering::Relaxed);
                let logged = async {
                    if let Ok(conn) = resumed.connection().handshake_completed().await {
                        n2p_core::conn_stats::spawn_logger(&conn, "accept");
                    }
                };
                tokio::join!(self.serve(resumed.clone()), logged);
                Ok(resumed.connection().handshake_completed().await?)
            }
            // A peer refused (it may hold a ticket from a handshake that the endpoint's gate
            // refused just after) is refused once its handshake completes: a close during
            // the handshake would not carry the reason to it.
            Ok(refused) => Ok(refused.connection().handshake_completed().await?),
            Err(early) => Ok(early.handshake_completed().await?),
        }
    }

    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        if conn.close_reason().is_some() {
            return Ok(());
        }
        n2p_core::conn_stats::spawn_logger(&conn, "accept");
        self.serve(conn).await;
        Ok(())
    }
}
