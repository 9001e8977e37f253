//! The worker protocol's encoding: little-endian u64 integers, strings as a length, the bytes
//! and zero padding to a multiple of 8, lists as a count and the items. Every length read is
//! bounded, so garbage is refused before anything large is allocated.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::WorkerError;

/// Longest string accepted from a daemon (log lines and error messages included).
pub(crate) const MAX_STRING: u64 = 64 << 20;
/// Most items accepted in one list from a daemon.
pub(crate) const MAX_LIST: u64 = 1 << 20;

/// Reads a u64.
pub(crate) async fn read_u64<R: AsyncRead + Unpin>(from: &mut R) -> Result<u64, WorkerError> {
    Ok(from.read_u64_le().await?)
}

/// Reads a boolean (`what` names the field for the error); anything but 0 or 1 means the
/// two sides no longer agree on where they are in the stream.
pub(crate) async fn read_bool<R: AsyncRead + Unpin>(
    from: &mut R,
    what: &str,
) -> Result<bool, WorkerError> {
    match read_u64(from).await? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(WorkerError::Protocol(format!(
            "{what}: expected a boolean, got {other:#x}"
        ))),
    }
}

/// Reads a string's bytes (at most [`MAX_STRING`]) and checks its padding.
pub(crate) async fn read_bytes<R: AsyncRead + Unpin>(
    from: &mut R,
    what: &str,
) -> Result<Vec<u8>, WorkerError> {
    let len = read_u64(from).await?;
    if len > MAX_STRING {
        return Err(WorkerError::Protocol(format!(
            "{what}: a string of {len} bytes is over the {MAX_STRING}-byte limit"
        )));
    }
    // Grows as the bytes arrive instead of trusting the length with an allocation.
    let mut bytes = Vec::new();
    (&mut *from).take(len).read_to_end(&mut bytes).await?;
    if bytes.len() as u64 != len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    let mut padding = [0u8; 8];
    let pad = ((8 - len % 8) % 8) as usize;
    from.read_exact(&mut padding[..pad]).await?;
    if padding.iter().any(|&b| b != 0) {
        return Err(WorkerError::Protocol(format!(
            "{what}: non-zero padding after a string"
        )));
    }
    Ok(bytes)
}

/// Reads a UTF-8 string (store paths, hashes, signatures).
pub(crate) async fn read_string<R: AsyncRead + Unpin>(
    from: &mut R,
    what: &str,
) -> Result<String, WorkerError> {
    String::from_utf8(read_bytes(from, what).await?)
        .map_err(|_| WorkerError::Protocol(format!("{what}: not UTF-8")))
}

/// Reads text meant for people (log lines, error messages): invalid UTF-8 is replaced.
pub(crate) async fn read_text<R: AsyncRead + Unpin>(
    from: &mut R,
    what: &str,
) -> Result<String, WorkerError> {
    Ok(String::from_utf8_lossy(&read_bytes(from, what).await?).into_owned())
}

/// Reads a list's length (at most [`MAX_LIST`]).
pub(crate) async fn read_list_len<R: AsyncRead + Unpin>(
    from: &mut R,
    what: &str,
) -> Result<usize, WorkerError> {
    let len = read_u64(from).await?;
    if len > MAX_LIST {
        return Err(WorkerError::Protocol(format!(
            "{what}: a list of {len} items is over the {MAX_LIST}-item limit"
        )));
    }
    usize::try_from(len).map_err(|_| WorkerError::Protocol(format!("{what}: list too long")))
}

/// Reads a list of UTF-8 strings.
pub(crate) async fn read_strings<R: AsyncRead + Unpin>(
    from: &mut R,
    what: &str,
) -> Result<Vec<String>, WorkerError> {
    let len = read_list_len(from, what).await?;
    let mut items = Vec::with_capacity(len.min(1024));
    for _ in 0..len {
        items.push(read_string(from, what).await?);
    }
    Ok(items)
}

/// Writes a u64.
pub(crate) async fn write_u64<W: AsyncWrite + Unpin>(
    to: &mut W,
    value: u64,
) -> Result<(), WorkerError> {
    Ok(to.write_all(&value.to_le_bytes()).await?)
}

/// Writes a string with its length and padding.
pub(crate) async fn write_bytes<W: AsyncWrite + Unpin>(
    to: &mut W,
    bytes: &[u8],
) -> Result<(), WorkerError> {
    write_u64(to, bytes.len() as u64).await?;
    to.write_all(bytes).await?;
    let pad = (8 - bytes.len() % 8) % 8;
    Ok(to.write_all(&[0u8; 8][..pad]).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn encoded(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_bytes(&mut out, bytes)
            .await
            .expect("writing to a Vec");
        out
    }

    #[tokio::test]
    async fn strings_are_padded_to_eight_bytes() {
        assert_eq!(encoded(b"").await, [0u8; 8]);
        assert_eq!(encoded(b"abc").await, b"\x03\0\0\0\0\0\0\0abc\0\0\0\0\0");
        assert_eq!(encoded(b"12345678").await.len(), 16);
        let wire = encoded(b"abc").await;
        assert_eq!(
            read_bytes(&mut &wire[..], "t").await.expect("valid"),
            b"abc"
        );
    }

    #[tokio::test]
    async fn bad_strings_are_refused() {
        let mut wire = encoded(b"abc").await;
        wire[15] = 1;
        assert!(matches!(
            read_bytes(&mut &wire[..], "t").await,
            Err(WorkerError::Protocol(_))
        ));
        // Shorter than announced: an early end, not a success.
        let wire = encoded(b"abcdef").await;
        assert!(matches!(
            read_bytes(&mut &wire[..10], "t").await,
            Err(WorkerError::Io(_))
        ));
        // A huge length is refused before any allocation.
        let wire = u64::MAX.to_le_bytes();
        assert!(matches!(
            read_bytes(&mut &wire[..], "t").await,
            Err(WorkerError::Protocol(_))
        ));
        let wire = (MAX_LIST + 1).to_le_bytes();
        assert!(matches!(
            read_strings(&mut &wire[..], "t").await,
            Err(WorkerError::Protocol(_))
        ));
        let wire = 2u64.to_le_bytes();
        assert!(matches!(
            read_bool(&mut &wire[..], "t").await,
            Err(WorkerError::Protocol(_))
        ));
    }
}
