//! The forwarding path: one local byte stream (a unix-socket connection) joined to one iroh
//! bidirectional stream, both directions at once.
//!
//! - local → remote: read into one reusable buffer, `write_all` into the QUIC stream (QUIC's
//!   flow control is the back-pressure); local EOF (half-close) becomes `finish()`.
//! - remote → local: `read` into one reusable buffer, which gathers the per-packet chunks
//!   QUIC holds (about 1.2 KiB each) into one local write; remote finish becomes
//!   `shutdown()` of the local write half.
//! - Either direction may end cleanly while the other goes on (Nix clients half-close).
//!   An error in one direction resets both: the QUIC send side is reset (never silently
//!   finished, so a truncated transfer cannot look complete), the receive side stopped.

use std::{io, pin::pin};

use iroh::endpoint::{ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
}

/// Forwards between a local stream (split into `local_read` and `local_write`) and an iroh
/// stream pair until both directions have ended; returns the byte counts.
pub async fn forward<R, W>(
    local_read: R,
    local_write: W,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<ForwardStats, ForwardError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut local_read = local_read;
    let mut local_write = local_write;
    let outcome = {
        let mut up = pin!(copy_local_to_remote(&mut local_read, &mut send));
        let mut down = pin!(copy_remote_to_local(&mut recv, &mut local_write));
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
    if outcome.is_err() {
        // Never let Drop turn an abandoned stream into a clean finish.
        send.reset(FORWARD_ABORTED).ok();
        recv.stop(FORWARD_ABORTED).ok();
    }
    outcome
}

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

/// Copies remote → local; the peer's finish becomes a local half-close. Returns bytes written.
///
/// Reads into one buffer: `read` gathers every chunk QUIC has ready (one per received packet,
/// ~1.2 KiB) up to the buffer's size, so a bulk transfer costs one local write per buffer
/// instead of one per packet.
async fn copy_remote_to_local<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    local: &mut W,
) -> Result<u64, ForwardError> {
    let mut buf = vec![0u8; FORWARD_BUFFER_SIZE];
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
