//! The `n2p/store/1` protocol: a read-only view of a node's store, one QUIC bi stream per
//! request.
//!
//! A stream carries, from the client: the 32-byte [`n2p_core::access::AccessProof`] (as on
//! daemon streams), then one [`Request`] as a frame (a little-endian `u32` length, then
//! that many bytes of postcard). The server answers:
//!
//! - [`Request::NarInfos`]: one frame, a [`NarInfosReply`] with one `Option<WireInfo>` per
//!   hash part asked for, in order; then it finishes the stream.
//! - [`Request::Nar`]: one frame, a [`NarHeader`]; after [`NarHeader::Ok`] exactly
//!   `nar_size` raw NAR bytes follow, and the stream is finished only when the NAR was
//!   whole and its SHA-256 was the one asked for. Every other end resets the stream with
//!   [`NAR_ABORTED`], so a truncated NAR never looks complete (dropping an iroh
//!   `SendStream` would finish it).
//!
//! ```
//! use n2p_cache::proto::{Request, read_frame, write_frame};
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let mut wire = Vec::new();
//! let request = Request::NarInfos { hash_parts: vec!["x".repeat(32)] };
//! write_frame(&mut wire, &request).await?;
//! let back: Request = read_frame(&mut &wire[..]).await?;
//! assert_eq!(back, request);
//! # Ok::<(), n2p_cache::proto::FrameError>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use iroh::endpoint::VarInt;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// ALPN of the store protocol; a change that breaks compatibility gets a new version.
pub const STORE_ALPN: &[u8] = b"n2p/store/1";

/// The most hash parts one [`Request::NarInfos`] may ask for.
pub const MAX_HASH_PARTS: usize = 128;

/// The largest frame either side accepts. A narinfo reply of [`MAX_HASH_PARTS`] paths with
/// many references and signatures fits several times over.
pub const MAX_FRAME: usize = 4 << 20;

/// Stream reset code: the NAR (or the answer) could not be sent whole.
pub const NAR_ABORTED: VarInt = VarInt::from_u32(0x6e6172);

/// Stream reset code: the request was malformed or over a bound.
pub const BAD_REQUEST: VarInt = VarInt::from_u32(400);

/// Stream reset code: the peer's NAR slots all stayed taken for the server's
/// [`crate::server::StoreLimits::nar_slot_wait`]; ask another peer or later.
pub const BUSY: VarInt = VarInt::from_u32(503);

/// One request; the first and only frame the client sends on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The metadata of the valid paths with these hash parts (at most [`MAX_HASH_PARTS`]).
    NarInfos {
        /// 32-character nix32 hash parts.
        hash_parts: Vec<String>,
    },
    /// The NAR of `store_path`, only if its NAR hash is `nar_hash`.
    Nar {
        /// The path's basename.
        store_path: String,
        /// The SHA-256 the client expects.
        nar_hash: [u8; 32],
    },
}

/// A valid path's metadata as the serving node sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireInfo {
    /// The path's basename.
    pub store_path: String,
    /// The NAR's SHA-256.
    pub nar_hash: [u8; 32],
    /// The NAR's size in bytes.
    pub nar_size: u64,
    /// References, as basenames.
    pub references: Vec<String>,
    /// The deriver's basename, if known.
    pub deriver: Option<String>,
    /// Signatures (`name:base64`): the store's own, then the serving node's.
    pub sigs: Vec<String>,
    /// Content address, if any.
    pub ca: Option<String>,
}

/// The answer to [`Request::NarInfos`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarInfosReply {
    /// One entry per hash part asked for, `None` where the node has no such valid path.
    pub infos: Vec<Option<WireInfo>>,
}

/// The first frame of the answer to [`Request::Nar`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NarHeader {
    /// `nar_size` bytes of NAR follow.
    Ok {
        /// The NAR's size.
        nar_size: u64,
    },
    /// The path is not valid here.
    NotFound,
    /// The path is valid here with another NAR hash.
    HashMismatch,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream failed or ended inside a frame.
    #[error("store stream: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced more than [`MAX_FRAME`] bytes.
    #[error("store frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    /// The frame's bytes are not the message expected.
    #[error("malformed store frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Writes `message` as one frame (it does not flush or finish the stream).
pub async fn write_frame<W, T>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = postcard::to_stdvec(message)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len() as u64));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame and decodes it; a frame over [`MAX_FRAME`] is refused before its body
/// is read.
pub async fn read_frame<R, T>(reader: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len as u64));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(postcard::from_bytes(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn info() -> WireInfo {
        WireInfo {
            store_path: format!("{}-hello", "a".repeat(32)),
            nar_hash: [7; 32],
            nar_size: 1234,
            references: vec![format!("{}-dep", "b".repeat(32))],
            deriver: None,
            sigs: vec!["cache.example.org-1:AAAA".to_owned()],
            ca: Some("fixed:r:sha256:abc".to_owned()),
        }
    }

    #[tokio::test]
    async fn messages_round_trip_back_to_back() -> TestResult {
        let mut wire = Vec::new();
        let request = Request::Nar {
            store_path: info().store_path,
            nar_hash: [9; 32],
        };
        let reply = NarInfosReply {
            infos: vec![Some(info()), None],
        };
        write_frame(&mut wire, &request).await?;
        write_frame(&mut wire, &reply).await?;
        write_frame(&mut wire, &NarHeader::Ok { nar_size: 1 << 40 }).await?;
        wire.extend_from_slice(b"raw nar bytes");
        let mut reader = &wire[..];
        assert_eq!(read_frame::<_, Request>(&mut reader).await?, request);
        assert_eq!(read_frame::<_, NarInfosReply>(&mut reader).await?, reply);
        assert_eq!(
            read_frame::<_, NarHeader>(&mut reader).await?,
            NarHeader::Ok { nar_size: 1 << 40 }
        );
        // The frame reader takes nothing past its frame: the raw bytes are left.
        assert_eq!(reader, b"raw nar bytes");
        Ok(())
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_its_body() {
        let mut wire = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(&[0; 16]);
        let err = read_frame::<_, Request>(&mut &wire[..])
            .await
            .expect_err("oversized");
        assert!(matches!(err, FrameError::TooLarge(n) if n == MAX_FRAME as u64 + 1));
    }

    #[tokio::test]
    async fn a_cut_frame_is_an_io_error_not_a_message() -> TestResult {
        let mut wire = Vec::new();
        write_frame(
            &mut wire,
            &NarInfosReply {
                infos: vec![Some(info())],
            },
        )
        .await?;
        for cut in [0, 2, 4, wire.len() - 1] {
            let err = read_frame::<_, NarInfosReply>(&mut &wire[..cut])
                .await
                .expect_err("cut frame");
            assert!(matches!(err, FrameError::Io(_)), "cut at {cut}: {err}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let mut wire = 3u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = read_frame::<_, Request>(&mut &wire[..])
            .await
            .expect_err("garbage");
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    /// The wire bytes are pinned: a change to the message layout must change the ALPN.
    #[tokio::test]
    async fn wire_format_is_pinned() -> TestResult {
        let mut wire = Vec::new();
        write_frame(&mut wire, &NarHeader::Ok { nar_size: 300 }).await?;
        write_frame(&mut wire, &NarHeader::HashMismatch).await?;
        assert_eq!(wire, [3, 0, 0, 0, 0, 0xac, 0x02, 1, 0, 0, 0, 2]);
        assert_eq!(STORE_ALPN, b"n2p/store/1");
        Ok(())
    }
}
