//! A client outlives its server: after the server restarts (same home, same port) the next
//! copy through the same client process must succeed at the first attempt.

use std::fs;
use std::time::Duration;

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::{ServerConfig, TempHome};
use n2p_testkit::nix::{
    NixDaemon, SourceStore, assert_copied, assert_copy_succeeds, assert_not_valid, nix_command,
    require_nix,
};
use n2p_testkit::proc::{Signal, run_bounded};

use crate::harness::N2P;

#[test]
fn client_recovers_when_the_server_restarts() {
    if !require_nix("client_recovers_when_the_server_restarts") {
        return;
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let before = source.add_file("before.txt", b"copied before the restart\n");
    let after = source.add_file("after.txt", b"copied after the restart\n");

    let server_home = TempHome::new(N2P);
    let config = ServerConfig::new(daemon.socket_path());
    let server = server_home.server(&config);
    let client_dir = ScratchDir::new("client");
    let client_home = TempHome::new(N2P);
    let mut client = client_home.client(&server.long_address, &client_dir.join("c.sock"));
    client.wait_until_listening();
    assert_copy_succeeds(&source, &client.store_url(), &[&before]);
    assert_copied(&source, &daemon.store_url(), &before);

    let first_address = server.long_address.clone();
    server.stop();
    // Kept running until the end of the test.
    let restarted = server_home.server(&config);
    eprintln!(
        "server restarted on {}; its address was {first_address}, is {}",
        config.bind, restarted.long_address
    );
    // No retry: the first copy after the new server is up must work.
    assert_copy_succeeds(&source, &client.store_url(), &[&after]);
    assert_copied(&source, &daemon.store_url(), &after);

    client.stop(Signal::Int);
    assert!(
        fs::symlink_metadata(&client.socket).is_err(),
        "the client left its socket {} behind after SIGINT",
        client.socket.display()
    );
}

/// A server that comes back on another port has a new long address: a client holding the
/// old one fails each Nix operation within a bound and logs that the address is stale; a
/// fresh client given the new one reaches it (same home: same identity and secret).
#[test]
fn a_server_restarted_on_a_new_port_is_reached_by_a_fresh_client() {
    if !require_nix("a_server_restarted_on_a_new_port_is_reached_by_a_fresh_client") {
        return;
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let before = source.add_file("before-move.txt", b"copied before the move\n");
    let after = source.add_file("after-move.txt", b"copied after the move\n");

    let server_home = TempHome::new(N2P);
    let first_config = ServerConfig::new(daemon.socket_path());
    let server = server_home.server(&first_config);
    let client_dir = ScratchDir::new("client");
    let first_home = TempHome::new(N2P);
    let first = first_home.client(&server.long_address, &client_dir.join("c1.sock"));
    first.wait_until_listening();
    assert_copy_succeeds(&source, &first.store_url(), &[&before]);
    let (old_long, old_short) = (server.long_address.clone(), server.short_address.clone());
    server.stop();

    let mut moved_config = ServerConfig::new(daemon.socket_path());
    while moved_config.bind == first_config.bind {
        moved_config = ServerConfig::new(daemon.socket_path());
    }
    let moved = server_home.server(&moved_config);
    assert_ne!(
        moved.long_address, old_long,
        "the long address names the port, so it must change with it"
    );
    assert_eq!(
        moved.short_address, old_short,
        "the short address (id and secret) must survive a move"
    );

    // The first client still holds the old address: every Nix operation through it fails
    // within a bound, and its log says why, for how long, and what to do.
    let mark = first.process.mark();
    for attempt in 0..2 {
        let output = run_bounded(
            nix_command("nix")
                .args(["copy", "--from", &source.url(), "--to", &first.store_url()])
                .arg(&after),
            STALE_FAILURE_BOUND,
            &format!("nix copy {attempt} through a client with a stale address"),
        );
        assert!(
            !output.status.success(),
            "a copy through a stale address succeeded"
        );
    }
    let line =
        first
            .process
            .wait_for_line_since(&mark, "cannot reach peer", Duration::from_secs(1));
    let server_id = server_home.id();
    assert!(
        line.contains(&format!("cannot reach peer {server_id} for "))
            && line.contains("this address is stale: get its current one"),
        "the stale client should say it cannot reach the server and why: {line}"
    );
    assert_not_valid(&daemon.store_url(), &after);

    let fresh_home = TempHome::new(N2P);
    let fresh = fresh_home.client(&moved.long_address, &client_dir.join("c2.sock"));
    fresh.wait_until_listening();
    assert_copy_succeeds(&source, &fresh.store_url(), &[&after]);
    assert_copied(&source, &daemon.store_url(), &after);
}

/// How long a Nix operation through a client with a stale address may take to fail: one
/// connection attempt (ended by QUIC's 4 s idle timeout), with slack for a loaded machine.
const STALE_FAILURE_BOUND: Duration = Duration::from_secs(15);
