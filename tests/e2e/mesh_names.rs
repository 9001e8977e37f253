//! Peer names become file names, so hostile ones must not escape the peers directory. `n2p`
//! refuses unsafe names of its own (flag or config.toml); names arriving from forged nodes
//! in an open team are sanitised, and clashing ones made distinct, before any file appears.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use n2p_testkit::dir::ScratchDir;

use crate::harness::forge::Forgers;
use crate::harness::mesh::{CONVERGENCE_TIMEOUT, MeshPeer, TeamDir, TeamSpec};
use crate::harness::{mode_of, tree};

/// How quickly `n2p mesh join` must give up on a name it refuses.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// File names a path-traversing or hiding name could produce if it were used as is.
const ESCAPED_NAMES: [&str; 4] = ["x", "x.sock", ".hidden", ".hidden.sock"];

/// The paths below `root` named like [`ESCAPED_NAMES`] that are not directly inside a
/// peers dir (where `x.sock` is the right socket for a peer announcing `../../x`), plus those
/// right beside `root` that were not there `before` (a `../` too many would land there).
fn escaped_files(root: &Path, before: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let parent = root.parent().expect("the test root has a parent");
    let in_peers_dir =
        |path: &Path| path.parent().and_then(Path::file_name) == Some("peers".as_ref());
    let mut found: Vec<PathBuf> = tree(root)
        .into_iter()
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| ESCAPED_NAMES.iter().any(|escaped| name == *escaped))
                && !in_peers_dir(path)
        })
        .collect();
    found.extend(
        ESCAPED_NAMES
            .iter()
            .map(|name| parent.join(name))
            .filter(|path| fs::symlink_metadata(path).is_ok() && !before.contains(path)),
    );
    found
}

/// Which of [`ESCAPED_NAMES`] exist beside `root` already (not ours to blame).
fn existing_beside(root: &Path) -> BTreeSet<PathBuf> {
    let parent = root.parent().expect("the test root has a parent");
    ESCAPED_NAMES
        .iter()
        .map(|name| parent.join(name))
        .filter(|path| fs::symlink_metadata(path).is_ok())
        .collect()
}

#[test]
fn unsafe_names_of_its_own_are_refused_before_joining() {
    let root = ScratchDir::new("names");
    let before = existing_beside(root.path());
    let team = TeamDir::new();
    let team_file = team.write("team.toml", &TeamSpec::open());
    let peer = MeshPeer::new_in(root.path(), "unused");
    let config = peer.home.path().join("config.toml");

    for (how, name) in [
        ("--name", "../../x"),
        ("--name", ".hidden"),
        ("config.toml", "../../x"),
        ("config.toml", ".hidden"),
    ] {
        let mut command = peer.join_command(&team_file);
        if how == "--name" {
            command.args(["--name", name]);
            let _ = fs::remove_file(&config);
        } else {
            fs::write(&config, format!("name = {:?}\n", name)).expect("writing config.toml");
        }
        let started = Instant::now();
        let mut node = peer.spawn(command);
        let status = node.process.wait(REFUSAL_TIMEOUT);
        let stderr = node.process.log_text();
        eprintln!(
            "name {name:?} by {how}: exit {status} after {:?}",
            started.elapsed()
        );
        assert!(
            !status.success(),
            "n2p mesh join with the name {name:?} by {how} should fail; its stderr:\n{stderr}"
        );
        assert!(
            stderr.contains("invalid name") && stderr.contains(name),
            "n2p mesh join should say the name {name:?} (by {how}) is invalid; its stderr:\n{stderr}"
        );
        assert!(
            !peer.peers_dir().exists() || peer.peer_entries().is_empty(),
            "a refused node created {:?}",
            peer.peer_entries()
        );
    }
    let escaped = escaped_files(root.path(), &before);
    assert!(
        escaped.is_empty(),
        "files appeared outside any peers dir: {escaped:?}"
    );
}

#[test]
fn forged_names_are_sanitised_and_create_nothing_outside_the_peers_dir() {
    let root = ScratchDir::new("names");
    let before = existing_beside(root.path());
    let team = TeamDir::new();
    let team_file = team.write("team.toml", &TeamSpec::open());
    let alice = MeshPeer::new_in(root.path(), "alice");
    let bob = MeshPeer::new_in(root.path(), "bob");
    let alice_node = alice.join(&team_file, &[]);
    alice_node.wait_until_joined();
    let ticket = alice.invite();
    let _bob_node = bob.join(&team_file, &["--ticket", &ticket]);
    alice.wait_for_sockets(&["bob"], CONVERGENCE_TIMEOUT);

    // 64 bytes: the longest name an announcement may carry.
    let long = "y".repeat(64);
    let forgers = Forgers::join(
        root.path(),
        &team_file,
        &ticket,
        &["../../x", ".hidden", "bob", &long, "\n\u{1b}/"],
    );
    let impostor = &forgers.nodes[2];
    assert_eq!(impostor.name, "bob");
    // ../../x and .hidden lose their path and their dot; the impostor and the real bob both
    // get a suffix (neither may take the other's name); the long name is cut to 32
    // characters; a name with nothing usable in it becomes "peer".
    let bob_real = format!("bob-{}", bob.short_id());
    let bob_fake = format!("bob-{}", impostor.short_id());
    let cut = "y".repeat(32);
    let expected = ["x", "hidden", &bob_real, &bob_fake, &cut, "peer"];
    let took = alice.wait_for_sockets(&expected, CONVERGENCE_TIMEOUT);
    eprintln!("alice made sockets for the forged names within {took:?}: {expected:?}");
    // bob, too, is a name a forger wants: on his side only the impostor gets a suffix.
    bob.wait_for_sockets(
        &["alice", "x", "hidden", &bob_fake, &cut, "peer"],
        CONVERGENCE_TIMEOUT,
    );

    for peer in [&alice, &bob] {
        for name in peer.peer_entries() {
            let path = peer.peers_dir().join(&name);
            let meta = fs::symlink_metadata(&path).expect("reading a peer socket's metadata");
            assert!(
                meta.file_type().is_socket(),
                "{} is not a socket",
                path.display()
            );
            assert_eq!(
                mode_of(&path),
                0o600,
                "{} should be private",
                path.display()
            );
            assert!(
                !name.starts_with('.') && name.ends_with(".sock") && !name.contains(['/', '\n']),
                "unsafe socket name {name:?} in {}'s peers dir",
                peer.name
            );
        }
    }
    let escaped = escaped_files(root.path(), &before);
    assert!(
        escaped.is_empty(),
        "files appeared outside any peers dir: {escaped:?}"
    );
    let peers = alice.peers_json();
    for forger in &forgers.nodes {
        assert!(
            peers.iter().any(|peer| peer["id"] == forger.id.as_str()),
            "alice does not list the forger {:?}: {peers:#?}",
            forger.name
        );
    }

    // Once the impostor is gone, the real bob gets his plain name back, and the sockets of
    // the forged names go away with their nodes.
    drop(forgers);
    alice.wait_for_sockets(&["bob"], CONVERGENCE_TIMEOUT);
    let escaped = escaped_files(root.path(), &before);
    assert!(
        escaped.is_empty(),
        "files appeared outside any peers dir: {escaped:?}"
    );
}
