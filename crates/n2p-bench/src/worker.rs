//! Just enough of the Nix worker protocol (client side) to time a new daemon connection
//! without a `nix` process around it: connect, handshake, one `IsValidPath`, close.
//!
//! ```ignore
//! let took = connect_and_query(Path::new("/run/d.sock"), "/nix/store/…-hello")?;
//! ```
//!
//! Integers are little-endian u64; strings are a length, the bytes and zero padding to 8.

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

const WORKER_MAGIC_1: u64 = 0x6e69_7863;
const WORKER_MAGIC_2: u64 = 0x6478_696f;
/// The version we speak: 1.34, what Nix 2.8 speaks (newer daemons use the lower one).
const CLIENT_VERSION: u64 = (1 << 8) | 34;
const STDERR_NEXT: u64 = 0x6f6c_6d67;
const STDERR_LAST: u64 = 0x616c_7473;
const STDERR_ERROR: u64 = 0x6370_7473;
const OP_IS_VALID_PATH: u64 = 1;
/// Longest string we accept from the daemon.
const MAX_STRING: u64 = 1 << 20;

/// Connects to the daemon socket at `socket`, does the handshake and asks whether `path` is
/// valid; returns how long all that took and the answer.
pub(crate) fn connect_and_query(socket: &Path, path: &str) -> io::Result<(Duration, bool)> {
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    handshake(&mut stream)?;
    write_u64(&mut stream, OP_IS_VALID_PATH)?;
    write_string(&mut stream, path.as_bytes())?;
    read_stderr_until_last(&mut stream)?;
    let valid = read_u64(&mut stream)? != 0;
    let took = started.elapsed();
    Ok((took, valid))
}

fn handshake(stream: &mut UnixStream) -> io::Result<()> {
    write_u64(stream, WORKER_MAGIC_1)?;
    if read_u64(stream)? != WORKER_MAGIC_2 {
        return Err(protocol_error("not a nix-daemon (wrong magic)"));
    }
    let daemon_version = read_u64(stream)?;
    if daemon_version >> 8 != 1 {
        return Err(protocol_error("unsupported daemon protocol major version"));
    }
    let minor = (daemon_version & 0xff).min(CLIENT_VERSION & 0xff);
    // Version, then (>= 1.14) no CPU affinity and (>= 1.11) no reserveSpace, in one write.
    let mut hello = Vec::with_capacity(24);
    hello.extend_from_slice(&CLIENT_VERSION.to_le_bytes());
    hello.extend_from_slice(&0u64.to_le_bytes());
    hello.extend_from_slice(&0u64.to_le_bytes());
    stream.write_all(&hello)?;
    if minor >= 33 {
        read_string(stream)?; // the daemon's Nix version
    }
    if minor >= 35 {
        read_u64(stream)?; // trust
    }
    read_stderr_until_last(stream)
}

fn read_stderr_until_last(stream: &mut UnixStream) -> io::Result<()> {
    loop {
        match read_u64(stream)? {
            STDERR_LAST => return Ok(()),
            STDERR_NEXT => {
                read_string(stream)?;
            }
            STDERR_ERROR => return Err(protocol_error("the daemon reported an error")),
            _ => return Err(protocol_error("unexpected message from the daemon")),
        }
    }
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn write_u64(w: &mut impl Write, n: u64) -> io::Result<()> {
    w.write_all(&n.to_le_bytes())
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    r.read_exact(&mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

/// The wire form of a string: length, bytes, zero padding to a multiple of 8.
fn encode_string(bytes: &[u8]) -> Vec<u8> {
    let padded = bytes.len().div_ceil(8) * 8;
    let mut out = Vec::with_capacity(8 + padded);
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
    out.resize(8 + padded, 0);
    out
}

fn write_string(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    w.write_all(&encode_string(bytes))
}

fn read_string(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let len = read_u64(r)?;
    if len > MAX_STRING {
        return Err(protocol_error("string too long"));
    }
    let padded = len.div_ceil(8) * 8;
    let mut buf = vec![0u8; padded as usize];
    r.read_exact(&mut buf)?;
    buf.truncate(len as usize);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_padded_to_eight_bytes() {
        let wire = encode_string(b"abc");
        assert_eq!(wire.len(), 16);
        assert_eq!(&wire[..8], &3u64.to_le_bytes());
        assert_eq!(&wire[8..11], b"abc");
        assert!(wire[11..].iter().all(|b| *b == 0));
        assert_eq!(encode_string(b"").len(), 8);
        assert_eq!(encode_string(b"12345678").len(), 16);
    }

    #[test]
    fn strings_read_back() -> io::Result<()> {
        let wire = encode_string(b"nix (Nix) 2.8.0");
        let got = read_string(&mut wire.as_slice())?;
        assert_eq!(got, b"nix (Nix) 2.8.0");
        Ok(())
    }
}
