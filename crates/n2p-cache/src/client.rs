//! The asking side of [`crate::proto`]: [`StoreClient`] keeps one QUIC connection per peer
//! (a [`DaemonDialer`] speaking [`STORE_ALPN`], replaced when it has died) and opens one
//! stream per request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh::{Endpoint, EndpointAddr, EndpointId, endpoint::ReadError};
use n2p_core::{
    access::AccessSecret,
    daemon::{DEFAULT_CONNECT_TIMEOUT, DaemonDialer, DialError},
    forward::QuicPair,
};
use n2p_nix::{NarHash, NarInfo, Signature, StorePath, store_path::StorePathError};
use tracing::debug;

use crate::proto::{
    FrameError, MAX_HASH_PARTS, NarHeader, NarInfosReply, Request, STORE_ALPN, WireInfo,
    read_frame, write_frame,
};

/// How long a NAR request may wait for its header (the server may be waiting for one of the
/// peer's NAR slots).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Opens store requests to peers, one cached connection each.
#[derive(Debug)]
pub struct StoreClient {
    endpoint: Endpoint,
    connect_timeout: Duration,
    dialers: Mutex<HashMap<EndpointId, Arc<DaemonDialer>>>,
}

impl StoreClient {
    /// A client on `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            dialers: Mutex::new(HashMap::new()),
        }
    }

    /// Bounds connection attempts (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
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
                Arc::new(
                    DaemonDialer::new(self.endpoint.clone(), peer.addr.clone(), &peer.secret)
                        .with_alpn(STORE_ALPN)
                        .with_connect_timeout(self.connect_timeout),
                )
            })
            .clone()
    }

    /// Forgets peers not in `live`, closing their connections.
    pub async fn retain(&self, live: &[EndpointId]) {
        let gone: Vec<Arc<DaemonDialer>> = {
            let mut dialers = self
                .dialers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let gone_ids: Vec<EndpointId> = dialers
                .keys()
                .filter(|id| !live.contains(id))
                .copied()
                .collect();
            gone_ids
                .iter()
                .filter_map(|id| dialers.remove(id))
                .collect()
        };
        for dialer in gone {
            dialer.close().await;
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.retain(&[]).await;
    }

    /// Opens a stream (proof sent), sends `request` and finishes the sending half. The pair
    /// stops the receiving half when dropped before [`QuicPair::completed`].
    async fn request(&self, peer: &Peer, request: &Request) -> Result<QuicPair, PullError> {
        let mut pair = self.dialer(peer).open_stream().await?;
        write_frame(&mut pair.send, request).await?;
        pair.send
            .finish()
            .map_err(|e| PullError::Send(e.to_string()))?;
        Ok(pair)
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
        let mut pair = self
            .request(
                peer,
                &Request::NarInfos {
                    hash_parts: hash_parts.to_vec(),
                },
            )
            .await?;
        let reply: NarInfosReply = read_frame(&mut pair.recv).await?;
        pair.completed();
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
        let request = Request::Nar {
            store_path: path.to_string(),
            nar_hash: nar_hash.0,
        };
        let header = async {
            let mut pair = self.request(peer, &request).await?;
            let header: NarHeader = read_frame(&mut pair.recv).await?;
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
