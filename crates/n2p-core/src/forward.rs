//! The forwarding path: one local byte stream (a unix-socket connection) joined to one iroh
//! bidirectional stream, both directions at once.
//!
//! - local → remote: read into one reusable buffer, `write_all` into the QUIC stream (QUIC's
//!   flow control is the back-pressure); local EOF (half-close) becomes `finish()`.
//! - remote → local: `read` into one reusable buffer, which gathers the per-packet chunks
//!   QUIC holds (about 1.2 KiB each) into one local write; remote finish becomes
//!   `shutdown()` of the local write half.
//! - Either direction may end cleanly while the other goes on (Nix clients half-close).
//!
//! Only a clean end of a direction is ever passed on as a clean end; for a Nix client
//! ([`forward_nix_client`]) the peer's finish in the middle of an operation is not one
//! ([`ForwardError::EndedMidOperation`]). Every other way out — an error in either
//! direction, the node aborting a Nix client's forward, or the forward being dropped
//! half-way (its task cancelled, a peer socket removed) — aborts both sides:
//!
//! - the QUIC send side is reset and the receive side stopped (a dropped iroh `SendStream`
//!   would otherwise *finish*, which the peer reads as a complete transfer);
//! - the unix socket is closed without a half-close. Tokio's owned write half shuts the
//!   socket down for writing when dropped, and Nix 2.8 takes that EOF in the middle of an
//!   upload for its end, so the socket is only ever split by reference here. Closing it
//!   makes the client's writes fail (EPIPE or ECONNRESET) at the moment its reads end.
//!   Linux reports a unix stream closed with unread data in it as `ECONNRESET` to the
//!   other end (there is no `SO_LINGER` reset for unix sockets), so after an error the
//!   forwarder waits up to `RESET_GRACE` for an uploading client to put data in the
//!   socket before it closes it; the reset goes to whichever client call comes first, so
//!   a reader already blocked may still see EOF, now together with a failed write. A
//!   client waiting for an answer reads EOF in the middle of a message, which Nix
//!   reports as an unexpected end of file.
//! - before that close, a Nix client that waits for the end of an operation, between two of
//!   the daemon's messages, is sent a daemon error that says why
//!   ([`n2p_nix::worker::notice`]): Nix up to 2.24 takes an end of file seen by its reader
//!   thread during an upload for the end of its own input, and exits 0.

use std::{
    io,
    os::fd::AsRawFd,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use iroh::endpoint::{ReadError, RecvStream, SendStream, VarInt, WriteError};
use n2p_nix::worker::notice::FailureNotice;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest},
    net::UnixStream,
};
use tokio_util::sync::CancellationToken;

/// Size of the buffer used for each direction of a stream.
pub const FORWARD_BUFFER_SIZE: usize = 64 * 1024;

/// Error code sent when a stream is abandoned because the other side failed.
pub const FORWARD_ABORTED: VarInt = VarInt::from_u32(1);

/// Bytes moved by one finished forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Bytes read locally and sent to the peer.
    pub sent: u64,
    /// Bytes received from the peer and written locally.
    pub received: u64,
}

/// Why a forward ended abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// Reading from the local socket failed.
    #[error("reading the local socket failed")]
    LocalRead(#[source] io::Error),
    /// Writing to the local socket failed.
    #[error("writing the local socket failed")]
    LocalWrite(#[source] io::Error),
    /// The peer's side of the stream failed (reset, connection lost).
    #[error("receiving from the peer failed")]
    RemoteRead(#[source] ReadError),
    /// Sending to the peer failed (stopped, connection lost).
    #[error("sending to the peer failed")]
    RemoteWrite(#[source] WriteError),
    /// This node is shutting down and cut the forward (after its drain bound).
    #[error("the n2p node serving this socket is shutting down and cut the connection")]
    Aborted,
    /// The peer's side of the stream ended cleanly while the Nix client waited for the end
    /// of an operation's work ([`FailureNotice::in_operation`]): its daemon closed the
    /// connection half-way (it died, say, before the peer's node saw a failed write).
    #[error("the peer's nix-daemon closed the connection in the middle of an operation")]
    EndedMidOperation,
    /// The peer's daemon answered the handshake unlike the answer given to the client in
    /// its place ([`crate::hello`]): it was upgraded or reconfigured since.
    #[error(
        "the peer's nix-daemon answered the handshake differently than before (upgraded or reconfigured?); this connection was cut, the next one learns the new answer"
    )]
    HelloMismatch,
}

/// An iroh stream pair that is reset when dropped, unless [`QuicPair::completed`] was
/// called: the only way to a clean end is through the code that saw one.
#[derive(Debug)]
pub struct QuicPair {
    /// The sending half.
    pub send: SendStream,
    /// The receiving half.
    pub recv: RecvStream,
    completed: bool,
    /// Its place in a dialer's count of live streams, if any.
    live: Option<LiveStream>,
}

/// One stream in a dialer's count of live streams: counted from its creation (before the
/// stream has a connection) until it is dropped, with or inside its [`QuicPair`].
#[derive(Debug)]
pub(crate) struct LiveStream(Arc<AtomicUsize>);

impl LiveStream {
    /// Counts one more stream in `live`.
    pub(crate) fn counted_in(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self(live.clone())
    }
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl QuicPair {
    /// Guards `send` and `recv`.
    pub fn new(send: SendStream, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            completed: false,
            live: None,
        }
    }

    /// Keeps `live` (the stream's place in its dialer's count) until this pair is dropped.
    pub(crate) fn counted_as(mut self, live: LiveStream) -> Self {
        self.live = Some(live);
        self
    }

    /// Marks both directions as having ended cleanly; dropping no longer resets them.
    pub fn completed(mut self) {
        self.completed = true;
    }
}

impl Drop for QuicPair {
    fn drop(&mut self) {
        if !self.completed {
            // Errors only say the stream was already closed: nothing left to abort.
            self.send.reset(FORWARD_ABORTED).ok();
            self.recv.stop(FORWARD_ABORTED).ok();
        }
    }
}

/// Forwards between a local unix stream and an iroh stream pair until both directions have
/// ended; returns the byte counts. On any abnormal end, including this future being dropped,
/// both sides are aborted as the module documentation describes, never half-closed.
pub async fn forward(local: UnixStream, streams: QuicPair) -> Result<ForwardStats, ForwardError> {
    forward_inner(local, streams, None).await
}

/// What a forward knows of the Nix client on its local side.
#[derive(Debug)]
pub struct NixClient<'a> {
    /// Answers given to the client in the daemon's place ([`crate::hello`]): the peer's
    /// first bytes must be these, and are not passed on. Other first bytes end the forward
    /// with [`ForwardError::HelloMismatch`] before anything more reaches the client.
    pub owed: &'a [u8],
    /// Where the client stands in the protocol, if its handshake was followed: a failure is
    /// then also told to the client as a daemon error where the protocol allows
    /// ([`n2p_nix::worker::notice`]), so that it fails for that reason at its next read or
    /// write whether or not it sees the socket close.
    pub notice: Option<FailureNotice>,
    /// Cancelled when this node shuts down: the forward ends with [`ForwardError::Aborted`]
    /// (and tells the client so).
    pub abort: &'a CancellationToken,
}

/// [`forward`] for a Nix client: see [`NixClient`].
pub async fn forward_nix_client(
    local: UnixStream,
    streams: QuicPair,
    client: NixClient<'_>,
) -> Result<ForwardStats, ForwardError> {
    forward_inner(local, streams, Some(client)).await
}

async fn forward_inner(
    mut local: UnixStream,
    streams: QuicPair,
    client: Option<NixClient<'_>>,
) -> Result<ForwardStats, ForwardError> {
    let (expected, mut notice, abort) = match client {
        Some(NixClient {
            owed,
            notice,
            abort,
        }) => (owed, notice, Some(abort)),
        None => (&[][..], None, None),
    };
    let mut streams = streams;
    let client_sent = AtomicU64::new(0);
    let (mut local_read, mut local_write) = local.split();
    let outcome = {
        let QuicPair { send, recv, .. } = &mut streams;
        let mut up = pin!(copy_local_to_remote(&mut local_read, send, &client_sent));
        let mut down = pin!(copy_remote_to_local(
            recv,
            expected,
            &mut local_write,
            Follow {
                notice: &mut notice,
                client_sent: &client_sent,
            }
        ));
        let both = async {
            tokio::select! {
                sent = &mut up => match sent {
                    Ok(sent) => down.await.map(|received| ForwardStats { sent, received }),
                    Err(e) => Err(e),
                },
                received = &mut down => match received {
                    Ok(received) => up.await.map(|sent| ForwardStats { sent, received }),
                    Err(e) => Err(e),
                },
            }
        };
        match abort {
            Some(abort) => tokio::select! {
                biased;
                _ = abort.cancelled() => Err(ForwardError::Aborted),
                outcome = both => outcome,
            },
            None => both.await,
        }
    };
    match outcome {
        Ok(stats) => {
            streams.completed();
            Ok(stats)
        }
        Err(e) => {
            // Reset the QUIC side at once. Then tell the client why in its protocol if it
            // can take that now, or give an uploading client a moment to put bytes in the
            // socket, so that the close reads as ECONNRESET on its side.
            drop(streams);
            let told = notice
                .as_ref()
                .zip(told_why(&e))
                .and_then(|(notice, why)| notice.message(client_sent.load(Ordering::SeqCst), &why));
            match told {
                Some(message) => tell(&mut local, &message).await,
                None => {
                    tokio::time::timeout(RESET_GRACE, pending_data(&local))
                        .await
                        .ok();
                }
            }
            drop(local);
            Err(e)
        }
    }
}

/// What the client is told when the forward failed on the peer's side or was aborted; None
/// for a failure on the local side, which the client caused or sees itself.
fn told_why(error: &ForwardError) -> Option<String> {
    let cause = match error {
        ForwardError::RemoteRead(source) => source.to_string(),
        ForwardError::RemoteWrite(source) => source.to_string(),
        ForwardError::HelloMismatch | ForwardError::EndedMidOperation | ForwardError::Aborted => {
            return Some(format!("n2p: {error}; the operation did not complete"));
        }
        ForwardError::LocalRead(_) | ForwardError::LocalWrite(_) => return None,
    };
    Some(format!(
        "n2p: the connection to the peer's nix-daemon broke during this operation \
         ({error}: {cause}); it did not complete"
    ))
}

/// Gives the client `message`, then reads and drops what it still sends until it closes,
/// pauses for [`RESET_GRACE`] or [`TELL_BOUND`] has passed. An uploading client so takes the
/// message at its next write (Nix checks its reader's error before each), not a failed
/// write, and its error names the cause.
async fn tell(local: &mut UnixStream, message: &[u8]) {
    match tokio::time::timeout(RESET_GRACE, local.write_all(message)).await {
        Ok(Ok(())) => {}
        // Not reading (its buffer is full) or gone: closing is all that is left.
        Ok(Err(e)) => {
            tracing::debug!("could not tell the client why: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("could not tell the client why: it reads nothing");
            return;
        }
    }
    // An error path, once per failed connection: a buffer of its own is no burden here.
    let mut dropped = vec![0u8; FORWARD_BUFFER_SIZE];
    let drain = async {
        while let Ok(Ok(1..)) = tokio::time::timeout(RESET_GRACE, local.read(&mut dropped)).await {}
    };
    tokio::time::timeout(TELL_BOUND, drain).await.ok();
}

/// How long [`tell`] goes on taking what a client still sends after its message: Nix reads
/// the message on its reader thread at once and fails its upload at its next write.
pub(crate) const TELL_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns once the local socket holds unread data (or its peer has closed it).
async fn pending_data(local: &UnixStream) {
    let peek = || {
        let mut byte = 0u8;
        // SAFETY: a non-blocking peek of at most one byte into a local; the descriptor is
        // owned by `local` for the whole call.
        let n = unsafe {
            libc::recv(
                local.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    loop {
        if local.readable().await.is_err() {
            return;
        }
        // `try_io` clears a stale readiness when the peek finds nothing yet.
        match local.try_io(Interest::READABLE, peek) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            _ => return,
        }
    }
}

/// What the remote → local direction follows for a [`FailureNotice`].
struct Follow<'a> {
    notice: &'a mut Option<FailureNotice>,
    /// The bytes the client has sent so far.
    client_sent: &'a AtomicU64,
}

/// On an abnormal end, how long to wait for pending local data before closing the unix
/// socket (see the module documentation): a client that is writing fills it within
/// microseconds, one that waits for an answer reads EOF in the middle of a message either way.
pub(crate) const RESET_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// Copies local → remote; EOF becomes `finish()`. Returns bytes sent; `sent` counts them
/// too, each before it is passed on ([`FailureNotice`] needs that order).
async fn copy_local_to_remote<R: AsyncRead + Unpin>(
    local: &mut R,
    send: &mut SendStream,
    sent: &AtomicU64,
) -> Result<u64, ForwardError> {
    let mut buf = vec![0u8; FORWARD_BUFFER_SIZE];
    let mut total = 0u64;
    loop {
        let n = local
            .read(&mut buf)
            .await
            .map_err(ForwardError::LocalRead)?;
        if n == 0 {
            // The peer may already have stopped reading; that is its business.
            send.finish().ok();
            return Ok(total);
        }
        sent.fetch_add(n as u64, Ordering::SeqCst);
        send.write_all(&buf[..n])
            .await
            .map_err(ForwardError::RemoteWrite)?;
        total += n as u64;
    }
}

/// Copies remote → local after checking that the peer's first bytes are `expected` (kept
/// back); the peer's finish becomes a local half-close. Returns bytes written.
///
/// Reads into one buffer: `read` gathers every chunk QUIC has ready (one per received packet,
/// ~1.2 KiB) up to the buffer's size, so a bulk transfer costs one local write per buffer
/// instead of one per packet.
async fn copy_remote_to_local<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    expected: &[u8],
    local: &mut W,
    follow: Follow<'_>,
) -> Result<u64, ForwardError> {
    let mut buf = vec![0u8; FORWARD_BUFFER_SIZE];
    crate::hello::check_owed(recv, expected, &mut buf).await?;
    let mut total = 0u64;
    while let Some(n) = recv
        .read(&mut buf)
        .await
        .map_err(ForwardError::RemoteRead)?
    {
        // The client's count as these bytes arrived (it sent nothing they answer after).
        let client_sent = follow.client_sent.load(Ordering::SeqCst);
        let mut written = 0;
        while written < n {
            // `write` is cancel-safe: when this forward is cut off in a write, the notice
            // has followed exactly the bytes the client got.
            let wrote = local
                .write(&buf[written..n])
                .await
                .map_err(ForwardError::LocalWrite)?;
            if wrote == 0 {
                return Err(ForwardError::LocalWrite(io::ErrorKind::WriteZero.into()));
            }
            if let Some(notice) = follow.notice.as_mut() {
                notice.daemon_sent(&buf[written..written + wrote], client_sent);
            }
            written += wrote;
        }
        total += n as u64;
    }
    if let Some(notice) = follow.notice.as_ref()
        && notice.in_operation(follow.client_sent.load(Ordering::SeqCst))
    {
        // Not an end to pass on as one: Nix 2.8 may take an end of file during an upload
        // for the end of its own input ([`n2p_nix::worker::notice`]).
        return Err(ForwardError::EndedMidOperation);
    }
    // Half-close: the local side sees EOF but may keep sending.
    match local.shutdown().await {
        Ok(()) => Ok(total),
        // The local side is already gone entirely; nothing more to deliver.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(total),
        Err(e) => Err(ForwardError::LocalWrite(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iroh::{
        Endpoint, SecretKey,
        endpoint::{Connection, ReadError},
    };
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::endpoint::{EndpointOptions, bind_endpoint};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const ALPN: &[u8] = b"n2p/test/forward";

    /// Two offline endpoints on loopback and a connection from the first to the second.
    async fn connected()
    -> Result<(Endpoint, Endpoint, Connection, Connection), Box<dyn std::error::Error>> {
        let options = EndpointOptions::loopback();
        let a = bind_endpoint(SecretKey::from_bytes(&[11; 32]), vec![], &options).await?;
        let b = bind_endpoint(
            SecretKey::from_bytes(&[12; 32]),
            vec![ALPN.to_vec()],
            &options,
        )
        .await?;
        let dial = a.connect(b.addr(), ALPN);
        let accept = async {
            let incoming = b.accept().await.ok_or("no incoming connection")?;
            Ok::<_, Box<dyn std::error::Error>>(incoming.await?)
        };
        let (ab, ba) = tokio::join!(dial, accept);
        Ok((a, b, ab?, ba?))
    }

    /// Cancelling a forward half-way (its task dropped) must reset the QUIC stream: a
    /// dropped `SendStream` would otherwise finish it, and the peer would take the bytes
    /// so far for the whole transfer.
    #[tokio::test]
    async fn a_cancelled_forward_resets_the_peer_stream() -> TestResult {
        let (a, b, ab, ba) = connected().await?;
        let (mut local, theirs) = UnixStream::pair()?;
        let (send, recv) = ab.open_bi().await?;
        let task = tokio::spawn(forward(theirs, QuicPair::new(send, recv)));
        local.write_all(b"first half of a NAR").await?;
        let (_, mut peer_recv) = ba.accept_bi().await?;
        let mut buf = [0u8; 19];
        peer_recv.read_exact(&mut buf).await?;
        task.abort();
        let _ = task.await;
        let end = peer_recv.read_to_end(1 << 20).await;
        assert!(
            matches!(end, Err(iroh::endpoint::ReadToEndError::Read(ReadError::Reset(code))) if code == FORWARD_ABORTED),
            "peer saw {end:?} instead of a reset"
        );
        a.close().await;
        b.close().await;
        Ok(())
    }

    /// When the peer's side fails while the local client is still uploading, the local
    /// socket is closed, not half-closed: the client's writes fail and its reader (blocked
    /// on a thread of its own, as in Nix) wakes with EOF or ECONNRESET. (Which of the two
    /// a reader already blocked in `read` sees is the kernel's race with the writer, which
    /// takes the reset; the end-to-end test `faults` shows Nix 2.8 fails either way.)
    #[tokio::test]
    async fn a_failed_peer_closes_the_local_socket() -> TestResult {
        use std::{
            io::{Read, Write},
            sync::{
                Arc,
                atomic::{AtomicU64, Ordering},
            },
        };

        let (a, b, ab, ba) = connected().await?;
        let (local, theirs) = std::os::unix::net::UnixStream::pair()?;
        theirs.set_nonblocking(true)?;
        let theirs = UnixStream::from_std(theirs)?;
        let (send, recv) = ab.open_bi().await?;
        let task = tokio::spawn(forward(theirs, QuicPair::new(send, recv)));
        // Upload until QUIC flow control stalls it (the peer reads nothing), so data is
        // pending in the forwarder's socket as in a real interrupted upload.
        let mut writer = local.try_clone()?;
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        let uploader = std::thread::spawn(move || {
            let chunk = vec![7u8; 64 * 1024];
            loop {
                if let Err(e) = writer.write_all(&chunk) {
                    return e.kind();
                }
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        let mut reader = local;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 16];
            reader.read(&mut buf).map_err(|e| e.kind())
        });
        let (mut peer_send, mut peer_recv) = ba.accept_bi().await?;
        let mut first = [0u8; 1];
        peer_recv.read_exact(&mut first).await?;
        // Stalled: the upload has made no progress for a while (bounded wait).
        let mut last = u64::MAX;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = written.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
        assert_eq!(
            last,
            written.load(Ordering::Relaxed),
            "the upload never stalled"
        );
        peer_send.reset(VarInt::from_u32(99))?;
        let outcome = tokio::time::timeout(Duration::from_secs(5), task).await??;
        assert!(
            matches!(outcome, Err(ForwardError::RemoteRead(_))),
            "{outcome:?}"
        );
        let read = tokio::time::timeout(Duration::from_secs(5), read).await??;
        assert!(
            matches!(read, Ok(0) | Err(io::ErrorKind::ConnectionReset)),
            "the local client read {read:?} instead of an end"
        );
        let write_error = tokio::task::spawn_blocking(move || uploader.join())
            .await?
            .map_err(|_| "uploader panicked")?;
        assert!(
            matches!(
                write_error,
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "the uploading client's write ended with {write_error:?}"
        );
        a.close().await;
        b.close().await;
        Ok(())
    }

    /// A peer that ends its side cleanly while the Nix client waits for the end of an
    /// operation has failed it: the client reads a daemon error saying so, then the end,
    /// never a bare end of file. Between operations the same end is passed on as it is.
    #[tokio::test]
    async fn a_peer_ending_mid_operation_is_told_to_the_client_as_a_daemon_error() -> TestResult {
        use n2p_nix::worker::notice::error_message;
        use tokio::io::AsyncReadExt;

        const VERSION: u64 = 0x122;
        let (a, b, ab, ba) = connected().await?;
        for mid_operation in [true, false] {
            let (mut client, theirs) = UnixStream::pair()?;
            let (send, recv) = ab.open_bi().await?;
            let abort = CancellationToken::new();
            let forward = async {
                let client = NixClient {
                    owed: &[],
                    notice: Some(FailureNotice::after_handshake(VERSION)),
                    abort: &abort,
                };
                forward_nix_client(theirs, QuicPair::new(send, recv), client).await
            };
            let peer = async {
                // The stream reaches the peer with the client's first bytes.
                let operation = [9u8; 8];
                client.write_all(&operation).await?;
                let (mut peer_send, mut peer_recv) = ba.accept_bi().await?;
                let mut got = [0u8; 8];
                peer_recv.read_exact(&mut got).await?;
                if !mid_operation {
                    // The work ends and a reply follows: the client then reads it all.
                    let mut reply = 0x616c_7473u64.to_le_bytes().to_vec();
                    reply.extend(1u64.to_le_bytes());
                    peer_send.write_all(&reply).await?;
                }
                peer_send.finish()?;
                let mut seen = Vec::new();
                client.read_to_end(&mut seen).await?;
                drop(client);
                Ok::<_, Box<dyn std::error::Error>>(seen)
            };
            let (outcome, seen) = tokio::join!(forward, peer);
            let seen = seen?;
            if mid_operation {
                assert!(
                    matches!(outcome, Err(ForwardError::EndedMidOperation)),
                    "{outcome:?}"
                );
                let told = format!(
                    "n2p: {}; the operation did not complete",
                    ForwardError::EndedMidOperation
                );
                assert_eq!(seen, error_message(VERSION, &told), "what the client read");
            } else {
                assert!(outcome.is_ok(), "{outcome:?}");
                assert_eq!(seen.len(), 16, "the reply, then the end");
            }
        }
        a.close().await;
        b.close().await;
        Ok(())
    }
}
