//! A minimal HTTP/1.1 client over a plain `TcpStream`, for talking to n2p's binary-cache
//! facade the way a test or a benchmark sees it: one request per connection, the whole reply
//! read, and how long that took. No HTTP library stands between the caller and the server.
//!
//! ```no_run
//! use std::time::Duration;
//! use n2p_testkit::http::request;
//!
//! let addr = "127.0.0.1:5496".parse().unwrap();
//! let reply = request("GET", addr, "/nix-cache-info", Duration::from_secs(5)).unwrap();
//! assert_eq!(reply.status, 200);
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::Failure;

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code of the status line.
    pub status: u16,
    /// The header lines after the status line, as `(lower-case name, value)`.
    pub headers: Headers,
    /// Everything after the header block (for `HEAD`, nothing).
    pub body: Vec<u8>,
    /// From before connecting to the end of the reply (the server closes the connection).
    pub elapsed: Duration,
}

/// Sends `method path` to `addr` on a new connection with `Connection: close` and reads the
/// whole reply; fails if connecting, sending or reading fails or takes longer than
/// `timeout` per step, or if the reply has no status line.
pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Reply, Failure> {
    let what = format!("{method} http://{addr}{path}");
    let fail = |step: &str, error: std::io::Error| Failure::new(format!("{what}: {step}: {error}"));
    let started = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail("connecting", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| fail("setting up the socket", e))?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| fail("sending", e))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| fail("reading the reply", e))?;
    let elapsed = started.elapsed();
    let (status, headers, body) = parse_reply(&raw)
        .ok_or_else(|| Failure::new(format!("{what}: not an HTTP reply: {:?}", lossy(&raw))))?;
    Ok(Reply {
        status,
        headers,
        body: body.to_vec(),
        elapsed,
    })
}

impl Reply {
    /// The value of header `name` (case-insensitive), if the reply has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Header lines as `(lower-case name, value)`.
pub type Headers = Vec<(String, String)>;

/// The status code, the headers and the body of a raw HTTP/1.x reply read to its end.
fn parse_reply(raw: &[u8]) -> Option<(u16, Headers, &[u8])> {
    let header_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..header_end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut words = lines.next()?.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = words.next()?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Some((status, headers, &raw[header_end + 4..]))
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_splits_into_status_headers_and_body() {
        let length = |n: &str| vec![("content-length".to_owned(), n.to_owned())];
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n";
        assert_eq!(parse_reply(raw), Some((404, length("3"), &b"no\n"[..])));
        let head = b"HTTP/1.1 200 OK\r\ncontent-length:9\r\n\r\n";
        assert_eq!(parse_reply(head), Some((200, length("9"), &b""[..])));
    }

    #[test]
    fn anything_else_is_no_reply() {
        assert_eq!(parse_reply(b""), None);
        assert_eq!(parse_reply(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_reply(b"HTTP/1.1 abc\r\n\r\n"), None);
    }
}
