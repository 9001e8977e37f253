//! The local binary-cache facade: an HTTP server (axum) that stock Nix substitutes from,
//! answered by the live peers over [`crate::proto`].
//!
//! Routes, at the root (all live peers) and under `/peer/<name>/` (that peer only):
//!
//! - `GET /nix-cache-info`: `StoreDir`, `WantMassQuery: 1`, `Priority`.
//! - `GET`/`HEAD /<hash part>.narinfo`: every peer in scope is asked at once; the best
//!   answer wins (signed by a key of [`FacadeConfig::trusted_keys`], then signed by some
//!   key besides the answering node's own, then content-addressed, then the rest). A miss,
//!   an error or no answer within [`FacadeConfig::deadline`] is a 404: never a 5xx, never a
//!   hang (Nix aborts builds on narinfo errors and caches hits for a month). A peer's hit is
//!   remembered for a few seconds (`answers`): Nix asks for each narinfo several
//!   times in one `nix copy`, and the repeats need no round trip.
//! - `GET /nar/<hash part>-<nix32 NAR hash>.nar`: the URL the narinfo hands out, relative
//!   and self-describing, so it stays valid across restarts. Routed to a peer that
//!   announced that exact NAR hash (remembered from recent narinfo answers, else asked
//!   for); a peer that fails before the first byte is replaced by the next one with the
//!   same hash. `Content-Length` is the NAR size; the bytes are streamed from QUIC as they
//!   come, hashed on the way, and the last chunk is held back until size and SHA-256 match:
//!   on a mismatch or a cut stream the body is aborted short of its length, so Nix never
//!   receives a complete bad NAR.
//!
//! `Compression: none` always: the facade is on loopback.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
    serve::ListenerExt,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream::FuturesUnordered};
use iroh::EndpointId;
use n2p_nix::{NarHash, NarInfo, PublicKey, StoreDir, StorePath, nix32, store_path::is_hash_part};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::answers::{ANSWER_CAPACITY, ANSWER_TTL, Answers};
use crate::client::{NarDownload, Peer, StoreClient};

/// The facade's default address: fixed, so the nix.conf lines that name it stay valid.
pub const DEFAULT_FACADE_ADDR: &str = "127.0.0.1:5496";

/// Default bound on asking the peers for a narinfo.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

/// Round trips of its own a far peer gets for a narinfo lookup: a lookup on a new connection
/// takes two (handshake, request); a lost packet is sent again after QUIC's probe timeout,
/// about three round trips after the first measurement, and doubled for a second loss of
/// the same packet, so two losses cost about nine more.
pub const LOOKUP_RTTS: u32 = 12;

/// The longest a narinfo lookup waits for a far peer's round trips ([`LOOKUP_RTTS`]) when
/// that is longer than the deadline.
pub const MAX_LOOKUP_WAIT: Duration = Duration::from_secs(5);

/// Default `Priority` (cache.nixos.org has 40; lower is asked first).
pub const DEFAULT_PRIORITY: u32 = 30;

/// How many recent narinfo answers are remembered for routing NAR requests.
const RECENT_CAPACITY: usize = 65_536;

/// Largest chunk taken from QUIC at once.
const CHUNK: usize = 256 * 1024;

/// The live peers, asked afresh for each request (the binary supplies it: from the mesh
/// node's status, or the one `n2p server` of `n2p client --cache`).
pub type PeerSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<Peer>> + Send>> + Send + Sync>;

/// How the facade answers.
#[derive(Debug, Clone)]
pub struct FacadeConfig {
    /// The local store directory (`StoreDir` in `nix-cache-info`).
    pub store_dir: StoreDir,
    /// `Priority` in `nix-cache-info`.
    pub priority: u32,
    /// How long a narinfo request waits for the peers; while no peer has answered, a peer
    /// whose round trip is longer than a twelfth of it, and that was heard from since the
    /// request came, gets [`LOOKUP_RTTS`] round trips instead, up to [`MAX_LOOKUP_WAIT`].
    pub deadline: Duration,
    /// Keys whose signature makes an answer best (the team's members' Nix keys) at start;
    /// [`Facade::set_trusted_keys`] replaces them.
    pub trusted_keys: Vec<PublicKey>,
}

impl Default for FacadeConfig {
    fn default() -> Self {
        Self {
            store_dir: StoreDir::default(),
            priority: DEFAULT_PRIORITY,
            deadline: DEFAULT_DEADLINE,
            trusted_keys: Vec::new(),
        }
    }
}

/// The facade's state, shared by its handlers.
pub struct Facade {
    config: FacadeConfig,
    /// [`FacadeConfig::trusted_keys`] as in force now ([`Facade::set_trusted_keys`]).
    trusted_keys: RwLock<Arc<[PublicKey]>>,
    client: Arc<StoreClient>,
    peers: PeerSource,
    recent: Mutex<Recent>,
    /// Recent narinfo hits by peer and hash part (see [`crate::answers`]).
    answers: Mutex<Answers<(EndpointId, String), NarInfo>>,
}

impl std::fmt::Debug for Facade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facade")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Which peers a request may use.
#[derive(Debug, Clone)]
enum Scope {
    All,
    Named(String),
}

impl Facade {
    /// A facade asking `peers` through `client`.
    pub fn new(config: FacadeConfig, client: Arc<StoreClient>, peers: PeerSource) -> Arc<Self> {
        Arc::new(Self {
            trusted_keys: RwLock::new(config.trusted_keys.clone().into()),
            config,
            client,
            peers,
            recent: Mutex::new(Recent::default()),
            answers: Mutex::new(Answers::new(ANSWER_TTL, ANSWER_CAPACITY)),
        })
    }

    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/nix-cache-info", get(cache_info))
            .route("/{file}", get(root_file))
            .route("/nar/{file}", get(root_nar).head(root_nar_head))
            .route("/peer/{name}/nix-cache-info", get(cache_info))
            .route("/peer/{name}/{file}", get(peer_file))
            .route("/peer/{name}/nar/{file}", get(peer_nar).head(peer_nar_head))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then lets requests in flight end.
    pub async fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            debug!("binary cache for Nix at http://{addr}");
        }
        // Nagle would hold each small NAR's last segment for a delayed ACK (~40 ms per
        // path on a reused connection).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                debug!("cannot set TCP_NODELAY: {e}");
            }
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// The live peers in `scope` (bounded by the deadline: a stuck source is no peers).
    /// What the client holds for peers no longer live is dropped once nothing is under way
    /// with them ([`StoreClient::forget_idle_peers`]).
    async fn peers_in(&self, scope: &Scope) -> Vec<Peer> {
        let peers = match tokio::time::timeout(self.config.deadline, (self.peers)()).await {
            Ok(peers) => peers,
            Err(_) => {
                warn!(
                    "the live peer set did not come within {:?}",
                    self.config.deadline
                );
                return Vec::new();
            }
        };
        let live: Vec<EndpointId> = peers.iter().map(Peer::id).collect();
        self.client.forget_idle_peers(&live).await;
        match scope {
            Scope::All => peers,
            Scope::Named(name) => peers.into_iter().filter(|p| &p.name == name).collect(),
        }
    }

    /// Asks every peer in `peers` for `hash_part` at once; returns the answers that came
    /// within the deadline, each with its [`rank`], stopping early at one signed by a
    /// trusted key.
    async fn ask(&self, peers: &[Peer], hash_part: &str) -> Vec<(EndpointId, NarInfo, u8)> {
        let mut pending: FuturesUnordered<_> = peers
            .iter()
            .map(|peer| async move {
                let key = (peer.id(), hash_part.to_owned());
                if let Some(info) = self.answers().get(&key, Instant::now()) {
                    return (peer, Ok(Some(info)));
                }
                let answer = self.client.narinfo(peer, hash_part).await;
                if let Ok(Some(info)) = &answer {
                    self.answers().remember(key, info.clone(), Instant::now());
                }
                (peer, answer)
            })
            .collect();
        let mut answers = Vec::new();
        let mut answered = Vec::with_capacity(peers.len());
        let heard_at_start: Vec<_> = peers.iter().map(|p| self.client.heard(p.id())).collect();
        let started = tokio::time::Instant::now();
        let after = |wait: Duration| {
            started
                .checked_add(wait)
                .unwrap_or_else(|| started + MAX_LOOKUP_WAIT)
        };
        let mut until = after(self.config.deadline);
        loop {
            match tokio::time::timeout_at(until, pending.next()).await {
                Ok(Some((peer, answer))) => {
                    answered.push(peer.id());
                    match answer {
                        Ok(Some(info)) => {
                            let rank = self.rank(&info);
                            answers.push((peer.id(), info, rank));
                            if rank == 0 {
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => debug!("narinfo {hash_part} from {}: {e}", peer.name),
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    // Far peers still asked, and heard from since, may get some of their
                    // round trips.
                    let asked = peers
                        .iter()
                        .zip(&heard_at_start)
                        .filter(|(p, _)| !answered.contains(&p.id()))
                        .map(|(p, before)| {
                            let now = self.client.heard(p.id());
                            Asked {
                                rtt: now.and_then(|n| n.rtt()),
                                heard: now.is_some_and(|n| n.is_news_since(before.as_ref())),
                            }
                        });
                    let longer = after(wait_for(self.config.deadline, !answers.is_empty(), asked));
                    if longer > until {
                        until = longer;
                        continue;
                    }
                    debug!(
                        "narinfo {hash_part}: {} peer(s) did not answer within {:?}",
                        pending.len(),
                        until - started
                    );
                    break;
                }
            }
        }
        drop(pending);
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (peer, info, _) in &answers {
            recent.remember(info.nar_hash, *peer, &info.store_path);
        }
        answers
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers<(EndpointId, String), NarInfo>> {
        self.answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn rank(&self, info: &NarInfo) -> u8 {
        let trusted = self
            .trusted_keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        rank(info, &self.config.store_dir, &trusted)
    }

    /// Puts `keys` in force as the keys whose signature makes an answer best (the team's
    /// keys after a reloaded team file), from the next narinfo request on.
    pub fn set_trusted_keys(&self, keys: Vec<PublicKey>) {
        *self
            .trusted_keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = keys.into();
    }

    async fn narinfo(&self, scope: Scope, file: &str) -> Response {
        let Some(hash_part) = file.strip_suffix(".narinfo").filter(|h| is_hash_part(h)) else {
            return not_found();
        };
        let peers = self.peers_in(&scope).await;
        let answers = self.ask(&peers, hash_part).await;
        let Some((_, mut best, _)) = answers.into_iter().min_by_key(|(_, _, rank)| *rank) else {
            debug!("narinfo {hash_part}: miss");
            return not_found();
        };
        best.url = nar_url(&best.store_path, &best.nar_hash);
        (
            [(header::CONTENT_TYPE, "text/x-nix-narinfo")],
            best.render(&self.config.store_dir),
        )
            .into_response()
    }

    /// `HEAD` of a NAR URL: its headers from a peer's narinfo with that NAR hash, without
    /// fetching the NAR (axum would otherwise run the `GET` and drop the body).
    async fn nar_head(&self, scope: Scope, file: &str) -> Response {
        let Some((hash_part, nar_hash)) = parse_nar_file(file) else {
            return not_found();
        };
        let peers = self.peers_in(&scope).await;
        let answers = self.ask(&peers, hash_part).await;
        match answers
            .iter()
            .find(|(_, info, _)| info.nar_hash == nar_hash)
        {
            Some((_, info, _)) => nar_headers(info.nar_size, Body::empty()),
            None => not_found(),
        }
    }

    async fn nar(&self, scope: Scope, file: &str) -> Response {
        let Some((hash_part, nar_hash)) = parse_nar_file(file) else {
            return not_found();
        };
        let peers = self.peers_in(&scope).await;
        let mut candidates: Vec<(Peer, StorePath)> = {
            let recent = self
                .recent
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            recent
                .holders(&nar_hash)
                .filter(|(_, path)| path.hash_part() == hash_part)
                .filter_map(|(id, path)| {
                    let peer = peers.iter().find(|p| p.id() == *id)?;
                    Some((peer.clone(), path.clone()))
                })
                .collect()
        };
        if candidates.is_empty() {
            candidates = self
                .ask(&peers, hash_part)
                .await
                .into_iter()
                .filter(|(_, info, _)| info.nar_hash == nar_hash)
                .filter_map(|(id, info, _)| {
                    let peer = peers.iter().find(|p| p.id() == id)?;
                    Some((peer.clone(), info.store_path))
                })
                .collect();
        }
        for (peer, path) in candidates {
            match self.client.nar(&peer, &path, nar_hash).await {
                Ok(download) => {
                    debug!(
                        "NAR of {path} from {} ({} bytes)",
                        peer.name, download.nar_size
                    );
                    let size = download.nar_size;
                    let body = verified(chunks(download), nar_hash, size, path.to_string());
                    return nar_headers(size, Body::from_stream(body));
                }
                Err(e) => warn!(
                    "NAR of {path} from {}: {e}; trying the next peer",
                    peer.name
                ),
            }
        }
        debug!("NAR {file}: no peer has it");
        not_found()
    }
}

/// How good an answer is, lower first. 0: signed by a trusted key; 1: signed by some key
/// besides the answering node's own (every node signs what it serves); 2: content-addressed;
/// 3: the rest.
fn rank(info: &NarInfo, store_dir: &StoreDir, trusted: &[PublicKey]) -> u8 {
    if info.signed_by_any(store_dir, trusted) {
        0
    } else if info.sigs.len() > 1 {
        1
    } else if info.ca.is_some() {
        2
    } else {
        3
    }
}

/// A NAR response of `size` bytes with `body` (empty for `HEAD`).
fn nar_headers(size: u64, body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/x-nix-nar".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response()
}

/// A peer a narinfo lookup still waits for, as [`wait_for`] weighs it.
#[derive(Debug, Clone, Copy)]
struct Asked {
    /// Its round-trip time on the open connection to it ([`StoreClient::heard`]; `None`
    /// with none open).
    rtt: Option<Duration>,
    /// Whether it was heard from since the lookup started: it sent something, or a
    /// connection to it was made.
    heard: bool,
}

/// How long a narinfo lookup waits for the peers that have not answered: the deadline once
/// it has an answer (`answered`); with none yet, the deadline or [`LOOKUP_RTTS`] round trips
/// of the furthest of them when longer, up to [`MAX_LOOKUP_WAIT`]. A false 404 is costly (Nix
/// takes the path as absent for an hour), so a far peer gets the time its answer may need.
/// Only a peer heard from since the lookup started counts: the round-trip estimate does not
/// tell a far peer from one that is stuck or has crashed (the estimate even grows when a
/// stuck peer's late acknowledgements arrive), but a far one acknowledges the request within
/// its round trip, well inside the deadline, and a stuck one sends nothing. A peer whose
/// round trip is longer than the deadline is not heard from in time and gets the deadline.
fn wait_for(deadline: Duration, answered: bool, asked: impl Iterator<Item = Asked>) -> Duration {
    if answered {
        return deadline;
    }
    let furthest = asked
        .filter(|a| a.heard)
        .filter_map(|a| a.rtt)
        .max()
        .unwrap_or_default();
    deadline.max(furthest.saturating_mul(LOOKUP_RTTS).min(MAX_LOOKUP_WAIT))
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// The relative URL a narinfo hands out for `path`'s NAR with `nar_hash`.
pub fn nar_url(path: &StorePath, nar_hash: &NarHash) -> String {
    format!("nar/{}-{}.nar", path.hash_part(), nar_hash.nix32_digest())
}

/// Parses a NAR file name `<hash part>-<nix32 NAR hash>.nar`.
fn parse_nar_file(file: &str) -> Option<(&str, NarHash)> {
    let stem = file.strip_suffix(".nar")?;
    let (hash_part, digest) = stem.split_once('-')?;
    if !is_hash_part(hash_part) {
        return None;
    }
    let bytes = nix32::decode::<32>(digest).ok()?;
    Some((hash_part, NarHash(bytes)))
}

async fn cache_info(State(facade): State<Arc<Facade>>) -> Response {
    let text = format!(
        "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
        facade.config.store_dir.as_str(),
        facade.config.priority
    );
    ([(header::CONTENT_TYPE, "text/x-nix-cache-info")], text).into_response()
}

async fn root_file(State(facade): State<Arc<Facade>>, Path(file): Path<String>) -> Response {
    facade.narinfo(Scope::All, &file).await
}

async fn peer_file(
    State(facade): State<Arc<Facade>>,
    Path((name, file)): Path<(String, String)>,
) -> Response {
    facade.narinfo(Scope::Named(name), &file).await
}

async fn root_nar(State(facade): State<Arc<Facade>>, Path(file): Path<String>) -> Response {
    facade.nar(Scope::All, &file).await
}

async fn peer_nar(
    State(facade): State<Arc<Facade>>,
    Path((name, file)): Path<(String, String)>,
) -> Response {
    facade.nar(Scope::Named(name), &file).await
}

async fn root_nar_head(State(facade): State<Arc<Facade>>, Path(file): Path<String>) -> Response {
    facade.nar_head(Scope::All, &file).await
}

async fn peer_nar_head(
    State(facade): State<Arc<Facade>>,
    Path((name, file)): Path<(String, String)>,
) -> Response {
    facade.nar_head(Scope::Named(name), &file).await
}

/// The download's chunks as a stream; the download is marked complete at its clean end.
fn chunks(download: NarDownload) -> impl Stream<Item = io::Result<Bytes>> + Send {
    futures_util::stream::unfold(Some(download), |state| async move {
        let mut download = state?;
        match download.next_chunk(CHUNK).await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(download))),
            Ok(None) => {
                download.completed();
                None
            }
            Err(e) => Some((Err(io::Error::other(e)), None)),
        }
    })
}

/// Passes `source` through while hashing it, holding back the latest chunk: it is let out
/// only once the next one arrives, or, for the last, once the source ended cleanly with
/// exactly `size` bytes whose SHA-256 is `expected`. Any other end yields an error instead,
/// which makes the HTTP server abort the response short of its `Content-Length`.
pub fn verified<S>(
    source: S,
    expected: NarHash,
    size: u64,
    what: String,
) -> impl Stream<Item = io::Result<Bytes>> + Send
where
    S: Stream<Item = io::Result<Bytes>> + Send,
{
    struct Check<S> {
        source: Pin<Box<S>>,
        hasher: Sha256,
        received: u64,
        held: Option<Bytes>,
    }
    let check = Check {
        source: Box::pin(source),
        hasher: Sha256::new(),
        received: 0,
        held: None,
    };
    futures_util::stream::unfold(Some(check), move |state| {
        let what = what.clone();
        async move {
            let mut check = state?;
            loop {
                match check.source.next().await {
                    Some(Ok(chunk)) => {
                        check.received += chunk.len() as u64;
                        if check.received > size {
                            warn!("NAR of {what}: more than its {size} bytes; aborted");
                            return Some((
                                Err(io::Error::other("NAR longer than announced")),
                                None,
                            ));
                        }
                        check.hasher.update(&chunk);
                        if let Some(previous) = check.held.replace(chunk) {
                            return Some((Ok(previous), Some(check)));
                        }
                    }
                    Some(Err(e)) => {
                        warn!(
                            "NAR of {what} cut after {} of {size} bytes: {e}",
                            check.received
                        );
                        return Some((Err(e), None));
                    }
                    None => {
                        let hash = NarHash(check.hasher.finalize_reset().into());
                        if check.received != size || hash != expected {
                            warn!(
                                "NAR of {what}: {} of {size} bytes, hash {hash} (expected {expected}); aborted",
                                check.received
                            );
                            return Some((
                                Err(io::Error::other("NAR incomplete or changed")),
                                None,
                            ));
                        }
                        return check.held.take().map(|last| (Ok(last), None));
                    }
                }
            }
        }
    })
}

/// Recent narinfo answers: which peer announced which NAR hash for which path. Bounded; the
/// oldest entries go first.
#[derive(Debug, Default)]
struct Recent {
    by_hash: HashMap<NarHash, Vec<(EndpointId, StorePath)>>,
    order: VecDeque<NarHash>,
}

impl Recent {
    fn remember(&mut self, nar_hash: NarHash, peer: EndpointId, path: &StorePath) {
        let holders = self.by_hash.entry(nar_hash).or_default();
        if holders.iter().any(|(id, p)| *id == peer && p == path) {
            return;
        }
        if holders.is_empty() {
            self.order.push_back(nar_hash);
        }
        holders.push((peer, path.clone()));
        while self.order.len() > RECENT_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.by_hash.remove(&old);
            }
        }
    }

    fn holders(&self, nar_hash: &NarHash) -> impl Iterator<Item = &(EndpointId, StorePath)> {
        self.by_hash.get(nar_hash).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::*;

    fn chunked(data: &[u8], cut: usize) -> Vec<io::Result<Bytes>> {
        data.chunks(cut)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    }

    async fn run(items: Vec<io::Result<Bytes>>, expected: NarHash, size: u64) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut body = Box::pin(verified(stream::iter(items), expected, size, "t".into()));
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(_) => return (out, false),
            }
        }
        (out, true)
    }

    #[tokio::test]
    async fn a_whole_nar_passes_through_unchanged() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let hash = NarHash::of(&data);
        for cut in [1, 1000, 65_536, 100_000] {
            let (out, ok) = run(chunked(&data, cut), hash, data.len() as u64).await;
            assert!(ok, "cut {cut}");
            assert_eq!(out, data, "cut {cut}");
        }
    }

    #[tokio::test]
    async fn a_bad_nar_never_gets_its_last_chunk_out() {
        let data = vec![7u8; 10_000];
        let hash = NarHash::of(&data);
        // Truncated: one chunk short.
        let mut items = chunked(&data, 1000);
        items.pop();
        let (out, ok) = run(items, hash, 10_000).await;
        assert!(
            !ok && out.len() < 9_000,
            "truncated: {} bytes out",
            out.len()
        );
        // Same size, different bytes.
        let mut other = data.clone();
        other[9_999] = 8;
        let (out, ok) = run(chunked(&other, 1000), hash, 10_000).await;
        assert!(
            !ok && out.len() < 10_000,
            "changed: {} bytes out",
            out.len()
        );
        // Longer than announced.
        let (out, ok) = run(chunked(&data, 1000), hash, 9_000).await;
        assert!(!ok && out.len() < 9_000);
        // Cut by an error.
        let mut items = chunked(&data, 1000);
        items.push(Err(io::Error::other("reset")));
        let (out, ok) = run(items, hash, 11_000).await;
        assert!(!ok && out.len() < 10_000);
    }

    #[test]
    fn nar_urls_are_relative_and_parse_back() {
        let path = StorePath::from_basename(&format!("{}-hello", "a".repeat(32))).expect("path");
        let hash = NarHash::of(b"hello");
        let url = nar_url(&path, &hash);
        assert!(url.starts_with("nar/aaaa"), "{url}");
        let file = url.strip_prefix("nar/").expect("prefix");
        assert_eq!(parse_nar_file(file), Some((path.hash_part(), hash)));
        assert_eq!(parse_nar_file("x.nar"), None);
        assert_eq!(parse_nar_file(&file.replace(".nar", ".nar.xz")), None);
        assert_eq!(parse_nar_file(&format!("{}-zz.nar", "a".repeat(32))), None);
    }

    #[test]
    fn answers_rank_trusted_then_upstream_signed_then_content_addressed() {
        let dir = StoreDir::default();
        let path = StorePath::from_basename(&format!("{}-x", "a".repeat(32))).expect("path");
        let team = n2p_nix::SecretKey::from_seed("alice-n2p-1", [1; 32]);
        let node = n2p_nix::SecretKey::from_seed("stranger-n2p-1", [2; 32]);
        let upstream = n2p_nix::SecretKey::from_seed("cache.example.org-1", [3; 32]);
        let base = NarInfo {
            store_path: path,
            url: String::new(),
            nar_hash: NarHash::of(b"x"),
            nar_size: 1,
            references: Vec::new(),
            deriver: None,
            sigs: Vec::new(),
            ca: None,
        };
        let trusted = [team.public()];
        let signed = |keys: &[&n2p_nix::SecretKey]| {
            let mut info = base.clone();
            for key in keys {
                info.sign(&dir, key);
            }
            info
        };
        assert_eq!(rank(&signed(&[&team]), &dir, &trusted), 0);
        assert_eq!(rank(&signed(&[&upstream, &node]), &dir, &trusted), 1);
        let mut ca = signed(&[&node]);
        ca.ca = Some("fixed:r:sha256:x".into());
        assert_eq!(rank(&ca, &dir, &trusted), 2);
        assert_eq!(rank(&signed(&[&node]), &dir, &trusted), 3);
    }

    /// Peers that were heard from since the lookup started, with these round trips.
    fn heard(rtts: &[Option<Duration>]) -> impl Iterator<Item = Asked> + '_ {
        rtts.iter().map(|&rtt| Asked { rtt, heard: true })
    }

    #[test]
    fn far_peers_get_their_round_trips_unless_a_peer_answered() {
        let second = Duration::from_secs(1);
        let ms = Duration::from_millis;
        let far = [Some(ms(30)), Some(ms(300)), None];
        // Near peers, or none measured yet: the deadline.
        assert_eq!(
            wait_for(second, false, heard(&[Some(ms(30)), None])),
            second
        );
        assert_eq!(wait_for(second, false, std::iter::empty()), second);
        // The furthest peer still asked sets it: 12 round trips of 300 ms.
        assert_eq!(wait_for(second, false, heard(&far)), ms(3600));
        // With an answer in hand, nobody gets more than the deadline.
        assert_eq!(wait_for(second, true, heard(&far)), second);
        // Never past the cap, and never below a longer configured deadline.
        let slow = [Some(ms(600))];
        assert_eq!(wait_for(second, false, heard(&slow)), MAX_LOOKUP_WAIT);
        assert_eq!(wait_for(10 * second, false, heard(&slow)), 10 * second);
        assert_eq!(
            wait_for(second, false, heard(&[Some(Duration::MAX)])),
            MAX_LOOKUP_WAIT
        );
    }

    #[test]
    fn a_peer_not_heard_from_during_the_lookup_gets_only_the_deadline() {
        let second = Duration::from_secs(1);
        let ms = Duration::from_millis;
        // A stuck peer whose estimate grew with its late acknowledgements, beside a near one.
        let stuck = Asked {
            rtt: Some(ms(375)),
            heard: false,
        };
        let near = Asked {
            rtt: Some(ms(30)),
            heard: true,
        };
        assert_eq!(wait_for(second, false, [stuck, near].into_iter()), second);
        // The far peer that did acknowledge the request keeps its round trips.
        let far = Asked {
            rtt: Some(ms(300)),
            heard: true,
        };
        assert_eq!(wait_for(second, false, [stuck, far].into_iter()), ms(3600));
    }

    #[test]
    fn recent_answers_are_bounded() {
        let mut recent = Recent::default();
        let peer = iroh::SecretKey::from_bytes(&[1; 32]).public();
        let path = StorePath::from_basename(&format!("{}-x", "a".repeat(32))).expect("path");
        for i in 0..(RECENT_CAPACITY + 10) as u32 {
            recent.remember(NarHash::of(&i.to_le_bytes()), peer, &path);
        }
        assert_eq!(recent.by_hash.len(), RECENT_CAPACITY);
        assert_eq!(recent.holders(&NarHash::of(&0u32.to_le_bytes())).count(), 0);
        let last = NarHash::of(&((RECENT_CAPACITY + 9) as u32).to_le_bytes());
        recent.remember(last, peer, &path);
        assert_eq!(recent.holders(&last).count(), 1);
    }
}
