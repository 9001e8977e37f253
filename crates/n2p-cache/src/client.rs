//! The asking side of [`crate::proto`]: [`StoreClient`] keeps one QUIC connection per peer
//! (a [`DaemonDialer`] speaking [`STORE_ALPN`], replaced when it has died) and opens one
//! stream per request. A peer's connection is made at its first request and closed once it
//! has gone unused for [`PEER_IDLE_CLOSE`] (no request or NAR in flight, none started), so
//! a facade that once asked the whole team does not keep a connection to every member.
//!
//! Single narinfo lookups ([`StoreClient::narinfo`]) are coalesced per peer: Nix asks for up
//! to 25 narinfos at once, and those that arrive while [`BATCHES_IN_FLIGHT`] requests to the
//! same peer are out go together in the next one, a single stream and a single reply instead
//! of one each.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use iroh::{Endpoint, EndpointAddr, EndpointId, endpoint::ReadError};
use n2p_core::{
    access::AccessSecret,
    daemon::{DEFAULT_CONNECT_TIMEOUT, DaemonDialer, DialError, Heard},
    forward::QuicPair,
    idle::PEER_IDLE_CLOSE,
};
use n2p_nix::{NarHash, NarInfo, Signature, StorePath, store_path::StorePathError};
use tokio::{sync::oneshot, task::AbortHandle};
use tracing::debug;

use crate::proto::{
    BUSY, FrameError, MAX_HASH_PARTS, NarHeader, NarInfosReply, Request, STORE_ALPN, WireInfo,
    read_frame, write_frame,
};

/// How long a NAR request may wait for its header (the server may be waiting for one of the
/// peer's NAR slots).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Coalesced narinfo requests out to one peer at once; lookups arriving meanwhile wait for
/// the next.
pub const BATCHES_IN_FLIGHT: usize = 2;

/// How long one coalesced narinfo request may take before its lookups fail (each asker has
/// its own, shorter deadline; this frees the request's place for the next batch).
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A narinfo lookup's answer, shared by every lookup of its batch when it failed.
pub type NarInfoAnswer = Result<Option<NarInfo>, Arc<PullError>>;

/// Narinfo lookups waiting for one peer, and how many requests to it are out.
#[derive(Debug, Default)]
struct Batches {
    waiting: Vec<(String, oneshot::Sender<NarInfoAnswer>)>,
    in_flight: usize,
}

/// A peer the facade may pull from.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The name it goes by (the `/peer/<name>/` URL).
    pub name: String,
    /// How to reach it (an id alone is enough where the endpoint can look it up).
    pub addr: EndpointAddr,
    /// The access secret its streams must prove.
    pub secret: AccessSecret,
}

impl Peer {
    /// The peer's id.
    pub fn id(&self) -> EndpointId {
        self.addr.id
    }
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// No stream could be opened (unreachable, refused, connection lost).
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The stream failed or was reset, or the answer was malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The request could not be sent.
    #[error("sending the request failed: {0}")]
    Send(String),
    /// The answer breaks the protocol.
    #[error("peer answered out of protocol: {0}")]
    Protocol(String),
    /// The peer does not have the path.
    #[error("the peer has no valid {0}")]
    NotFound(StorePath),
    /// The peer has the path with another NAR hash.
    #[error("the peer's {0} has another NAR hash")]
    HashMismatch(StorePath),
    /// The peer did not answer in time.
    #[error("the peer did not answer within {0:?}")]
    Timeout(Duration),
    /// The peer refused the NAR: its slots for us stayed taken by our other NARs.
    #[error("the peer is busy sending us other NARs; try again or another peer")]
    Busy,
}

/// Whether `error` is the peer's reset of the stream with [`BUSY`].
fn is_busy(error: &FrameError) -> bool {
    let FrameError::Io(io) = error else {
        return false;
    };
    matches!(
        io.get_ref().and_then(|inner| inner.downcast_ref::<ReadError>()),
        Some(ReadError::Reset(code)) if *code == BUSY
    )
}

/// A NAR on its way: `nar_size` bytes to read, then a clean end, which the server sends only
/// after the last of them (it resets the stream on any failure). Dropped before its end, it
/// stops the stream, so the server stops sending.
#[derive(Debug)]
pub struct NarDownload {
    /// The size the server announced.
    pub nar_size: u64,
    stream: QuicPair,
}

impl NarDownload {
    /// The next chunk of at most `max` bytes (iroh hands out its buffers without copying),
    /// `None` at the clean end.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<bytes::Bytes>, ReadError> {
        let chunk = self.stream.recv.read_chunk(max).await?;
        Ok(chunk)
    }

    /// The whole stream was read to its clean end: dropping it no longer stops anything.
    pub fn completed(self) {
        self.stream.completed();
    }
}

/// A peer's dialer, and the task that closes its connection when it goes unused.
#[derive(Debug)]
struct PeerDialer {
    dialer: Arc<DaemonDialer>,
    idle_close: AbortHandle,
}

impl Drop for PeerDialer {
    fn drop(&mut self) {
        self.idle_close.abort();
    }
}

/// Opens store requests to peers, one cached connection each.
#[derive(Debug)]
pub struct StoreClient {
    endpoint: Endpoint,
    connect_timeout: Duration,
    idle_close: Duration,
    dialers: Mutex<HashMap<EndpointId, PeerDialer>>,
    batches: Mutex<HashMap<EndpointId, Batches>>,
    narinfo_requests: AtomicU64,
    /// Requests answered that went out with 0-RTT.
    early_requests: AtomicU64,
    /// Requests sent with 0-RTT that the peer refused, and sent again.
    early_refused: AtomicU64,
    nar_requests: AtomicU64,
}

impl StoreClient {
    /// A client on `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_close: PEER_IDLE_CLOSE,
            dialers: Mutex::new(HashMap::new()),
            batches: Mutex::new(HashMap::new()),
            narinfo_requests: AtomicU64::new(0),
            early_requests: AtomicU64::new(0),
            early_refused: AtomicU64::new(0),
            nar_requests: AtomicU64::new(0),
        }
    }

    /// Bounds connection attempts (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Closes a peer's connection after it has gone unused this long (default
    /// [`PEER_IDLE_CLOSE`]).
    pub fn with_idle_close(mut self, after: Duration) -> Self {
        self.idle_close = after;
        self
    }

    /// The endpoint requests go out on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn dialer(&self, peer: &Peer) -> Arc<DaemonDialer> {
        let mut dialers = self
            .dialers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        dialers
            .entry(peer.id())
            .or_insert_with(|| {
                let dialer = Arc::new(
                    DaemonDialer::new(self.endpoint.clone(), peer.addr.clone(), &peer.secret)
                        .with_alpn(STORE_ALPN)
                        .with_early_data()
                        .with_connect_timeout(self.connect_timeout),
                );
                let after = self.idle_close;
                let idle_close = tokio::spawn({
                    let dialer = dialer.clone();
                    async move { match dialer.close_when_idle(after, || false).await {} }
                })
                .abort_handle();
                PeerDialer { dialer, idle_close }
            })
            .dialer
            .clone()
    }

    /// A reading of the open connection to `peer`: what it has sent so far, and its
    /// round-trip time (see [`DaemonDialer::heard`]).
    pub fn heard(&self, peer: EndpointId) -> Option<Heard> {
        let dialer = self
            .dialers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&peer)?
            .dialer
            .clone();
        dialer.heard()
    }

    /// Forgets peers not in `live`, closing their connections (streams still open on them
    /// end) and failing their waiting lookups.
    pub async fn retain(&self, live: &[EndpointId]) {
        for gone in self.forget(live, |_, _| true) {
            gone.dialer.close().await;
        }
    }

    /// Forgets the peers not in `live` that have nothing under way (no stream open or
    /// opening, no lookup waiting), closing their connections as idle: what the facade
    /// asked of peers that have left does not stay with it. The others are kept until a
    /// later call finds them idle.
    pub async fn forget_idle_peers(&self, live: &[EndpointId]) {
        for gone in self.forget(live, |dialer, lookups| {
            dialer.is_none_or(|d| d.streams_live() == 0)
                && lookups.is_none_or(|b| b.in_flight == 0 && b.waiting.is_empty())
        }) {
            // Refuses (and the connection ends with the last handle) if a stream started
            // on it in the meantime, through a dialer handed out before.
            gone.dialer.close_idle(gone.dialer.streams_opened()).await;
        }
    }

    /// Removes the peers not in `live` for which `idle` holds, given their dialer and
    /// their lookups' state; returns the removed dialers. Dropping a lookup state fails its
    /// waiting lookups (their answer channels close).
    fn forget(
        &self,
        live: &[EndpointId],
        idle: impl Fn(Option<&DaemonDialer>, Option<&Batches>) -> bool,
    ) -> Vec<PeerDialer> {
        let live: HashSet<&EndpointId> = live.iter().collect();
        let mut dialers = self
            .dialers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut batches = self
            .batches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let gone: HashSet<EndpointId> = dialers
            .keys()
            .chain(batches.keys())
            .filter(|&id| !live.contains(id))
            .filter(|&id| idle(dialers.get(id).map(|d| &*d.dialer), batches.get(id)))
            .copied()
            .collect();
        batches.retain(|id, _| !gone.contains(id));
        gone.iter().filter_map(|id| dialers.remove(id)).collect()
    }

    /// How many peers the client holds a dialer for (asked and not forgotten).
    pub fn peers_known(&self) -> usize {
        self.dialers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.retain(&[]).await;
    }

    /// Opens a stream (proof sent), sends `request` and finishes the sending half. The pair
    /// stops the receiving half when dropped before [`QuicPair::completed`].
    async fn request(&self, peer: &Peer, request: &Request) -> Result<QuicPair, PullError> {
        let mut pair = self.dialer(peer).open_stream().await?;
        send_request(&mut pair, request).await?;
        Ok(pair)
    }

    /// Sends `request` to `peer` and reads its answer. Where the connection has to be made
    /// again and resumes a session, the request goes out with 0-RTT (lookups only read, so
    /// a replay changes nothing; see [`DaemonDialer::open_early_stream`]): one round trip
    /// instead of two. If the peer refuses the 0-RTT data, it is sent again.
    async fn exchange<T: serde::de::DeserializeOwned>(
        &self,
        peer: &Peer,
        request: &Request,
    ) -> Result<T, PullError> {
        let mut early = self.dialer(peer).open_early_stream().await?;
        let answer = async {
            send_request(&mut early.pair, request).await?;
            Ok::<T, PullError>(read_frame(&mut early.pair.recv).await?)
        }
        .await;
        match answer {
            Ok(answer) => {
                if early.sent_early() {
                    self.early_requests.fetch_add(1, Ordering::Relaxed);
                }
                early.pair.completed();
                Ok(answer)
            }
            Err(e) if early.was_refused().await => {
                debug!(
                    "{} refused a 0-RTT request ({e}); sending it again",
                    peer.name
                );
                self.early_refused.fetch_add(1, Ordering::Relaxed);
                let mut pair = self.request(peer, request).await?;
                let answer = read_frame(&mut pair.recv).await?;
                pair.completed();
                Ok(answer)
            }
            Err(e) => Err(e),
        }
    }

    /// The metadata of the path with `hash_part` on `peer`, `None` where it has none; sent
    /// together with the other lookups for `peer` that wait at the same time. Dropping the
    /// future gives up waiting, not the request.
    pub async fn narinfo(self: &Arc<Self>, peer: &Peer, hash_part: &str) -> NarInfoAnswer {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut batches = self
                .batches
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let batches = batches.entry(peer.id()).or_default();
            batches.waiting.push((hash_part.to_owned(), answer));
            let start = batches.in_flight < BATCHES_IN_FLIGHT;
            if start {
                batches.in_flight += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().send_batches(peer.clone()));
        }
        answered.await.unwrap_or_else(|_| {
            Err(Arc::new(PullError::Send(
                "the peer left before the lookup went out".to_owned(),
            )))
        })
    }

    /// Sends the lookups waiting for `peer`, batch after batch, until none is left.
    async fn send_batches(self: Arc<Self>, peer: Peer) {
        loop {
            let batch: Vec<(String, oneshot::Sender<NarInfoAnswer>)> = {
                let mut batches = self
                    .batches
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let Some(batches) = batches.get_mut(&peer.id()) else {
                    return; // the peer left; its waiting lookups were dropped with it
                };
                if batches.waiting.is_empty() {
                    batches.in_flight -= 1;
                    return;
                }
                let n = batches.waiting.len().min(MAX_HASH_PARTS);
                batches.waiting.drain(..n).collect()
            };
            let hash_parts: Vec<String> = batch.iter().map(|(h, _)| h.clone()).collect();
            let answers = tokio::time::timeout(BATCH_TIMEOUT, self.narinfos(&peer, &hash_parts))
                .await
                .unwrap_or(Err(PullError::Timeout(BATCH_TIMEOUT)));
            match answers {
                Ok(infos) => {
                    for ((_, answer), info) in batch.into_iter().zip(infos) {
                        let _ = answer.send(Ok(info));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for (_, answer) in batch {
                        let _ = answer.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// How many narinfo requests (streams) this client has sent, to any peer.
    pub fn narinfo_requests(&self) -> u64 {
        self.narinfo_requests.load(Ordering::Relaxed)
    }

    /// How many requests sent with 0-RTT (on a connection made again that resumed a session)
    /// were answered, to any peer.
    pub fn early_requests(&self) -> u64 {
        self.early_requests.load(Ordering::Relaxed)
    }

    /// How many requests sent with 0-RTT a peer refused (and were sent again).
    pub fn early_refused(&self) -> u64 {
        self.early_refused.load(Ordering::Relaxed)
    }

    /// How many NAR requests this client has made, to any peer.
    pub fn nar_requests(&self) -> u64 {
        self.nar_requests.load(Ordering::Relaxed)
    }

    /// The metadata of the paths with `hash_parts` (at most [`MAX_HASH_PARTS`]) on `peer`,
    /// `None` where it has none. An entry that is malformed, or whose hash part is not the
    /// one asked for, counts as `None`.
    pub async fn narinfos(
        &self,
        peer: &Peer,
        hash_parts: &[String],
    ) -> Result<Vec<Option<NarInfo>>, PullError> {
        if hash_parts.len() > MAX_HASH_PARTS {
            return Err(PullError::Protocol(format!(
                "{} hash parts in one request (at most {MAX_HASH_PARTS})",
                hash_parts.len()
            )));
        }
        self.narinfo_requests.fetch_add(1, Ordering::Relaxed);
        let request = Request::NarInfos {
            hash_parts: hash_parts.to_vec(),
        };
        let reply: NarInfosReply = self.exchange(peer, &request).await?;
        if reply.infos.len() != hash_parts.len() {
            return Err(PullError::Protocol(format!(
                "{} answers for {} hash parts",
                reply.infos.len(),
                hash_parts.len()
            )));
        }
        Ok(reply
            .infos
            .into_iter()
            .zip(hash_parts)
            .map(|(info, asked)| {
                let info = info?;
                match from_wire(info) {
                    Ok(info) if info.store_path.hash_part() == asked => Some(info),
                    Ok(info) => {
                        debug!(
                            "{} answered {} for hash part {asked}",
                            peer.name, info.store_path
                        );
                        None
                    }
                    Err(e) => {
                        debug!("{} sent a malformed narinfo: {e}", peer.name);
                        None
                    }
                }
            })
            .collect())
    }

    /// Starts the download of `path`'s NAR from `peer`, only if its NAR hash there is
    /// `nar_hash`.
    pub async fn nar(
        &self,
        peer: &Peer,
        path: &StorePath,
        nar_hash: NarHash,
    ) -> Result<NarDownload, PullError> {
        self.nar_requests.fetch_add(1, Ordering::Relaxed);
        let request = Request::Nar {
            store_path: path.to_string(),
            nar_hash: nar_hash.0,
        };
        let header = async {
            let mut pair = self.request(peer, &request).await?;
            let header: NarHeader = read_frame(&mut pair.recv).await.map_err(|e| {
                if is_busy(&e) {
                    PullError::Busy
                } else {
                    PullError::from(e)
                }
            })?;
            Ok::<_, PullError>((header, pair))
        };
        let (header, stream) = tokio::time::timeout(HEADER_TIMEOUT, header)
            .await
            .map_err(|_| PullError::Timeout(HEADER_TIMEOUT))??;
        match header {
            NarHeader::Ok { nar_size } => Ok(NarDownload { nar_size, stream }),
            NarHeader::NotFound => Err(PullError::NotFound(path.clone())),
            NarHeader::HashMismatch => Err(PullError::HashMismatch(path.clone())),
        }
    }
}

/// Why a [`WireInfo`] was not a narinfo.
#[derive(Debug, thiserror::Error)]
enum WireError {
    #[error(transparent)]
    Path(#[from] StorePathError),
    #[error("bad signature {0:?}")]
    Sig(String),
    #[error("NarSize 0")]
    EmptyNar,
}

/// Writes `request` on `pair` and finishes its sending half.
async fn send_request(pair: &mut QuicPair, request: &Request) -> Result<(), PullError> {
    write_frame(&mut pair.send, request).await?;
    pair.send
        .finish()
        .map_err(|e| PullError::Send(e.to_string()))
}

fn from_wire(info: WireInfo) -> Result<NarInfo, WireError> {
    if info.nar_size == 0 {
        return Err(WireError::EmptyNar);
    }
    let store_path = StorePath::from_basename(&info.store_path)?;
    let references = info
        .references
        .iter()
        .map(|r| StorePath::from_basename(r))
        .collect::<Result<_, _>>()?;
    let deriver = info
        .deriver
        .as_deref()
        .map(StorePath::from_basename)
        .transpose()?;
    let sigs = info
        .sigs
        .iter()
        .map(|s| Signature::parse(s).map_err(|_| WireError::Sig(s.clone())))
        .collect::<Result<_, _>>()?;
    Ok(NarInfo {
        store_path,
        url: String::new(),
        nar_hash: NarHash(info.nar_hash),
        nar_size: info.nar_size,
        references,
        deriver,
        sigs,
        ca: info.ca,
    })
}
