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
//! Only a clean end of a direction is ever passed on as a clean end. Every other way out —
//! an error in either direction, or the forward being dropped half-way (its task cancelled
//! on shutdown, a peer socket removed) — aborts both sides:
//!
//! - the QUIC send side is reset and the receive side stopped (a dropped iroh `SendStream`
//!   would otherwise *finish*, which the peer reads as a complete transfer);
//! - the unix socket is closed without a half-close. Tokio's owned write half shuts the
//!   socket down for writing when dropped, and Nix 2.8 takes that EOF in the middle of an
//!   upload for its end, so the socket is only ever split by reference here. Closing it
//!   makes the client's writes fail (EPIPE or ECONNRESET) at the moment its reads end.
//!   Linux reports a unix stream closed with unread data in it as `ECONNRESET` to the
//!   other end (there is no `SO_LINGER` reset for unix sockets), so after an error the
//!   forwarder waits up to [`RESET_GRACE`] for an uploading client to put data in the
//!   socket before it closes it; the reset goes to whichever client call comes first, so
//!   a reader already blocked may still see EOF, now together with a failed write. A
//!   client waiting for an answer reads EOF in the middle of a message, which Nix
//!   reports as an unexpected end of file.

use std::{io, os::fd::AsRawFd, pin::pin};

use iroh::endpoint::{ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest},
    net::UnixStream,
};

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
}

impl QuicPair {
    /// Guards `send` and `recv`.
    pub fn new(send: SendStream, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            completed: false,
        }
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
    forward_expecting(local, streams, &[]).await
}

/// [`forward`], where the peer's first bytes must be `expected` and are not passed on: the
/// client already has them ([`crate::hello`]). Other first bytes end the forward with
/// [`ForwardError::HelloMismatch`] before anything more reaches the client.
pub async fn forward_expecting(
    mut local: UnixStream,
    streams: QuicPair,
    expected: &[u8],
) -> Result<ForwardStats, ForwardError> {
    let mut streams = streams;
    let (mut local_read, mut local_write) = local.split();
    let outcome = {
        let QuicPair { send, recv, .. } = &mut streams;
        let mut up = pin!(copy_local_to_remote(&mut local_read, send));
        let mut down = pin!(copy_remote_to_local(recv, expected, &mut local_write));
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
    match outcome {
        Ok(stats) => {
            streams.completed();
            Ok(stats)
        }
        Err(e) => {
            // Reset the QUIC side at once, then give an uploading client a moment to put
            // bytes in the socket, so that the close reads as ECONNRESET on its side.
            drop(streams);
            tokio::time::timeout(RESET_GRACE, pending_data(&local))
                .await
                .ok();
            drop(local);
            Err(e)
        }
    }
}

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

/// On an abnormal end, how long to wait for pending local data before closing the unix
/// socket (see the module documentation): a client that is writing fills it within
/// microseconds, one that waits for an answer reads EOF in the middle of a message either way.
const RESET_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// Copies local → remote; EOF becomes `finish()`. Returns bytes sent.
async fn copy_local_to_remote<R: AsyncRead + Unpin>(
    local: &mut R,
    send: &mut SendStream,
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
) -> Result<u64, ForwardError> {
    let mut buf = vec![0u8; FORWARD_BUFFER_SIZE];
    crate::hello::check_owed(recv, expected, &mut buf).await?;
    let mut total = 0u64;
    while let Some(n) = recv
        .read(&mut buf)
        .await
        .map_err(ForwardError::RemoteRead)?
    {
        local
            .write_all(&buf[..n])
            .await
            .map_err(ForwardError::LocalWrite)?;
        total += n as u64;
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
}
