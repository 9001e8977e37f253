//! Asking a nix-daemon which Nix answers and whether it lets us add unsigned paths, over its
//! own protocol: the worker handshake (which reports the Nix version from protocol 1.33 on,
//! and the trust from 1.35 on). An older daemon is asked by deed: one AddToStoreNar of an
//! unsigned path, "without signature checks" (which only a trusted user may ask for), whose
//! NAR is not a NAR. An untrusted client is refused first, with "lacks a signature by a
//! trusted key"; a trusted one gets as far as the NAR and is refused there ("doesn't look
//! like a Nix archive") before the path is written. Either way nothing is added, and the
//! connection is closed right after; only the trusted case may leave Nix's empty lock file
//! `<store>/00000000000000000000000000000000-n2p-doctor-probe.lock` behind (always that one
//! name, so at most one such file).
//!
//! (The n2p-nix crate is to hold the worker protocol client; this probe needs only these
//! few frames and the trust answer, which that client does not expose.)

use std::{path::Path, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::UnixStream,
};

const WORKER_MAGIC_1: u64 = 0x6e69_7863;
const WORKER_MAGIC_2: u64 = 0x6478_696f;
/// The version this probe speaks: 1.35 (where the handshake reports trust); older daemons
/// (Nix 2.8 speaks 1.34) talk down to it.
const CLIENT_VERSION: u64 = (1 << 8) | 35;
const OP_ADD_TO_STORE_NAR: u64 = 39;

const STDERR_NEXT: u64 = 0x6f6c_6d67;
const STDERR_ERROR: u64 = 0x6378_7470;
const STDERR_LAST: u64 = 0x616c_7473;
const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
const STDERR_RESULT: u64 = 0x5253_4c54;

/// Longest string accepted from the daemon.
const MAX_STRING: u64 = 1 << 20;

/// How long the whole probe may take.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DaemonFacts {
    /// Its protocol version, `(major, minor)`.
    pub(crate) protocol: (u64, u64),
    /// Its Nix version, when the protocol carries it (1.33 and later).
    pub(crate) nix_version: Option<String>,
    /// Whether it trusts this client: lets it add unsigned paths (a trusted user, or a
    /// daemon with `require-sigs = false`).
    pub(crate) trusted: bool,
}

/// Probes the daemon listening at `socket`; `store_dir` is its store directory (for a path
/// it will parse).
pub(crate) async fn probe(socket: &Path, store_dir: &str) -> std::io::Result<DaemonFacts> {
    let stream = UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);

    write_u64(&mut write, WORKER_MAGIC_1).await?;
    write.flush().await?;
    if read_u64(&mut read).await? != WORKER_MAGIC_2 {
        return Err(protocol("this is not a nix-daemon (wrong magic number)"));
    }
    let server = read_u64(&mut read).await?;
    // 1.26 (Nix 2.4) brought the error frames read below.
    if server >> 8 != 1 || (server & 0xff) < 26 {
        return Err(protocol(&format!(
            "unsupported daemon protocol {}.{}",
            server >> 8,
            server & 0xff
        )));
    }
    let minor = (server & 0xff).min(CLIENT_VERSION & 0xff);
    write_u64(&mut write, CLIENT_VERSION).await?;
    if minor >= 14 {
        write_u64(&mut write, 0).await?; // no CPU affinity
    }
    if minor >= 11 {
        write_u64(&mut write, 0).await?; // reserveSpace: no
    }
    write.flush().await?;
    let nix_version = if minor >= 33 {
        Some(read_string(&mut read).await?)
    } else {
        None
    };
    // 0: unknown, 1: trusted, 2: not trusted.
    let reported = if minor >= 35 {
        match read_u64(&mut read).await? {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    } else {
        None
    };
    // The daemon ends its set-up like an operation: log frames up to STDERR_LAST.
    if let Some(error) = read_log(&mut read).await? {
        return Err(protocol(&format!(
            "the daemon refused the connection: {error}"
        )));
    }
    let trusted = match reported {
        Some(trusted) => trusted,
        None => try_unsigned_add(&mut read, &mut write, store_dir).await?,
    };
    Ok(DaemonFacts {
        protocol: (server >> 8, server & 0xff),
        nix_version,
        trusted,
    })
}

/// Whether the daemon gets past the signature check for an unsigned path when asked to skip
/// it; see the module documentation. Needs protocol 1.23 or later (framed NARs).
async fn try_unsigned_add<R, W>(
    read: &mut R,
    write: &mut W,
    store_dir: &str,
) -> std::io::Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let path = format!("{store_dir}/{}-n2p-doctor-probe", "0".repeat(32));
    write_u64(write, OP_ADD_TO_STORE_NAR).await?;
    write_string(write, &path).await?;
    write_string(write, "").await?; // no deriver
    write_string(write, &format!("sha256:{}", "0".repeat(64))).await?;
    write_u64(write, 0).await?; // no references
    write_u64(write, 0).await?; // registration time
    write_u64(write, 16).await?; // NAR size
    write_u64(write, 0).await?; // not ultimate
    write_u64(write, 0).await?; // no signatures
    write_string(write, "").await?; // not content-addressed
    write_u64(write, 0).await?; // no repair
    write_u64(write, 1).await?; // skip signature checks (honoured for trusted users only)
    // The "NAR", framed: a string that is not the NAR magic, then the end frame.
    let mut not_a_nar = Vec::new();
    write_string(&mut not_a_nar, "not-a-nar").await?;
    write_u64(write, not_a_nar.len() as u64).await?;
    write.write_all(&not_a_nar).await?;
    write_u64(write, 0).await?;
    write.flush().await?;
    match read_log(read).await? {
        // "lacks a valid signature" (Nix 2.8), "lacks a signature by a trusted key" (later).
        Some(error) if error.contains("lacks a") && error.contains("signature") => Ok(false),
        Some(_) => Ok(true),
        None => Err(protocol(
            "the daemon accepted a path that is not a NAR; not probing further",
        )),
    }
}

fn protocol(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_owned())
}

/// Reads log frames until the operation ends: `None` when it ended normally
/// (STDERR_LAST), else the error message the daemon sent.
async fn read_log<R: AsyncRead + Unpin>(read: &mut R) -> std::io::Result<Option<String>> {
    loop {
        match read_u64(read).await? {
            STDERR_LAST => return Ok(None),
            STDERR_NEXT => {
                read_string(read).await?;
            }
            STDERR_ERROR => {
                // Since protocol 1.26: type, level, name, message, position, traces.
                read_string(read).await?;
                read_u64(read).await?;
                read_string(read).await?;
                let message = read_string(read).await?;
                return Ok(Some(message));
            }
            STDERR_START_ACTIVITY => {
                read_u64(read).await?; // id
                read_u64(read).await?; // level
                read_u64(read).await?; // type
                read_string(read).await?;
                read_fields(read).await?;
                read_u64(read).await?; // parent
            }
            STDERR_STOP_ACTIVITY => {
                read_u64(read).await?;
            }
            STDERR_RESULT => {
                read_u64(read).await?;
                read_u64(read).await?;
                read_fields(read).await?;
            }
            other => return Err(protocol(&format!("unexpected log frame {other:#x}"))),
        }
    }
}

async fn read_fields<R: AsyncRead + Unpin>(read: &mut R) -> std::io::Result<()> {
    let count = read_u64(read).await?;
    for _ in 0..count.min(1024) {
        match read_u64(read).await? {
            0 => {
                read_u64(read).await?;
            }
            1 => {
                read_string(read).await?;
            }
            other => return Err(protocol(&format!("unknown log field type {other}"))),
        }
    }
    Ok(())
}

async fn read_u64<R: AsyncRead + Unpin>(read: &mut R) -> std::io::Result<u64> {
    let mut bytes = [0; 8];
    read.read_exact(&mut bytes).await?;
    Ok(u64::from_le_bytes(bytes))
}

async fn read_string<R: AsyncRead + Unpin>(read: &mut R) -> std::io::Result<String> {
    let len = read_u64(read).await?;
    if len > MAX_STRING {
        return Err(protocol("a string from the daemon is too long"));
    }
    let padded = len.div_ceil(8) * 8;
    let mut bytes = vec![0; usize::try_from(padded).map_err(|_| protocol("too long"))?];
    read.read_exact(&mut bytes).await?;
    bytes.truncate(usize::try_from(len).map_err(|_| protocol("too long"))?);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

async fn write_u64<W: AsyncWrite + Unpin>(write: &mut W, value: u64) -> std::io::Result<()> {
    write.write_all(&value.to_le_bytes()).await
}

async fn write_string<W: AsyncWrite + Unpin>(write: &mut W, text: &str) -> std::io::Result<()> {
    let len = text.len();
    write_u64(write, len as u64).await?;
    write.write_all(text.as_bytes()).await?;
    let pad = (8 - len % 8) % 8;
    write.write_all(&[0; 8][..pad]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn strings_are_length_prefixed_and_padded_to_eight() -> std::io::Result<()> {
        let mut bytes = Vec::new();
        write_string(&mut bytes, "abc").await?;
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[..8], &3u64.to_le_bytes());
        assert_eq!(&bytes[8..11], b"abc");
        assert_eq!(read_string(&mut &bytes[..]).await?, "abc");
        Ok(())
    }

    #[tokio::test]
    async fn an_error_frame_yields_its_message() -> std::io::Result<()> {
        let mut frames = Vec::new();
        write_u64(&mut frames, STDERR_NEXT).await?;
        write_string(&mut frames, "a log line").await?;
        write_u64(&mut frames, STDERR_ERROR).await?;
        write_string(&mut frames, "Error").await?;
        write_u64(&mut frames, 0).await?;
        write_string(&mut frames, "Error").await?;
        write_string(
            &mut frames,
            "cannot add path: it lacks a signature by a trusted key",
        )
        .await?;
        assert_eq!(
            read_log(&mut &frames[..]).await?.as_deref(),
            Some("cannot add path: it lacks a signature by a trusted key")
        );
        Ok(())
    }
}
