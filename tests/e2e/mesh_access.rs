//! Who gets in: identities outside a closed team get no socket anywhere and are refused; a
//! member without the right to push is refused at the daemon even with a doctored team
//! file; an open team admits anyone with the secret and no one without it; a recorded
//! announcement replayed to a freshly started node is refused; an identity outside the team
//! is refused at the handshake on every ALPN the node serves.

use std::time::{Duration, SystemTime};

use n2p_mesh::proto::announce::unix_ms;
use n2p_testkit::nix::{SourceStore, assert_copy_fails, assert_not_valid, require_nix};
use n2p_testkit::wait::assert_holds_for;

use crate::harness::mesh::{
    ANNOUNCE_INTERVAL, CONVERGENCE_TIMEOUT, MeshPeer, TeamDir, TeamSpec, alice_and_bob, peer_by_id,
};
use crate::harness::replay::Replayer;
use crate::harness::stranger;

/// How long the tests watch for something that must not happen (a socket for a node that
/// must get none) after everything that should happen did: a few announcement rounds.
const SETTLE: Duration = Duration::from_secs(3 * ANNOUNCE_INTERVAL.as_secs());

/// How long a node may take to log that it refused someone.
const REFUSAL_LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// Ok if `peer`'s running node does not list any of `ids`.
fn lists_none_of(peer: &MeshPeer, ids: &[&str]) -> Result<(), String> {
    let peers = peer.peers_json();
    match ids.iter().find(|id| peer_by_id(&peers, id).is_some()) {
        Some(id) => Err(format!("{} lists {id}: {peers:?}", peer.name)),
        None => Ok(()),
    }
}

#[test]
fn outsiders_of_a_closed_team_get_no_socket_and_are_refused() {
    let alice = MeshPeer::new("alice");
    let bob = MeshPeer::new("bob");
    // eve has the secret and the team file, but is not in it. trudy also added herself to
    // her own copy of the team file, so her node would make sockets for whatever it heard.
    let eve = MeshPeer::new("eve");
    let trudy = MeshPeer::new("trudy");
    let team = TeamDir::new();
    let team_file = team.write(
        "team.toml",
        &TeamSpec::closed([alice.member(), bob.member()]),
    );
    let doctored = team.write(
        "trudy.toml",
        &TeamSpec::closed([alice.member(), bob.member(), trudy.member()]),
    );

    let alice_node = alice.join(&team_file, &[]);
    let bob_node = bob.join(&team_file, &[]);
    let eve_node = eve.join(&team_file, &[]);
    let _trudy_node = trudy.join(&doctored, &[]);
    alice.wait_for_sockets(&["bob"], CONVERGENCE_TIMEOUT);
    bob.wait_for_sockets(&["alice"], CONVERGENCE_TIMEOUT);

    eve_node.process.wait_for_line(
        &format!("my id {} is not listed", eve.id),
        CONVERGENCE_TIMEOUT,
    );
    for (member, node) in [(&alice, &alice_node), (&bob, &bob_node)] {
        for outsider in [&eve, &trudy] {
            let line = node.process.wait_for_line(
                &format!("refused peer {}", outsider.id),
                REFUSAL_LOG_TIMEOUT,
            );
            eprintln!("{} refused {}: {line}", member.name, outsider.name);
        }
    }

    assert_holds_for(
        "no socket for or on the outsiders, and no member lists them",
        SETTLE,
        || {
            alice.check_sockets(&["bob"])?;
            bob.check_sockets(&["alice"])?;
            eve.check_sockets(&[])?;
            trudy.check_sockets(&[])?;
            lists_none_of(&alice, &[&eve.id, &trudy.id])?;
            lists_none_of(&bob, &[&eve.id, &trudy.id])
        },
    );
    let peers = trudy.peers_json();
    assert!(
        peers.is_empty(),
        "trudy should hear from no member, yet lists {peers:#?}"
    );
}

/// The running node's one authority, at the handshake: an identity outside the closed team
/// (that never even needs the secret) is turned away on gossip, daemon and store alike,
/// before any stream, and the node says whom it refused.
#[test]
fn an_outsider_is_refused_at_the_handshake_on_every_alpn() {
    let (alice, _bob, _team, team_file) = alice_and_bob();
    let alice_node = alice.join(&team_file, &[]);
    alice_node.wait_until_joined();
    let stranger_key = n2p_core::SecretKey::from_bytes(&[66; 32]);
    let stranger_id = stranger_key.public();
    let target = iroh::EndpointAddr::from_parts(
        alice.id.parse().expect("alice's id"),
        [iroh::TransportAddr::Ip(alice.bind)],
    );
    let alpns: [&[u8]; 4] = [
        iroh_gossip::net::GOSSIP_ALPN,
        n2p_mesh::node::CHECK_ALPN,
        n2p_core::daemon::DAEMON_ALPN,
        n2p_cache::proto::STORE_ALPN,
    ];
    let reasons = stranger::refusals(stranger_key, &target, &alpns);
    for reason in &reasons {
        assert_eq!(reason, "identity not allowed");
    }
    let refused = alice_node.process.wait_for_line(
        &format!("refused peer {stranger_id}: identity not allowed"),
        REFUSAL_LOG_TIMEOUT,
    );
    eprintln!("alice: {refused}");
}

#[test]
fn a_member_without_push_is_refused_at_the_daemon_even_with_a_doctored_team_file() {
    if !require_nix("a_member_without_push_is_refused_at_the_daemon_even_with_a_doctored_team_file")
    {
        return;
    }
    let alice = MeshPeer::with_daemon("alice");
    let mallory = MeshPeer::new("mallory");
    let team = TeamDir::new();
    let mut read_only = mallory.member();
    read_only.push = false;
    let team_file = team.write("team.toml", &TeamSpec::closed([alice.member(), read_only]));
    // mallory's own copy gives her the right to push, so her node offers her a socket.
    let doctored = team.write(
        "mallory.toml",
        &TeamSpec::closed([alice.member(), mallory.member()]),
    );
    let source = SourceStore::new();
    let path = source.add_file("unwanted.txt", b"must not reach alice\n");

    let alice_node = alice.join(&team_file, &[]);
    let mallory_node = mallory.join(&doctored, &[]);
    mallory.wait_for_sockets(&["alice"], CONVERGENCE_TIMEOUT);

    let mark = alice_node.process.mark();
    let stderr = assert_copy_fails(&source, &mallory.socket_url("alice"), &[&path]);
    eprintln!("mallory's push failed as it should; nix said:\n{stderr}");
    assert_not_valid(&alice.daemon().store_url(), &path);
    alice_node.process.wait_for_line_since(
        &mark,
        &format!("refused peer {}", mallory.id),
        REFUSAL_LOG_TIMEOUT,
    );
    // nix only sees the connection end; mallory's own node must say why.
    mallory_node.process.wait_for_line(
        &format!("peer {} refused access", alice.id),
        REFUSAL_LOG_TIMEOUT,
    );
}

#[test]
fn an_open_team_admits_anyone_with_the_secret_and_no_one_else() {
    let ann = MeshPeer::new("ann");
    let ben = MeshPeer::new("ben");
    let cal = MeshPeer::new("cal");
    let team = TeamDir::new();
    let team_file = team.write("team.toml", &TeamSpec::open());
    // ben reads the same secret from the environment.
    let env_team_file = team.write(
        "team-env.toml",
        &TeamSpec {
            secret_env: Some("N2P_E2E_TEAM_SECRET".to_owned()),
            ..TeamSpec::open()
        },
    );
    // cal has a secret of its own under the same topic name.
    let other_team = TeamDir::new();
    let wrong_secret = other_team.write("team.toml", &TeamSpec::open());

    let ann_node = ann.join(&team_file, &[]);
    ann_node.wait_until_joined();
    let ticket = ann.invite();
    let mut command = ben.join_command(&env_team_file);
    command
        .env("N2P_E2E_TEAM_SECRET", team.secret())
        .args(["--name", "ben", "--ticket", &ticket]);
    let _ben_node = ben.spawn(command);
    let cal_node = cal.join(&wrong_secret, &["--ticket", &ticket]);
    ann.wait_for_sockets(&["ben"], CONVERGENCE_TIMEOUT);
    ben.wait_for_sockets(&["ann"], CONVERGENCE_TIMEOUT);
    cal_node.wait_until_joined();

    let peers = ann.peers_json();
    let entry =
        peer_by_id(&peers, &ben.id).unwrap_or_else(|| panic!("ann does not list ben: {peers:#?}"));
    assert_eq!(entry["name"], "ben", "{entry:#}");
    assert_eq!(entry["member"], false, "{entry:#}");
    assert_eq!(ann.status_json()["open_team"], true);

    assert_holds_for(
        "no socket for or on the node with the wrong secret",
        SETTLE,
        || {
            ann.check_sockets(&["ben"])?;
            ben.check_sockets(&["ann"])?;
            cal.check_sockets(&[])?;
            lists_none_of(&ann, &[&cal.id])?;
            lists_none_of(&ben, &[&cal.id])
        },
    );
    let peers = cal.peers_json();
    assert!(
        peers.is_empty(),
        "cal, with the wrong secret, should hear from no one, yet lists {peers:#?}"
    );
}

/// A team member's announcement recorded a minute ago and replayed to a node that has just
/// started (so it remembers nothing of the sender) is refused as stale, and logged so; the
/// same member's fresh announcement, sent the same way, then makes its socket appear, so the
/// refusal is the freshness check, not a broken channel.
#[test]
fn a_recorded_announcement_replayed_to_a_fresh_node_is_refused() {
    let alice = MeshPeer::new("alice");
    let team = TeamDir::new();
    let team_file = team.write("team.toml", &TeamSpec::open());
    let alice_node = alice.join(&team_file, &[]);
    alice_node.wait_until_joined();
    let replayer = Replayer::join(&team_file, &alice.invite());

    let now = unix_ms(SystemTime::now());
    let recorded = replayer.record("ghost", now - 60_000);
    let mark = alice_node.process.mark();
    replayer.broadcast(recorded);
    let line = alice_node.process.wait_for_line_since(
        &mark,
        "dropped stale announcement from",
        REFUSAL_LOG_TIMEOUT,
    );
    assert!(
        line.contains("made 60 s before our clock (at most 30 s accepted)"),
        "{line}"
    );
    assert!(
        !alice.socket("ghost").exists(),
        "the replayed announcement made a socket"
    );

    replayer.broadcast(replayer.record("ghost", unix_ms(SystemTime::now())));
    alice.wait_for_sockets(&["ghost"], CONVERGENCE_TIMEOUT);
}
