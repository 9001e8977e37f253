//! `n2p doctor` against real nix-daemons (one that trusts the user running it, one that does
//! not, set through the daemon's `trusted-users`) and against broken set-ups, each of which
//! must fail the run with the fix named.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::{COMMAND_TIMEOUT, TempHome};
use n2p_testkit::nix::{NixDaemon, require_nix};
use n2p_testkit::proc::run_bounded;

use crate::harness::mesh::{MeshPeer, TeamDir, TeamSpec};

/// Runs `n2p doctor` in `home` with relays disabled and `args`; returns its output, printing
/// it.
fn doctor(home: &TempHome, args: &[&str]) -> Output {
    doctor_with_relay(home, "disabled", args)
}

/// Runs `n2p doctor --relay <relay>` in `home` with `args`; returns its output, printing it.
fn doctor_with_relay(home: &TempHome, relay: &str, args: &[&str]) -> Output {
    let output = run_bounded(
        home.command()
            .arg("doctor")
            .args(["--relay", relay])
            .args(args),
        COMMAND_TIMEOUT,
        "n2p doctor",
    );
    eprintln!(
        "n2p doctor {args:?} -> {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The name of the user running the tests, as `trusted-users` wants it.
fn me() -> String {
    let output = run_bounded(
        std::process::Command::new("id").arg("-un"),
        COMMAND_TIMEOUT,
        "id -un",
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A team with this node in it, and the arguments that point the doctor at it.
fn team_for(peer: &MeshPeer) -> (TeamDir, String) {
    let team = TeamDir::new();
    let file = team.write("team.toml", &TeamSpec::closed([peer.member()]));
    (team, file.to_string_lossy().into_owned())
}

/// `n2p doctor` for a node in a healthy team, against a testkit daemon whose nix.conf has
/// `daemon_config` added; returns whether it passed, and what it printed.
fn doctor_against(daemon_config: &str) -> (bool, String) {
    let daemon = NixDaemon::start_with_config(daemon_config);
    let peer = MeshPeer::new("alice");
    let (_team, team_file) = team_for(&peer);
    let socket = daemon.socket_path().to_string_lossy().into_owned();
    let output = doctor(
        &peer.home,
        &["--team", &team_file, "--daemon-socket", &socket],
    );
    (output.status.success(), stdout(&output))
}

#[test]
fn doctor_passes_and_reports_the_nix_version_for_an_untrusted_user() {
    if !require_nix("doctor_passes_and_reports_the_nix_version_for_an_untrusted_user") {
        return;
    }
    let (passed, text) = doctor_against("trusted-users = n2p-test-nobody");
    assert!(passed, "doctor should pass:\n{text}");
    assert!(text.contains("answers: Nix 2."), "{text}");
    assert!(
        text.contains("ok    trust: the daemon does not trust"),
        "{text}"
    );
    assert!(text.contains("ok    team secret"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
}

#[test]
fn doctor_warns_when_the_daemon_trusts_this_user() {
    if !require_nix("doctor_warns_when_the_daemon_trusts_this_user") {
        return;
    }
    let (passed, text) = doctor_against(&format!("trusted-users = {}", me()));
    assert!(passed, "a warning is not a failure:\n{text}");
    assert!(
        text.contains("warn  trust: the daemon lets") && text.contains("add unsigned paths"),
        "{text}"
    );
    assert!(text.contains("fix: run n2p as a user outside"), "{text}");
}

/// Asserts `output` failed and holds a FAIL line for `check` and a fix with `fix` in it.
fn assert_fails(output: &Output, check: &str, fix: &str) {
    let text = stdout(output);
    assert_eq!(output.status.code(), Some(1), "doctor should fail:\n{text}");
    let at = text
        .find(&format!("FAIL  {check}:"))
        .unwrap_or_else(|| panic!("no FAIL line for {check}:\n{text}"));
    let rest = &text[at..];
    let fix_line = rest
        .lines()
        .nth(1)
        .filter(|l| l.trim_start().starts_with("fix:"))
        .unwrap_or_else(|| panic!("no fix after the {check} failure:\n{text}"));
    assert!(
        fix_line.contains(fix),
        "{check}: the fix should say {fix:?}:\n{text}"
    );
}

#[test]
fn doctor_fails_on_broken_setups_and_names_the_fix() {
    let peer = MeshPeer::new("alice");
    let (team, team_file) = team_for(&peer);
    let scratch = ScratchDir::new("doctor");

    // No daemon behind the socket.
    let missing = scratch.join("no-daemon.sock");
    let output = doctor(
        &peer.home,
        &[
            "--team",
            &team_file,
            "--daemon-socket",
            &missing.to_string_lossy(),
        ],
    );
    assert_fails(&output, "nix-daemon", "start the nix-daemon");

    // A team secret others may read.
    fs::set_permissions(team.secret_file(), fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = doctor(&peer.home, &["--team", &team_file]);
    assert_fails(&output, "team secret", "");
    assert!(stdout(&output).contains("chmod 600"), "{}", stdout(&output));
    fs::set_permissions(team.secret_file(), fs::Permissions::from_mode(0o600)).expect("chmod");

    // A group peers dir that is not 0750: refused, and left as it is.
    let peers = scratch.join("peers");
    fs::create_dir(&peers).expect("mkdir");
    fs::set_permissions(&peers, fs::Permissions::from_mode(0o755)).expect("chmod");
    // SAFETY: getegid has no preconditions and cannot fail.
    let gid = unsafe { libc::getegid() }.to_string();
    let output = doctor(
        &peer.home,
        &[
            "--team",
            &team_file,
            "--peers-dir",
            &peers.to_string_lossy(),
            "--peers-group",
            &gid,
        ],
    );
    assert_fails(&output, "peers dir", "chmod 750");
    assert_eq!(
        fs::metadata(&peers).expect("meta").permissions().mode() & 0o777,
        0o755
    );

    // A home open to others.
    let home = peer.home.path();
    let before = fs::metadata(home).expect("meta").permissions().mode();
    fs::set_permissions(home, fs::Permissions::from_mode(0o755)).expect("chmod");
    let output = doctor(&peer.home, &["--team", &team_file]);
    assert_fails(&output, "home", "chmod 700");
    fs::set_permissions(home, fs::Permissions::from_mode(before)).expect("chmod back");

    // A team file that does not parse.
    let bad = team.write_raw(
        "bad.toml",
        "[mesh]\nsecret_file = \"team.secret\"\nbogus = 1\n",
    );
    let output = doctor(&peer.home, &["--team", &bad.to_string_lossy()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  team:") && text.contains("bogus"),
        "{text}"
    );
}

#[test]
fn doctor_finds_a_running_node_by_its_lock_and_warns_of_an_unreachable_relay() {
    let test = "doctor_finds_a_running_node_by_its_lock_and_warns_of_an_unreachable_relay";
    if !require_nix(test) {
        return;
    }
    let daemon = NixDaemon::start();
    let socket = daemon.socket_path().to_string_lossy().into_owned();
    let peer = MeshPeer::new("alice");
    let (_team, team_file) = team_for(&peer);
    let args = [
        "--team",
        team_file.as_str(),
        "--daemon-socket",
        socket.as_str(),
    ];

    // A relay nobody answers: a warning that says offline is fine, not a failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let relay = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let output = doctor_with_relay(&peer.home, &relay, &args);
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "a warning is not a failure:\n{text}"
    );
    assert!(
        text.contains("warn  relay: none of http://127.0.0.1:") && text.contains("(offline?)"),
        "{text}"
    );
    assert!(text.contains("fix: fine on a LAN or offline"), "{text}");
    // The store directory as it is on this machine, and the clock.
    let store = std::env::var("NIX_STORE_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/nix/store".to_owned());
    let store_line = if Path::new(&store).is_dir() {
        format!("ok    store: {store} is here")
    } else {
        format!("warn  store: {store} does not exist on this machine")
    };
    assert!(text.contains(&store_line), "{text}");
    assert!(text.contains("ok    clock: plausible"), "{text}");
    assert!(
        text.contains("ok    node: none found: nothing answers at"),
        "{text}"
    );

    // `n2p server` takes the same lock and has no control socket: named, not a warning.
    {
        let mut command = peer.home.command();
        command
            .args(["--relay", "disabled", "--bind", "127.0.0.1:0", "server"])
            .args(["--daemon-socket", socket.as_str()]);
        let mut server = n2p_testkit::proc::Process::spawn("server", &mut command);
        server.wait_for_line("node id", COMMAND_TIMEOUT);
        let output = doctor(&peer.home, &args);
        let text = stdout(&output);
        assert!(output.status.success(), "{text}");
        assert!(
            text.contains(&format!(
                "ok    node: `n2p server` (pid {}) runs on this home",
                server.pid()
            )),
            "{text}"
        );
        server.stop(std::time::Duration::from_secs(5));
    }

    // A node on this home with its control socket elsewhere (as the system unit has it):
    // found by the home's lock, and doctor says where to ask.
    let scratch = ScratchDir::new("doctor-node");
    let control = scratch.join("control.sock").to_string_lossy().into_owned();
    let node = peer.join(Path::new(&team_file), &["--control-socket", &control]);
    node.wait_until_joined();
    let pid = node.process.pid();
    let output = doctor(&peer.home, &args);
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "a warning is not a failure:\n{text}"
    );
    assert!(
        text.contains(&format!(
            "warn  node: a node (pid {pid}) runs on this home but does not answer at"
        )),
        "{text}"
    );
    assert!(
        text.contains("fix: give doctor the node's own --control-socket"),
        "{text}"
    );

    // Asked at its own control socket, it answers.
    let mut with_control = args.to_vec();
    with_control.extend(["--control-socket", control.as_str()]);
    let output = doctor(&peer.home, &with_control);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "ok    node: running as alice in topic 'e2e', 0 live peer(s) (pid {pid})"
        )),
        "{text}"
    );
}
