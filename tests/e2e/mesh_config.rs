//! Starting `n2p mesh join` wrongly: a second node on the same home, leftovers of a crash in
//! the peers dir, team files with unknown keys or bad values, a secret others may read.
//! Each must fail fast with a message that names the problem, or clean up safely.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt, symlink};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use n2p_testkit::dir::ScratchDir;

use crate::harness::mesh::{CONVERGENCE_TIMEOUT, MeshPeer, TeamDir, TeamSpec, alice_and_bob};
use n2p_testkit::n2p::{COMMAND_TIMEOUT, n2p_command};
use n2p_testkit::proc::run_bounded;

use crate::harness::{N2P, mode_of};

/// How quickly `n2p mesh join` must give up on a setup it refuses.
const FAIL_FAST: Duration = Duration::from_secs(5);

/// Runs `n2p mesh join` for `peer` with `team` (and `extra` arguments), expects it to fail
/// within [`FAIL_FAST`] and returns its stderr.
fn join_fails(peer: &MeshPeer, team: &Path, extra: &[&str], what: &str) -> String {
    let started = Instant::now();
    let mut node = peer.join(team, extra);
    let status = node.process.wait(FAIL_FAST);
    let took = started.elapsed();
    let stderr = node.process.log_text();
    eprintln!("{what}: n2p mesh join exited {status} after {took:?}");
    assert!(
        !status.success(),
        "{what}: n2p mesh join should fail; its stderr:\n{stderr}"
    );
    stderr
}

#[test]
fn a_second_join_on_the_same_home_fails_fast_and_leaves_the_first_alone() {
    let (alice, bob, _team, team_file) = alice_and_bob();
    let mut alice_node = alice.join(&team_file, &[]);
    let _bob_node = bob.join(&team_file, &[]);
    alice.wait_for_sockets(&["bob"], CONVERGENCE_TIMEOUT);

    // Another port, so that only the home is shared.
    // The same port too: the home's lock must be what stops it, before any binding.
    let stderr = join_fails(&alice, &team_file, &[], "a second node on alice's home");
    assert!(
        stderr.contains("already running"),
        "the second join should say a node already runs on this home; its stderr:\n{stderr}"
    );

    assert!(alice_node.process.is_running(), "the first node died");
    alice
        .check_sockets(&["bob"])
        .unwrap_or_else(|error| panic!("the second join disturbed the first: {error}"));
    assert_eq!(alice.status_json()["name"], "alice");
}

#[test]
fn leftovers_of_a_crash_are_cleared_at_start_and_nothing_else_is_touched() {
    let (alice, bob, _team, team_file) = alice_and_bob();

    // What a crash leaves: sockets nobody listens on, one of them named like a live peer.
    // Also things that are not n2p's to remove: a file of the user's, and a link (named
    // like a socket) to a live socket outside the peers dir.
    let peers = alice.peers_dir();
    fs::create_dir(&peers).expect("creating alice's peers dir");
    fs::set_permissions(&peers, fs::Permissions::from_mode(0o700)).expect("chmod peers dir");
    for stale in ["ghost.sock", "bob.sock"] {
        drop(UnixListener::bind(peers.join(stale)).expect("binding a soon stale socket"));
    }
    fs::write(peers.join("notes.txt"), "mine\n").expect("writing a user file");
    let outside = ScratchDir::new("outside");
    let outside_socket = outside.join("live.sock");
    let _outside_listener = UnixListener::bind(&outside_socket).expect("binding a live socket");
    symlink(&outside_socket, peers.join("link.sock")).expect("making a symlink");

    let started = Instant::now();
    let alice_node = alice.join(&team_file, &[]);
    let _bob_node = bob.join(&team_file, &[]);
    alice_node.process.wait_for_line(
        &format!("peer bob ({}) is at", bob.short_id()),
        CONVERGENCE_TIMEOUT,
    );
    let took = started.elapsed();
    let found = alice.peer_entries();
    assert!(
        found
            .iter()
            .eq(["bob.sock", "link.sock", "notes.txt"].iter()),
        "alice's peers dir should hold bob's live socket, the user's file and link, and \
         nothing stale: {found:?}"
    );
    eprintln!("stale sockets cleared and bob's socket made within {took:?}");
    // The stale bob.sock refused connections; the new one accepts them.
    UnixStream::connect(peers.join("bob.sock")).expect("connecting to alice's new bob.sock");
    assert_eq!(mode_of(&peers), 0o700, "alice's peers dir changed mode");
    assert_eq!(
        fs::read_to_string(peers.join("notes.txt")).expect("reading the user file"),
        "mine\n"
    );
    let link = fs::symlink_metadata(peers.join("link.sock")).expect("the link");
    assert!(
        link.file_type().is_symlink(),
        "link.sock is no longer the user's link"
    );
    let target = fs::symlink_metadata(&outside_socket).expect("the outside socket");
    assert!(
        target.file_type().is_socket(),
        "the socket outside the peers dir was touched"
    );
}

#[test]
fn a_team_file_with_an_unknown_key_or_bad_value_fails_with_file_and_line() {
    let peer = MeshPeer::new("alice");
    let team = TeamDir::new();
    let good = TeamSpec::closed([peer.member()]).to_toml();

    // `expiry` instead of `expiry_secs`, on line 4 of the [mesh] table.
    let unknown = good.replacen("expiry_secs", "expiry", 1);
    let line = line_of(&unknown, "expiry =");
    let path = team.write_raw("unknown.toml", &unknown);
    let stderr = join_fails(&peer, &path, &[], "unknown key in [mesh]");
    assert_names_line(&stderr, &path, line, "expiry");

    // `pusher` instead of `push` in a member.
    let unknown = good.replacen("push =", "pusher =", 1);
    let line = line_of(&unknown, "pusher =");
    let path = team.write_raw("member.toml", &unknown);
    let stderr = join_fails(&peer, &path, &[], "unknown key in [[member]]");
    assert_names_line(&stderr, &path, line, "pusher");

    // An expiry below the minimum.
    let bad = good.replacen("expiry_secs = 3", "expiry_secs = 1", 1);
    let line = line_of(&bad, "expiry_secs =");
    let path = team.write_raw("expiry.toml", &bad);
    let stderr = join_fails(&peer, &path, &[], "expiry_secs out of range");
    assert_names_line(&stderr, &path, line, "expiry_secs");

    // An unknown key in the personal config file.
    let config = peer.home.path().join("config.toml");
    fs::write(&config, "share = true\nshar = false\n").expect("writing config.toml");
    let path = team.write_raw("team.toml", &good);
    let stderr = join_fails(&peer, &path, &[], "unknown key in config.toml");
    assert_names_line(&stderr, &config, 2, "shar");
}

#[test]
fn a_secret_file_others_may_read_is_refused_with_a_chmod_hint() {
    let peer = MeshPeer::new("alice");
    let team = TeamDir::new();
    let path = team.write("team.toml", &TeamSpec::closed([peer.member()]));
    let secret = team.secret_file();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let stderr = join_fails(&peer, &path, &[], "team secret with mode 0644");
    assert!(
        stderr.contains("chmod") && stderr.contains(&secret.display().to_string()),
        "a readable secret file should be refused with a chmod hint naming it; stderr:\n{stderr}"
    );
    assert!(
        !peer.peers_dir().exists(),
        "a node refused for its secret should create no peers dir"
    );
}

/// The 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
        + 1
}

/// Asserts that `stderr` points at `file:line:` and mentions `key`.
fn assert_names_line(stderr: &str, file: &Path, line: usize, key: &str) {
    let location = format!("{}:{line}:", file.display());
    assert!(
        stderr.contains(&location) && stderr.contains(key),
        "the error should name {location} and {key:?}; stderr:\n{stderr}"
    );
}

/// A peers directory (or home) the user made open to others is refused with a hint, and
/// left as it was: n2p never chmods what it did not create.
#[test]
fn a_directory_open_to_others_is_refused_and_left_alone() {
    let alice = MeshPeer::new("alice");
    let team = TeamDir::new();
    let team_file = team.write("team.toml", &TeamSpec::closed([alice.member()]));
    let peers = alice.peers_dir();
    fs::create_dir(&peers).expect("creating alice's peers dir");
    fs::set_permissions(&peers, fs::Permissions::from_mode(0o755)).expect("chmod peers dir");
    let output = run_bounded(
        alice.join_command(&team_file).args(["--name", "alice"]),
        COMMAND_TIMEOUT,
        "n2p mesh join with an open peers dir",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "n2p mesh join started: {stderr}");
    assert!(
        stderr.contains("open to other users")
            && stderr.contains(&format!("chmod 700 {}", peers.display())),
        "the refusal should say why and how to fix it: {stderr}"
    );
    assert_eq!(mode_of(&peers), 0o755, "the peers dir's mode was changed");
    assert!(
        !stderr.contains("Endpoint dropped"),
        "an early exit must close the endpoint properly: {stderr}"
    );

    // A shared home such as /tmp (sticky, world-writable): even `n2p id` refuses it and
    // keeps the sticky bit.
    let shared = ScratchDir::new("shared-home");
    fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o1777)).expect("chmod 1777");
    let output = run_bounded(
        n2p_command(Path::new(N2P))
            .arg("id")
            .env("N2P_HOME", shared.path()),
        COMMAND_TIMEOUT,
        "n2p id with a 1777 home",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "n2p id accepted a 1777 home: {stderr}"
    );
    assert!(stderr.contains("chmod 700"), "{stderr}");
    let mode = fs::metadata(shared.path())
        .expect("meta")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o1777, "the shared home's mode was changed");
}
