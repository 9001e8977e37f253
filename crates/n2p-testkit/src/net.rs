//! Free loopback ports, found by binding port 0.
//!
//! Another process could take such a port before the process under test binds it, but the
//! kernel hands out ports at random, so that is rare enough for tests and benchmarks.

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// A free UDP port on 127.0.0.1 (iroh speaks QUIC over UDP).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("binding a UDP socket to find a free port")
        .port()
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding a TCP socket to find a free port")
        .port()
}

/// A loopback address with a free UDP port, for n2p's `--bind`.
pub fn free_loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_udp_port()))
}
