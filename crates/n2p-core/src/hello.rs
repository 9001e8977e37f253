//! The hello cache: a Nix client's handshake answered at once, from what the peer's daemon
//! answered the last client that sent the same bytes, instead of one round trip per step.
//!
//! A new daemon connection through a warm n2p connection costs one round trip per
//! handshake step, and Nix waits for each answer before its first operation: Nix 2.8 sends
//! its magic, then its version and options, then `SetOptions`, each after the answer to the
//! one before, so even `nix store ping` takes three round trips. The daemon's answers are
//! the same for every client that sends the same handshake (they carry its protocol
//! version, features, Nix version and whether it trusts the serving node), so the
//! dialing side records one real exchange per peer ([`HelloCache`]) and, when the next
//! client's parts match it byte for byte, writes the recorded answers itself, sending the
//! client's bytes on at once. The client's `SetOptions` then follows in the same flight,
//! and the connection costs one round trip.
//!
//! Nothing is taken on trust: the daemon's real answers still arrive, first on the stream,
//! and are compared with the ones given before anything more reaches the client
//! ([`crate::forward::forward_nix_client`]). Only handshake bytes can have reached the
//! peer's daemon by then (Nix waits for the answer to `SetOptions` before its first real
//! operation). If they differ, the daemon was upgraded or reconfigured: that one connection
//! is cut with [`ForwardError::HelloMismatch`], the recording is dropped and the next
//! connection records afresh. A client that speaks something else, or a daemon that logs
//! during its handshake, is simply passed through ([`n2p_nix::worker::hello`] frames only
//! what can be given again).

use std::sync::{Arc, Mutex};

use iroh::endpoint::RecvStream;
use n2p_nix::worker::hello::{Framing, Hello, HelloError, STEPS};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};
use tracing::debug;

use crate::forward::{ForwardError, QuicPair};

/// One peer daemon's recorded handshake: the client's part and the daemon's answer for each
/// step, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Transcript {
    parts: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The last complete handshake recorded with one peer's daemon.
#[derive(Debug, Default)]
pub struct HelloCache {
    last: Mutex<Option<Arc<Transcript>>>,
}

impl HelloCache {
    /// An empty cache: the first connection records.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a handshake is recorded.
    pub fn is_recorded(&self) -> bool {
        self.lock().is_some()
    }

    /// Drops the recording (after the daemon answered otherwise).
    pub fn forget(&self) {
        *self.lock() = None;
    }

    fn recorded(&self) -> Option<Arc<Transcript>> {
        self.lock().clone()
    }

    fn record(&self, transcript: Transcript) {
        *self.lock() = Some(Arc::new(transcript));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Transcript>>> {
        // A panic while holding this lock leaves a whole value either way.
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What [`relay`] leaves to the forward that follows it.
#[derive(Debug)]
pub(crate) struct Relayed {
    /// The answers given in the daemon's place, which the peer has yet to send.
    pub owed: Vec<u8>,
    /// The protocol version both sides use, if the whole handshake was framed; the forward
    /// then follows the connection to tell the client of a failure in the protocol.
    pub version: Option<u64>,
}

/// Relays the handshake between a new local connection and its stream to the peer,
/// answering from `cache` where the client's parts match the recording and recording a
/// new exchange where they do not. The caller hands what it returns to
/// [`crate::forward::forward_nix_client`]. On [`ForwardError::HelloMismatch`], here or
/// there, the caller drops the recording ([`HelloCache::forget`]).
pub(crate) async fn relay(
    local: &mut UnixStream,
    streams: &mut QuicPair,
    cache: &HelloCache,
) -> Result<Relayed, ForwardError> {
    let recorded = cache.recorded();
    let mut hello = Hello::new();
    let mut owed = Vec::new();
    let mut parts = Vec::with_capacity(STEPS.len());
    let mut replaying = recorded.is_some();
    for (index, &step) in STEPS.iter().enumerate() {
        let (part, framed) = read_part(&mut Source::Local(&mut *local), |bytes| {
            hello.client_part(step, bytes)
        })
        .await?;
        send(streams, &part).await?;
        if !framed {
            return Ok(Relayed {
                owed,
                version: None,
            });
        }
        let answer = match recorded.as_ref().and_then(|r| r.parts.get(index)) {
            Some((client, answer)) if replaying && *client == part => {
                if hello.daemon_part(step, answer) != Ok(Framing::Complete(answer.len())) {
                    // Recorded by this code, so it frames; never answer with what does not.
                    return Err(ForwardError::HelloMismatch);
                }
                local
                    .write_all(answer)
                    .await
                    .map_err(ForwardError::LocalWrite)?;
                owed.extend_from_slice(answer);
                answer.clone()
            }
            _ => {
                replaying = false;
                let mut scratch = vec![0u8; owed.len().min(4096)];
                check_owed(&mut streams.recv, &owed, &mut scratch).await?;
                owed.clear();
                let (answer, framed) = read_part(&mut Source::Remote(&mut streams.recv), |b| {
                    hello.daemon_part(step, b)
                })
                .await?;
                local
                    .write_all(&answer)
                    .await
                    .map_err(ForwardError::LocalWrite)?;
                if !framed {
                    debug!(
                        ?step,
                        "handshake not recorded: the daemon's answer is not one to give again"
                    );
                    return Ok(Relayed {
                        owed,
                        version: None,
                    });
                }
                answer
            }
        };
        parts.push((part, answer));
    }
    if !replaying {
        debug!("recorded the peer daemon's handshake");
        cache.record(Transcript { parts });
    }
    Ok(Relayed {
        owed,
        version: hello.version(),
    })
}

/// Reads the peer's first bytes and checks that they are `owed`, using `buf` for them. A
/// stream that ends before all of them arrived is not a mismatch: its end is the caller's.
pub(crate) async fn check_owed(
    recv: &mut RecvStream,
    owed: &[u8],
    buf: &mut [u8],
) -> Result<(), ForwardError> {
    let mut checked = 0;
    while checked < owed.len() {
        let want = (owed.len() - checked).min(buf.len());
        let Some(n) = recv
            .read(&mut buf[..want])
            .await
            .map_err(ForwardError::RemoteRead)?
        else {
            return Ok(());
        };
        if buf[..n] != owed[checked..checked + n] {
            return Err(ForwardError::HelloMismatch);
        }
        checked += n;
    }
    Ok(())
}

/// Where a part is read from.
enum Source<'a> {
    Local(&'a mut UnixStream),
    Remote(&'a mut RecvStream),
}

impl Source<'_> {
    /// Reads some bytes into `buf`; 0 at the end of the stream.
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ForwardError> {
        match self {
            Source::Local(local) => local.read(buf).await.map_err(ForwardError::LocalRead),
            Source::Remote(recv) => Ok(RecvStream::read(recv, buf)
                .await
                .map_err(ForwardError::RemoteRead)?
                .unwrap_or(0)),
        }
    }
}

/// Reads one part, no further than `frame` says it reaches. Returns its bytes and whether
/// they are framed; unframed bytes (something else, or an early end) are all that was read.
async fn read_part(
    from: &mut Source<'_>,
    mut frame: impl FnMut(&[u8]) -> Result<Framing, HelloError>,
) -> Result<(Vec<u8>, bool), ForwardError> {
    let mut bytes = Vec::new();
    loop {
        match frame(&bytes) {
            Ok(Framing::Complete(_)) => return Ok((bytes, true)),
            Ok(Framing::Need(more)) => {
                let start = bytes.len();
                bytes.resize(start + more, 0);
                let n = from.read_some(&mut bytes[start..]).await?;
                bytes.truncate(start + n);
                if n == 0 {
                    return Ok((bytes, false));
                }
            }
            Err(error) => {
                debug!("not a handshake to record: {error}");
                return Ok((bytes, false));
            }
        }
    }
}

/// Sends a client part on to the peer.
async fn send(streams: &mut QuicPair, bytes: &[u8]) -> Result<(), ForwardError> {
    streams
        .send
        .write_all(bytes)
        .await
        .map_err(ForwardError::RemoteWrite)
}
