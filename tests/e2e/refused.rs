//! Clients the server must turn away: not on its allow list, or holding an address whose
//! secret was rotated. Nothing they send may reach the daemon.

use std::time::Duration;

use n2p_core::SecretKey;
use n2p_core::address::ServerAddress;
use n2p_core::daemon::DAEMON_ALPN;
use n2p_core::endpoint::{EndpointOptions, bind_endpoint};
use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::{Client, Server, ServerConfig, TempHome, last_word};
use n2p_testkit::nix::{
    NixDaemon, SourceStore, assert_copied, assert_copy_fails, assert_copy_succeeds,
    assert_not_valid, require_nix,
};
use n2p_testkit::proc::Signal;

use crate::harness::N2P;
use crate::harness::stranger;

/// How long the server may take to log the refusal once the client's copy failed.
const REFUSAL_LOG_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn refuses_a_client_not_on_the_allow_list() {
    if !require_nix("refuses_a_client_not_on_the_allow_list") {
        return;
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let path = source.add_file("secret.txt", b"must not arrive\n");

    let someone_else = TempHome::new(N2P).id();
    let mut config = ServerConfig::new(daemon.socket_path());
    config.allow.push(someone_else);
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&config);

    let client_home = TempHome::new(N2P);
    // Before the client starts: both would create the home's key at once otherwise.
    let client_id = client_home.id();
    let client_dir = ScratchDir::new("client");
    let client = client_home.client(&server.long_address, &client_dir.join("c.sock"));
    assert_refused(&daemon, &source, &path, &server, &client, &client_id);
}

#[test]
fn refuses_an_address_from_before_rotate_secret() {
    if !require_nix("refuses_an_address_from_before_rotate_secret") {
        return;
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let path = source.add_file("secret.txt", b"must not arrive\n");

    let server_home = TempHome::new(N2P);
    // The same port throughout, so the old address still points at the new server.
    let config = ServerConfig::new(daemon.socket_path());
    let old = server_home.server(&config);
    let (old_long, old_short) = (old.long_address.clone(), old.short_address.clone());
    old.stop();

    server_home.rotate_secret();
    let server = server_home.server(&config);
    assert_ne!(
        server.long_address, old_long,
        "rotate-secret should change the long address"
    );
    assert_ne!(
        server.short_address, old_short,
        "rotate-secret should change the short address"
    );

    let client_home = TempHome::new(N2P);
    // Before the client starts: both would create the home's key at once otherwise.
    let client_id = client_home.id();
    let client_dir = ScratchDir::new("client");
    let client = client_home.client(&old_long, &client_dir.join("c.sock"));
    assert_refused(&daemon, &source, &path, &server, &client, &client_id);
}

/// The server's one authority (its secret and `--allow`) at the handshake: an identity
/// outside `--allow` is turned away on the daemon and the store ALPN alike, before any
/// stream and without needing the secret, and the server names it.
#[test]
fn a_client_outside_allow_is_refused_at_the_handshake_on_every_alpn() {
    let server_home = TempHome::new(N2P);
    let mut config = ServerConfig::new(&ScratchDir::new("no-daemon").join("socket"));
    config.allow.push(TempHome::new(N2P).id());
    let server = server_home.server(&config);
    let address: ServerAddress = server.long_address.parse().expect("the server's address");
    let stranger_key = SecretKey::from_bytes(&[67; 32]);
    let stranger_id = stranger_key.public();
    let alpns: [&[u8]; 2] = [DAEMON_ALPN, n2p_cache::proto::STORE_ALPN];
    for reason in stranger::refusals(stranger_key, &address.endpoint, &alpns) {
        assert_eq!(reason, "identity not allowed");
    }
    server.process.wait_for_line(
        &format!("refused peer {stranger_id}: identity not allowed"),
        REFUSAL_LOG_TIMEOUT,
    );
}

/// Checks everything a refusal means: the client's copy fails, the path did not reach the
/// daemon, and the server logged `refused` with the client's id.
///
/// A refused client may stay up (nix then sees its connection closed) or give up at once
/// (nix then finds no socket): the copy must fail either way.
fn assert_refused(
    daemon: &NixDaemon,
    source: &SourceStore,
    path: &str,
    server: &Server,
    client: &Client,
    client_id: &str,
) {
    if !client.wait_until_listening_or_exit() {
        eprintln!("the refused client exited without listening");
    }
    assert_copy_fails(source, &client.store_url(), &[path]);
    assert_not_valid(&daemon.store_url(), path);
    let line = server.process.wait_for_line("refused", REFUSAL_LOG_TIMEOUT);
    assert!(
        line.contains(client_id),
        "the server's refusal line should name the client {client_id}: {line:?}"
    );
}

/// `n2p client` checks its access before it says it is ready: a client outside `--allow`
/// and one holding an address from before `rotate-secret` both exit non-zero, without a
/// socket, saying which refusal it was. The server's daemon is never contacted.
#[test]
fn a_refused_client_exits_at_start_and_says_why() {
    let dir = ScratchDir::new("refused-at-start");
    // No daemon listens here: a refused client must not need one.
    let daemon_socket = dir.join("no-daemon.sock");

    let mut config = ServerConfig::new(&daemon_socket);
    config.allow.push(TempHome::new(N2P).id());
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&config);
    let client_home = TempHome::new(N2P);
    let mut client = client_home.client(&server.long_address, &dir.join("a.sock"));
    let status = client.process.wait(n2p_testkit::n2p::STARTUP_TIMEOUT);
    let log = client.process.log_text();
    assert!(!status.success(), "a client outside --allow started: {log}");
    assert!(
        log.contains("the server did not accept this client")
            && log.contains("identity not allowed"),
        "the client should say it is not allowed: {log}"
    );
    assert!(!client.socket.exists(), "a refused client left its socket");
    server.stop();

    let rotated_home = TempHome::new(N2P);
    let config = ServerConfig::new(&daemon_socket);
    let old = rotated_home.server(&config);
    let old_address = old.long_address.clone();
    old.stop();
    rotated_home.rotate_secret();
    let server = rotated_home.server(&config);
    let client_home = TempHome::new(N2P);
    let mut client = client_home.client(&old_address, &dir.join("b.sock"));
    let status = client.process.wait(n2p_testkit::n2p::STARTUP_TIMEOUT);
    let log = client.process.log_text();
    assert!(
        !status.success(),
        "a client with a rotated secret started: {log}"
    );
    assert!(
        log.contains("wrong access secret"),
        "the client should say its secret is wrong: {log}"
    );
    assert!(!client.socket.exists(), "a refused client left its socket");
    assert!(
        !server
            .process
            .log_text()
            .contains("cannot connect to the nix-daemon"),
        "a refused client made the server contact its daemon"
    );
}

/// `n2p rotate-secret` and SIGHUP take effect in a running server, without a restart: the
/// server logs new addresses, a client holding an old one is refused on its next stream
/// (nothing reaches the daemon), and a client given the new one pushes.
#[test]
fn rotate_secret_takes_effect_in_a_running_server_on_sighup() {
    if !require_nix("rotate_secret_takes_effect_in_a_running_server_on_sighup") {
        return;
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let before = source.add_file("before.txt", b"pushed with the old secret\n");
    let refused = source.add_file("refused.txt", b"must not arrive\n");
    let after = source.add_file("after.txt", b"pushed with the new secret\n");

    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(daemon.socket_path()));
    let client_dir = ScratchDir::new("client");
    let old_home = TempHome::new(N2P);
    let old_client = old_home.client(&server.long_address, &client_dir.join("old.sock"));
    old_client.wait_until_listening();
    assert_copy_succeeds(&source, &old_client.store_url(), &[&before]);

    server_home.rotate_secret();
    let mark = server.process.mark();
    server.process.signal(Signal::Hup);
    server.process.wait_for_line_since(
        &mark,
        "SIGHUP: new access secret loaded",
        REFUSAL_LOG_TIMEOUT,
    );
    let new_long = last_word(&server.process.wait_for_line_since(
        &mark,
        "long address:",
        REFUSAL_LOG_TIMEOUT,
    ));
    assert_ne!(
        new_long, server.long_address,
        "SIGHUP printed the old address"
    );

    assert_copy_fails(&source, &old_client.store_url(), &[&refused]);
    assert_not_valid(&daemon.store_url(), &refused);
    server.process.wait_for_line_since(
        &mark,
        &format!("refused peer {}: wrong access secret", old_home.id()),
        REFUSAL_LOG_TIMEOUT,
    );

    let new_home = TempHome::new(N2P);
    let new_client = new_home.client(&new_long, &client_dir.join("new.sock"));
    new_client.wait_until_listening();
    assert_copy_succeeds(&source, &new_client.store_url(), &[&after]);
    assert_copied(&source, &daemon.store_url(), &after);
}

/// An iroh node that connects to `n2p server` on the daemon ALPN and never proves access
/// (it opens no stream) is cut off at the proof deadline (5 s) with a refusal, and the
/// server logs that once; a real client is served all the while.
#[test]
fn a_connection_that_never_proves_access_is_closed_at_the_deadline() {
    if !require_nix("a_connection_that_never_proves_access_is_closed_at_the_deadline") {
        return;
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let path = source.add_file("served.txt", b"served while a stranger waits\n");
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(daemon.socket_path()));
    let address: ServerAddress = server.long_address.parse().expect("the server's address");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (stranger_id, waited, reason) = runtime.block_on(async {
        let key = SecretKey::from_bytes(&[77; 32]);
        let endpoint = bind_endpoint(key, Vec::new(), &EndpointOptions::loopback())
            .await
            .expect("binding the stranger's endpoint");
        let conn = endpoint
            .connect(address.endpoint.clone(), DAEMON_ALPN)
            .await
            .expect("the stranger connects (the handshake needs no secret)");
        let started = std::time::Instant::now();
        let reason = tokio::time::timeout(PROOF_DEADLINE_BOUND, conn.closed())
            .await
            .expect("the server did not close an unproven connection in time");
        let id = endpoint.id();
        endpoint.close().await;
        (id, started.elapsed(), reason.to_string())
    });
    eprintln!("MEASURED unproven connection closed after {waited:?}: {reason}");
    assert!(
        reason.contains("no access proof in time"),
        "the close should say why: {reason}"
    );
    let line = server.process.wait_for_line(
        &format!("refused peer {stranger_id}: no access proof within 5s of connecting"),
        REFUSAL_LOG_TIMEOUT,
    );
    assert_eq!(
        server.process.log_text().matches("no access proof").count(),
        1,
        "logged more than once: {line}"
    );

    let client_home = TempHome::new(N2P);
    let client_dir = ScratchDir::new("client");
    let client = client_home.client(&server.long_address, &client_dir.join("c.sock"));
    client.wait_until_listening();
    assert_copy_succeeds(&source, &client.store_url(), &[&path]);
}

/// The proof deadline (5 s) with slack for a loaded machine.
const PROOF_DEADLINE_BOUND: Duration = Duration::from_secs(15);
