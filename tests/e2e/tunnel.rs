//! The main path: `nix copy` into a client socket arrives in the daemon behind the server.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::{ServerConfig, TempHome};
use n2p_testkit::nix::{
    NixDaemon, SourceStore, assert_copied, assert_copy_succeeds, nix_command, require_nix,
};
use n2p_testkit::proc::Signal;
use n2p_testkit::proc::run_bounded;
use n2p_testkit::wait::{POLL_INTERVAL, time_until};

use crate::harness::N2P;

/// Size of the one big file in the suite: large enough to need many QUIC flow-control
/// windows, small enough to stay quick in a debug build.
const BIG_FILE_LEN: usize = 64 << 20;

/// Enough files that a per-file cost in the tunnel would show.
const TREE_FILES: usize = 2_000;

#[test]
fn push_through_the_tunnel() {
    if !require_nix("push_through_the_tunnel") {
        return;
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let small = source.add_file("small.txt", b"a small file\n");
    let big = source.add_random_file("big.bin", BIG_FILE_LEN, 1);
    let tree = source.add_tree("tree", TREE_FILES);

    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(daemon.socket_path()));
    let client_dir = ScratchDir::new("client");
    let client_home = TempHome::new(N2P);
    let connecting = Instant::now();
    let mut client = client_home.client(&server.long_address, &client_dir.join("c.sock"));
    client.wait_until_listening();
    let connect_time = connecting.elapsed();
    // A measurement, not a target: start-up times belong to the benchmark.
    eprintln!("client start to listening socket (connected): {connect_time:?}");

    let mode = fs::metadata(&client.socket)
        .expect("the client's socket exists once it logged it")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the client's socket should be private to its user, has mode {:o}",
        mode & 0o777
    );

    for (what, path) in [
        ("small file", &small),
        ("64 MiB file", &big),
        ("tree", &tree),
    ] {
        let started = Instant::now();
        assert_copy_succeeds(&source, &client.store_url(), &[path]);
        eprintln!(
            "copied the {what} through the tunnel in {:?}",
            started.elapsed()
        );
        // Checked on the daemon directly, then through the tunnel.
        assert_copied(&source, &daemon.store_url(), path);
        assert_copied(&source, &client.store_url(), path);
    }

    // Offline with relays disabled, neither side has anything to warn about (the server's
    // warning about running as root, which CI does, is expected).
    for (who, log) in [
        ("server", server.process.log_text()),
        ("client", client.process.log_text()),
    ] {
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") && !l.contains("running as root"))
            .collect();
        assert!(
            warnings.is_empty(),
            "the {who} logged warnings: {warnings:#?}"
        );
    }

    client.stop(Signal::Term);
    assert!(
        fs::symlink_metadata(&client.socket).is_err(),
        "the client left its socket {} behind after SIGTERM",
        client.socket.display()
    );
}

/// Ten `nix copy` processes at once through one client socket: each gets its own stream on
/// the one QUIC connection, and every path arrives whole.
#[test]
fn ten_parallel_copies_through_one_socket() {
    if !require_nix("ten_parallel_copies_through_one_socket") {
        return;
    }
    const COPIES: u64 = 10;
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let paths: Vec<String> = (0..COPIES)
        .map(|i| source.add_random_file(&format!("p{i}.bin"), 4 << 20, 100 + i))
        .collect();
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(daemon.socket_path()));
    let client_dir = ScratchDir::new("client");
    let client_home = TempHome::new(N2P);
    let client = client_home.client(&server.long_address, &client_dir.join("c.sock"));
    client.wait_until_listening();
    let url = client.store_url();
    std::thread::scope(|scope| {
        for path in &paths {
            let (source, url) = (&source, &url);
            scope.spawn(move || assert_copy_succeeds(source, url, &[path]));
        }
    });
    for path in &paths {
        assert_copied(&source, &daemon.store_url(), path);
    }
}

/// At debug level (`-v`) the client logs its QUIC connection's own counters under the target
/// `n2p::stats`: after a 4 MiB push, an `idle` line of the dialing side that counts at least
/// those bytes sent and has the RTT, window and loss fields (what docs/BENCHMARKS.md reads).
#[test]
fn a_verbose_client_logs_its_connection_stats() {
    if !require_nix("a_verbose_client_logs_its_connection_stats") {
        return;
    }
    const LEN: usize = 4 << 20;
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let path = source.add_random_file("stats.bin", LEN, 7);
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(daemon.socket_path()));
    let client_dir = ScratchDir::new("client");
    let client_home = TempHome::new(N2P);
    let client = client_home.client_with(&server.long_address, &client_dir.join("c.sock"), &["-v"]);
    client.wait_until_listening();
    assert_copy_succeeds(&source, &client.store_url(), &[&path]);

    let sent_bytes = |line: &str| -> Option<usize> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("sent_bytes="))
            .and_then(|n| n.parse().ok())
    };
    let idle_line = || {
        client.process.log_text().lines().find_map(|l| {
            (l.contains("n2p::stats")
                && l.contains("quic stats: state=idle side=dial")
                && sent_bytes(l).is_some_and(|n| n >= LEN))
            .then(|| l.to_owned())
        })
    };
    let waited = time_until(Duration::from_secs(10), POLL_INTERVAL, || {
        idle_line().is_some()
    });
    let line = idle_line().unwrap_or_else(|| {
        panic!(
            "no idle stats line with {LEN} bytes sent (waited {waited:?}); client log:\n{}",
            client.process.log_text()
        )
    });
    for field in [
        "rtt_ms=",
        "cwnd=",
        "mtu=",
        "lost_packets=",
        "congestion_events=",
    ] {
        assert!(line.contains(field), "no {field} in {line}");
    }
}

/// A client running n2p's own congestion controller (`--congestion tolerant`, the sending
/// side of a push) carries a 16 MiB push whole; the server keeps the default.
#[test]
fn a_push_with_the_tolerant_controller_arrives_whole() {
    if !require_nix("a_push_with_the_tolerant_controller_arrives_whole") {
        return;
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let path = source.add_random_file("tolerant.bin", 16 << 20, 11);
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(daemon.socket_path()));
    let client_dir = ScratchDir::new("client");
    let client_home = TempHome::new(N2P);
    let client = client_home.client_with(
        &server.long_address,
        &client_dir.join("c.sock"),
        &["--congestion", "tolerant"],
    );
    client.wait_until_listening();
    assert_copy_succeeds(&source, &client.store_url(), &[&path]);
    assert_copied(&source, &daemon.store_url(), &path);
}

/// The client records the server's daemon's handshake on the first Nix connection and
/// answers the next ones itself (`n2p_core::hello`): real Nix 2.8 takes those answers —
/// `nix store ping` reports the daemon's version each time, and a push and a path-info
/// query made on recorded handshakes work — while the recording is made once.
#[test]
fn nix_accepts_the_recorded_handshake() {
    if !require_nix("nix_accepts_the_recorded_handshake") {
        return;
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let path = source.add_file("hello.txt", b"answered from the recording\n");
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(daemon.socket_path()));
    let client_dir = ScratchDir::new("client");
    let client_home = TempHome::new(N2P);
    let client = client_home.client_with(&server.long_address, &client_dir.join("c.sock"), &["-v"]);
    client.wait_until_listening();
    let url = client.store_url();
    for round in 0..3 {
        let out = run_bounded(
            nix_command("nix").args(["store", "ping", "--store", &url]),
            Duration::from_secs(30),
            "nix store ping",
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.contains("Version: 2.8"),
            "ping {round} through the client: {said}"
        );
    }
    assert_copy_succeeds(&source, &url, &[&path]);
    assert_copied(&source, &daemon.store_url(), &path);
    assert_copied(&source, &url, &path);
    let log = client.process.log_text();
    let recorded = log
        .lines()
        .filter(|l| l.contains("recorded the peer daemon's handshake"))
        .count();
    assert_eq!(
        recorded, 1,
        "recordings made (expected one); client log:\n{log}"
    );
    assert!(
        !log.contains("answered the handshake differently"),
        "a recorded answer was refused; client log:\n{log}"
    );
}
