//! Pulls: stock Nix reads a peer's store through the local binary-cache facade, with the
//! peer's signature. The server/client pair: `n2p server` in front of bob's daemon, `n2p
//! client --cache` on alice's side, alice's own nix-daemon as the destination.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Output;
use std::time::{Duration, Instant};

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::{ServerConfig, TempHome, last_word};
use n2p_testkit::net::free_tcp_port;
use n2p_testkit::nix::{
    NIX_COMMAND_TIMEOUT, NixDaemon, SourceStore, assert_copied, assert_copy_succeeds,
    assert_copy_unsigned_succeeds, assert_not_valid, nix_command, path_metadata, require_nix,
};
use n2p_testkit::proc::{Signal, expect_success, run_bounded};

use crate::harness::N2P;
use crate::harness::mesh::{MeshPeer, TeamDir, TeamSpec, wait_for_idle_close};

/// How long mesh nodes may take to see each other.
const PEERS_TIMEOUT: Duration = Duration::from_secs(30);

/// Nix options that keep a test from reading another run's narinfo cache (root's, shared).
const NO_NARINFO_CACHE: &str = "narinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0\n";

/// Longest a pull of the suite's biggest set of paths may take in a debug build.
const PULL_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a server may take to log its Nix key.
const LOG_TIMEOUT: Duration = Duration::from_secs(30);

/// A 404 for a narinfo must come within the facade's deadline (1 s) plus this.
const DEADLINE_SLACK: Duration = Duration::from_millis(700);

/// `--option` pairs for [`NO_NARINFO_CACHE`] on a nix command line.
fn no_cache_options(command: &mut std::process::Command) -> &mut std::process::Command {
    command.args([
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
        "--option",
        "narinfo-cache-positive-ttl",
        "0",
    ])
}

fn copy_from(url: &str, to: &str, paths: &[&str]) -> Output {
    let mut command = nix_command("nix");
    command.args(["copy", "--from", url, "--to", to]);
    no_cache_options(&mut command).args(paths);
    run_bounded(
        &mut command,
        PULL_TIMEOUT,
        &format!("nix copy --from {url}"),
    )
}

/// `nix-store --realise` through a daemon, with the daemon's own substituters and keys: the
/// kit's `substituters =` is left out, since a trusted client's settings override the
/// daemon's.
fn realise(store: &str, path: &str) -> Output {
    let mut command = nix_command("nix-store");
    command
        .env("NIX_CONFIG", "experimental-features = nix-command\n")
        .args(["--store", store, "--realise", path]);
    run_bounded(
        &mut command,
        PULL_TIMEOUT,
        &format!("nix-store --realise {path}"),
    )
}

/// A fresh Nix key pair: (secret key file, public key).
fn nix_key(dir: &ScratchDir, name: &str) -> (std::path::PathBuf, String) {
    let file = dir.join(&format!("{name}.key"));
    let secret = expect_success(
        &run_bounded(
            nix_command("nix").args(["key", "generate-secret", "--key-name", name]),
            NIX_COMMAND_TIMEOUT,
            "nix key generate-secret",
        ),
        "nix key generate-secret",
    );
    std::fs::write(&file, secret.trim()).expect("writing a key file");
    let public = n2p_nix::SecretKey::parse(secret.trim())
        .unwrap_or_else(|e| panic!("nix key generate-secret printed an unreadable key: {e}"))
        .public()
        .to_string();
    (file, public)
}

/// One HTTP/1.1 GET (or HEAD) on a fresh connection: (status, body, time taken).
fn http(method: &str, addr: SocketAddr, path: &str) -> (u16, Vec<u8>, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&reply);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {text:?}"));
    let body_at = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(reply.len());
    (status, reply[body_at..].to_vec(), elapsed)
}

/// A free loopback TCP address for a facade.
fn free_cache_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_tcp_port()))
}

fn hash_part(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
fn nix_copy_from_a_peer_url_keeps_hashes_references_and_signatures() {
    if !require_nix("nix_copy_from_a_peer_url_keeps_hashes_references_and_signatures") {
        return;
    }
    let keys = ScratchDir::new("keys");
    let (upstream_key, _) = nix_key(&keys, "upstream-1");
    let bob = NixDaemon::start();
    let source = SourceStore::new();
    let big = source.add_random_file("big.bin", 64 << 20, 21);
    let tree = source.add_tree("tree", 2_000);
    let c0 = source.add_file("c0", b"closure bottom\n");
    let c1 = source.add_text_with_references("c1", "middle", &[&c0]);
    let c2 = source.add_text_with_references("c2", "top", &[&c1]);
    assert_copy_succeeds(&source, &bob.store_url(), &[&big, &tree, &c2]);
    // An upstream signature in bob's store, to be passed through.
    expect_success(
        &run_bounded(
            nix_command("nix")
                .args(["store", "sign", "--store", &bob.store_url(), "--key-file"])
                .arg(&upstream_key)
                .arg(&c0),
            NIX_COMMAND_TIMEOUT,
            "nix store sign",
        ),
        "nix store sign",
    );

    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(bob.socket_path()));
    let bob_key = last_word(
        &server
            .process
            .wait_for_line("nix signing key:", LOG_TIMEOUT),
    );
    let alice = NixDaemon::start_with_config(&format!(
        "trusted-public-keys = {bob_key}\n{NO_NARINFO_CACHE}"
    ));
    let cache = free_cache_addr();
    let client_home = TempHome::new(N2P);
    let client_dir = ScratchDir::new("client");
    let client = client_home.client_with(
        &server.long_address,
        &client_dir.join("c.sock"),
        &["--cache", &cache.to_string()],
    );
    client.wait_until_listening();

    let url = format!("http://{cache}/peer/server");
    let started = Instant::now();
    let output = copy_from(&url, &alice.store_url(), &[&big, &tree, &c2]);
    expect_success(&output, "nix copy --from the facade");
    eprintln!(
        "pulled 64 MiB + 2,000 files + 3 paths in {:?}",
        started.elapsed()
    );

    let bob_key_name = bob_key.split(':').next().unwrap_or_default();
    for path in [&big, &tree, &c0, &c1, &c2] {
        let want = path_metadata(&bob.store_url(), path).expect("valid at bob");
        let got = path_metadata(&alice.store_url(), path)
            .unwrap_or_else(|| panic!("{path} is not valid at alice after the pull"));
        assert_eq!(
            (&got.nar_hash, got.nar_size, &got.references, &got.ca),
            (&want.nar_hash, want.nar_size, &want.references, &want.ca),
            "{path} differs between bob and alice"
        );
        assert!(
            got.signatures
                .iter()
                .any(|s| s.starts_with(&format!("{bob_key_name}:"))),
            "{path} at alice lacks bob's signature: {:?}",
            got.signatures
        );
        for sig in &want.signatures {
            assert!(
                got.signatures.contains(sig),
                "{path}: bob's store signature {sig} was not passed through: {:?}",
                got.signatures
            );
        }
    }
    let c0_sigs = path_metadata(&alice.store_url(), &c0)
        .expect("c0")
        .signatures;
    assert!(
        c0_sigs.iter().any(|s| s.starts_with("upstream-1:")),
        "the upstream signature of c0 was not passed through: {c0_sigs:?}"
    );
}

#[test]
fn substitution_realises_a_missing_path_from_the_peer_and_refuses_an_untrusted_one() {
    if !require_nix(
        "substitution_realises_a_missing_path_from_the_peer_and_refuses_an_untrusted_one",
    ) {
        return;
    }
    let keys = ScratchDir::new("keys");
    let (_, stranger_key) = nix_key(&keys, "stranger-1");
    let bob = NixDaemon::start();
    let source = SourceStore::new();
    let dep = source.add_file("dep", b"a dependency\n");
    let wanted = source.add_text_with_references("wanted", "wanted", &[&dep]);
    // Input-addressed and signed by nobody but bob's node (as it serves it): a
    // content-addressed path would be taken without any signature.
    let built = source.add_built_file("built", "only bob vouches for me");
    assert_copy_succeeds(&source, &bob.store_url(), &[&wanted]);
    assert_copy_unsigned_succeeds(&source, &bob.store_url(), &[&built]);
    assert!(
        path_metadata(&bob.store_url(), &built)
            .expect("built at bob")
            .ca
            .is_none(),
        "the built path must not be content-addressed"
    );

    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(bob.socket_path()));
    let bob_key = last_word(
        &server
            .process
            .wait_for_line("nix signing key:", LOG_TIMEOUT),
    );
    let cache = free_cache_addr();
    let client_home = TempHome::new(N2P);
    let client_dir = ScratchDir::new("client");
    let client = client_home.client_with(
        &server.long_address,
        &client_dir.join("c.sock"),
        &["--cache", &cache.to_string()],
    );
    client.wait_until_listening();

    // (b) alice trusts bob's key: her daemon substitutes the path and its reference.
    let alice = NixDaemon::start_with_config(&format!(
        "substituters = http://{cache}\ntrusted-public-keys = {bob_key}\n{NO_NARINFO_CACHE}"
    ));
    for path in [&wanted, &built] {
        let output = realise(&alice.store_url(), path);
        expect_success(&output, "nix-store --realise from the facade");
    }
    for path in [&dep, &wanted, &built] {
        let want = path_metadata(&bob.store_url(), path).expect("valid at bob");
        let got = path_metadata(&alice.store_url(), path)
            .unwrap_or_else(|| panic!("{path} was not substituted"));
        assert_eq!((got.nar_hash, got.nar_size), (want.nar_hash, want.nar_size));
    }

    // (c) carol trusts another key only: the same paths are refused, nothing lands.
    let carol = NixDaemon::start_with_config(&format!(
        "substituters = http://{cache}\ntrusted-public-keys = {stranger_key}\n{NO_NARINFO_CACHE}"
    ));
    let output = realise(&carol.store_url(), &built);
    assert!(
        !output.status.success(),
        "carol's daemon realised a path signed by no key it trusts"
    );
    assert_not_valid(&carol.store_url(), &built);
    let output = copy_from(&format!("http://{cache}"), &carol.store_url(), &[&built]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("signature"),
        "copying a path signed by no trusted key should fail on its signature: {stderr}"
    );
    assert_not_valid(&carol.store_url(), &built);
}

#[test]
fn narinfo_misses_and_unreachable_peers_are_quick_404s() {
    if !require_nix("narinfo_misses_and_unreachable_peers_are_quick_404s") {
        return;
    }
    let bob = NixDaemon::start();
    let source = SourceStore::new();
    let path = source.add_file("here", b"present\n");
    // Valid at bob but never asked for before the peer hangs: the facade keeps a peer's
    // narinfo hits for a few seconds (as Nix keeps them for a month), so the hanging and
    // absent peer are asked for a path it has not answered yet.
    let unasked = source.add_file("unasked", b"present, not asked yet\n");
    assert_copy_succeeds(&source, &bob.store_url(), &[&path, &unasked]);
    let server_home = TempHome::new(N2P);
    let mut server = server_home.server(&ServerConfig::new(bob.socket_path()));
    let cache = free_cache_addr();
    let client_home = TempHome::new(N2P);
    let client_dir = ScratchDir::new("client");
    let client = client_home.client_with(
        &server.long_address,
        &client_dir.join("c.sock"),
        &["--cache", &cache.to_string()],
    );
    client.wait_until_listening();

    let (status, body, _) = http("GET", cache, "/nix-cache-info");
    assert_eq!(status, 200);
    let info = String::from_utf8_lossy(&body);
    assert!(
        info.contains("StoreDir: /nix/store\n") && info.contains("WantMassQuery: 1\n"),
        "{info}"
    );
    let hit = format!("/{}.narinfo", hash_part(&path));
    let miss = format!("/{}.narinfo", "0".repeat(32));
    let (status, body, _) = http("GET", cache, &hit);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(&format!("StorePath: {path}\n")), "{text}");
    assert!(text.contains("Compression: none\n"), "{text}");
    assert!(text.contains("URL: nar/"), "{text}");
    let (status, _, _) = http("HEAD", cache, &hit);
    assert_eq!(status, 200);
    assert_eq!(http("GET", cache, &miss).0, 404);
    assert_eq!(http("GET", cache, "/peer/nobody/nix-cache-info").0, 200);
    assert_eq!(http("GET", cache, &format!("/peer/nobody{hit}")).0, 404);
    assert_eq!(http("GET", cache, "/not-a-hash.narinfo").0, 404);

    // Latency through the facade, new connection per request (a measurement, printed).
    let hits: Vec<Duration> = (0..100).map(|_| http("GET", cache, &hit).2).collect();
    let misses: Vec<Duration> = (0..100).map(|_| http("GET", cache, &miss).2).collect();
    eprintln!(
        "narinfo through the facade (debug build): hit median {:?}, miss median {:?}",
        median(hits),
        median(misses)
    );

    // The peer hangs: a 404 within the deadline, not a hang or a 5xx.
    let unasked = format!("/{}.narinfo", hash_part(&unasked));
    server.process.signal(Signal::Stop);
    for _ in 0..3 {
        let (status, _, took) = http("GET", cache, &unasked);
        assert_eq!(status, 404, "a hanging peer must give a 404");
        assert!(
            took < Duration::from_secs(1) + DEADLINE_SLACK,
            "the 404 took {took:?}"
        );
    }
    server.process.signal(Signal::Cont);
    // The peer is gone.
    server.process.kill();
    for _ in 0..3 {
        let (status, _, took) = http("GET", cache, &unasked);
        assert_eq!(status, 404, "an absent peer must give a 404");
        assert!(
            took < Duration::from_secs(1) + DEADLINE_SLACK,
            "the 404 took {took:?}"
        );
    }
}

#[test]
fn clients_the_server_refuses_get_no_cache() {
    if !require_nix("clients_the_server_refuses_get_no_cache") {
        return;
    }
    let bob = NixDaemon::start();
    let server_home = TempHome::new(N2P);
    let config = ServerConfig::new(bob.socket_path());
    let old = server_home.server(&config);
    let old_address = old.long_address.clone();
    old.stop();
    server_home.rotate_secret();
    let _server = server_home.server(&config);

    let cache = free_cache_addr();
    let client_home = TempHome::new(N2P);
    let client_dir = ScratchDir::new("client");
    let mut client = client_home.client_with(
        &old_address,
        &client_dir.join("c.sock"),
        &["--cache", &cache.to_string()],
    );
    let status = client.process.wait(Duration::from_secs(30));
    assert!(
        !status.success(),
        "a client with a rotated secret kept running"
    );
    assert!(
        TcpStream::connect(cache).is_err(),
        "the refused client left a binary cache listening"
    );
}

/// Starts a GET of `path` and reads its head and `first` body bytes; returns the stream, the
/// announced `Content-Length` and the bytes read so far.
fn http_start(addr: SocketAddr, path: &str, first: usize) -> (TcpStream, u64, usize) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .expect("reading the reply head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "GET {path}: {head}");
    let length: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no Content-Length in {head}"));
    let mut body = vec![0u8; first];
    stream
        .read_exact(&mut body)
        .expect("reading the first bytes");
    (stream, length, first)
}

/// The value of `key` in narinfo `text`.
fn narinfo_field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[test]
fn mesh_pulls_from_whoever_has_it_refuses_members_without_pull_and_survives_a_killed_peer() {
    if !require_nix(
        "mesh_pulls_from_whoever_has_it_refuses_members_without_pull_and_survives_a_killed_peer",
    ) {
        return;
    }
    let source = SourceStore::new();
    let shared = source.add_random_file("shared.bin", 64 << 20, 31);
    let only_carol = source.add_file("only-carol", b"carol alone has this\n");
    let only_bob = source.add_file("only-bob", b"bob alone has this\n");
    let pushed_by_carol = source.add_file("pushed-by-carol", b"carol may push\n");
    let alice = MeshPeer::with_daemon("alice");
    let bob = MeshPeer::with_daemon("bob");
    let carol = MeshPeer::with_daemon("carol");
    assert_copy_succeeds(&source, &bob.daemon().store_url(), &[&shared, &only_bob]);
    assert_copy_succeeds(
        &source,
        &carol.daemon().store_url(),
        &[&shared, &only_carol],
    );

    let team_dir = TeamDir::new();
    // alice may pull but not push, carol may push but not pull: the two rights are apart.
    let mut alice_member = alice.member();
    alice_member.push = false;
    let mut carol_member = carol.member();
    carol_member.pull = false;
    let team = team_dir.write(
        "team.toml",
        &TeamSpec::closed([alice_member.clone(), bob.member(), carol_member]),
    );
    // carol's own copy grants her `pull` (her node would not ask otherwise): the serving
    // node's copy is what counts.
    let carols_copy = team_dir.write(
        "carol.toml",
        &TeamSpec::closed([alice_member, bob.member(), carol.member()]),
    );
    let a = alice.join(&team, &[]);
    let mut b = bob.join(&team, &[]);
    let c = carol.join(&carols_copy, &[]);
    for node in [&a, &b, &c] {
        node.wait_until_joined();
    }
    carol.wait_for_sockets(&["alice", "bob"], PEERS_TIMEOUT);
    bob.wait_for_sockets(&["alice", "carol"], PEERS_TIMEOUT);
    // Without push, alice's node offers her no socket to anyone...
    alice
        .check_sockets(&[])
        .unwrap_or_else(|error| panic!("{error}"));
    // ...while carol, without pull, still pushes.
    assert_copy_succeeds(&source, &carol.socket_url("bob"), &[&pushed_by_carol]);
    assert_copied(&source, &bob.daemon().store_url(), &pushed_by_carol);

    // (g) A path only carol has: alice, without push, pulls it through her root URL,
    // signed by carol's node.
    let (status, body, _) = http(
        "GET",
        alice.cache,
        &format!("/{}.narinfo", hash_part(&only_carol)),
    );
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{text}");
    assert_eq!(narinfo_field(&text, "StorePath"), only_carol);
    assert!(text.contains("Sig: carol-n2p-1:"), "{text}");
    let output = copy_from(
        &format!("http://{}", alice.cache),
        &alice.daemon().store_url(),
        &[&only_carol],
    );
    expect_success(&output, "nix copy --from alice's facade");
    let want = path_metadata(&carol.daemon().store_url(), &only_carol).expect("at carol");
    let got = path_metadata(&alice.daemon().store_url(), &only_carol).expect("pulled");
    assert_eq!((got.nar_hash, got.nar_size), (want.nar_hash, want.nar_size));

    // (f) carol may not pull: bob refuses her before his store is touched, so her
    // facade has nothing, and bob says why.
    let mark = b.process.mark();
    let (status, _, _) = http(
        "GET",
        carol.cache,
        &format!("/{}.narinfo", hash_part(&only_bob)),
    );
    assert_eq!(status, 404, "a member without pull got a narinfo");
    b.process
        .wait_for_line_since(&mark, "refused store access", LOG_TIMEOUT);

    // (d) bob is killed while his NAR is on its way: the body ends short of its length.
    let (status, body, _) = http(
        "GET",
        alice.cache,
        &format!("/peer/bob/{}.narinfo", hash_part(&shared)),
    );
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{text}");
    let url = format!("/peer/bob/{}", narinfo_field(&text, "URL"));
    let (mut stream, length, mut read) = http_start(alice.cache, &url, 1 << 20);
    b.process.kill();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    read += rest.len();
    assert!(
        (read as u64) < length,
        "the NAR of a killed peer came whole ({read} of {length} bytes)"
    );
    // Nix, asked for bob's copy alone, fails and keeps nothing...
    let output = copy_from(
        &format!("http://{}/peer/bob", alice.cache),
        &alice.daemon().store_url(),
        &[&shared],
    );
    assert!(
        !output.status.success(),
        "nix copy from a dead peer succeeded"
    );
    assert_not_valid(&alice.daemon().store_url(), &shared);
    // ...and through the root it gets carol's copy of the same NAR.
    let output = copy_from(
        &format!("http://{}", alice.cache),
        &alice.daemon().store_url(),
        &[&shared],
    );
    expect_success(&output, "nix copy of the shared path after bob died");
    let want = path_metadata(&carol.daemon().store_url(), &shared).expect("at carol");
    let got = path_metadata(&alice.daemon().store_url(), &shared).expect("pulled");
    assert_eq!((got.nar_hash, got.nar_size), (want.nar_hash, want.nar_size));
}

#[test]
fn a_sighup_that_takes_pull_away_refuses_the_members_next_pull() {
    if !require_nix("a_sighup_that_takes_pull_away_refuses_the_members_next_pull") {
        return;
    }
    let source = SourceStore::new();
    let at_bob = source.add_file("at-bob", b"bob has this\n");
    let alice = MeshPeer::new("alice");
    let bob = MeshPeer::with_daemon("bob");
    assert_copy_succeeds(&source, &bob.daemon().store_url(), &[&at_bob]);

    let team_dir = TeamDir::new();
    let bobs_file = team_dir.write(
        "bob.toml",
        &TeamSpec::closed([alice.member(), bob.member()]),
    );
    let alices_file = team_dir.write(
        "alice.toml",
        &TeamSpec::closed([alice.member(), bob.member()]),
    );
    let a = alice.join(&alices_file, &[]);
    let b = bob.join(&bobs_file, &[]);
    for node in [&a, &b] {
        node.wait_until_joined();
    }
    alice.wait_for_sockets(&["bob"], PEERS_TIMEOUT);
    let narinfo = format!("/peer/bob/{}.narinfo", hash_part(&at_bob));
    let (status, body, _) = http("GET", alice.cache, &narinfo);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // bob's file now says alice may not pull; the node reloads it without a restart.
    let mut no_pull = alice.member();
    no_pull.pull = false;
    team_dir.write(
        "bob.toml",
        &TeamSpec::closed([no_pull.clone(), bob.member()]),
    );
    let mark = b.process.mark();
    b.process.signal(Signal::Hup);
    b.process
        .wait_for_line_since(&mark, "reloaded the team file", LOG_TIMEOUT);
    // alice's facade may repeat bob's narinfo from its few seconds of memory (what alice
    // was already told), but the NAR is bob's to give, and he refuses it at once.
    let nar_url = String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("URL: ").map(str::to_owned))
        .expect("a URL line in the narinfo");
    let (status, _, _) = http("GET", alice.cache, &format!("/peer/bob/{nar_url}"));
    assert_eq!(
        status, 404,
        "alice still pulls a NAR from bob after losing `pull`"
    );
    b.process
        .wait_for_line_since(&mark, "refused store access", LOG_TIMEOUT);

    // alice's own copy now says so too: her node stops asking and says why.
    team_dir.write("alice.toml", &TeamSpec::closed([no_pull, bob.member()]));
    let alice_mark = a.process.mark();
    a.process.signal(Signal::Hup);
    a.process
        .wait_for_line_since(&alice_mark, "gives me `pull = false`", LOG_TIMEOUT);
    let refusals = b.process.log_text().matches("refused store access").count();
    let (status, _, _) = http("GET", alice.cache, &narinfo);
    assert_eq!(status, 404);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        b.process.log_text().matches("refused store access").count(),
        refusals,
        "alice's node asked bob although her own team file denies her `pull`"
    );
}

/// The idle period the next test sets with `n2p mesh join --peer-idle-close-ms` (hidden; the
/// default is `n2p_core::idle::PEER_IDLE_CLOSE`, 60 s).
const FACADE_IDLE_CLOSE: Duration = Duration::from_secs(3);

/// How many store-protocol connections `peer` has open (either way), by its `n2p status
/// --json`.
fn store_connections(peer: &MeshPeer) -> Option<u64> {
    peer.status_json()["connections"]["other"].as_u64()
}

#[test]
fn a_facades_connections_close_when_idle_and_the_next_lookup_connects_again() {
    if !require_nix("a_facades_connections_close_when_idle_and_the_next_lookup_connects_again") {
        return;
    }
    let source = SourceStore::new();
    let first = source.add_file("asked-first", b"asked before the idle close\n");
    // Another path for the lookup after the close: the facade keeps its answers a while.
    let second = source.add_file("asked-after", b"asked after the idle close\n");
    let alice = MeshPeer::with_daemon("alice");
    let bob = MeshPeer::with_daemon("bob");
    assert_copy_succeeds(&source, &bob.daemon().store_url(), &[&first, &second]);
    let team_dir = TeamDir::new();
    let team = team_dir.write(
        "team.toml",
        &TeamSpec::closed([alice.member(), bob.member()]),
    );
    let idle_ms = FACADE_IDLE_CLOSE.as_millis().to_string();
    let nodes = [&alice, &bob].map(|peer| peer.join(&team, &["--peer-idle-close-ms", &idle_ms]));
    for node in &nodes {
        node.wait_until_joined();
    }
    alice.wait_for_sockets(&["bob"], PEERS_TIMEOUT);
    assert_eq!(
        store_connections(&alice),
        Some(0),
        "no lookup yet, so no store connection: {:#}",
        alice.status_json()
    );

    let (status, body, _) = http(
        "GET",
        alice.cache,
        &format!("/{}.narinfo", hash_part(&first)),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answered = Instant::now();
    assert_eq!(
        (store_connections(&alice), store_connections(&bob)),
        (Some(1), Some(1)),
        "the lookup should have opened one store connection, alice to bob: alice {:#}, bob {:#}",
        alice.status_json(),
        bob.status_json()
    );

    wait_for_idle_close(
        "alice's store connection to bob",
        [&alice, &bob],
        store_connections,
        FACADE_IDLE_CLOSE,
        answered,
    );

    let (status, body, _) = http(
        "GET",
        alice.cache,
        &format!("/{}.narinfo", hash_part(&second)),
    );
    assert_eq!(
        status,
        200,
        "the lookup after the idle close: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        store_connections(&alice),
        Some(1),
        "the lookup after the idle close should have connected again: {:#}",
        alice.status_json()
    );
}
