//! `n2p mesh join` as a system service: peer sockets shared with a Unix group, the team
//! secret from a systemd credential or an absolute path, READY=1 on `$NOTIFY_SOCKET`, and
//! SIGHUP reloading the team file (members added and removed at once; a bad file changes
//! nothing).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::nix::{
    SourceStore, assert_copied, assert_copy_fails, assert_copy_succeeds, assert_not_valid,
    require_nix,
};
use n2p_testkit::proc::Signal;
use n2p_testkit::wait::assert_holds_for;

use crate::harness::mesh::{
    ANNOUNCE_INTERVAL, CONVERGENCE_TIMEOUT, MeshPeer, TeamDir, TeamSpec, alice_and_bob,
};
use crate::harness::mode_of;

/// How long a node may take to act on a SIGHUP and log it.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A group the test may give files to: as root any (65534, `nogroup` on Debian, so the
/// group visibly changes); otherwise the process's own.
fn test_group() -> u32 {
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    unsafe {
        if libc::geteuid() == 0 {
            65534
        } else {
            libc::getegid()
        }
    }
}

#[test]
fn a_group_shared_peers_dir_holds_0660_sockets_in_a_0750_dir() {
    let shared = ScratchDir::new("run-n2p");
    let peers = shared.join("peers");
    let control = shared.join("control.sock");
    let gid = test_group().to_string();
    let (alice, bob, _team, team_file) = alice_and_bob();

    let peers_arg = peers.to_string_lossy().into_owned();
    let control_arg = control.to_string_lossy().into_owned();
    let alice_node = alice.join(
        &team_file,
        &[
            "--peers-dir",
            &peers_arg,
            "--peers-group",
            &gid,
            "--control-socket",
            &control_arg,
        ],
    );
    // Bob has the same from his personal config.toml instead of flags.
    let bob_shared = ScratchDir::new("run-n2p");
    let bob_peers = bob_shared.join("peers");
    fs::write(
        bob.home.path().join("config.toml"),
        format!(
            "peers_dir = {:?}\npeers_group = {gid:?}\n",
            bob_peers.to_string_lossy()
        ),
    )
    .expect("write bob's config.toml");
    let _bob_node = bob.join(&team_file, &[]);
    alice_node.wait_until_joined();
    for socket in [peers.join("bob.sock"), bob_peers.join("alice.sock")] {
        n2p_testkit::wait::wait_until(
            &format!("{} in a shared peers dir", socket.display()),
            CONVERGENCE_TIMEOUT,
            || {
                socket
                    .exists()
                    .then_some(())
                    .ok_or_else(|| "not yet".to_owned())
            },
        );
    }

    for (path, mode) in [
        (peers.clone(), 0o750),
        (peers.join("bob.sock"), 0o660),
        (control.clone(), 0o660),
        (bob_peers.clone(), 0o750),
        (bob_peers.join("alice.sock"), 0o660),
    ] {
        assert_eq!(mode_of(&path), mode, "mode of {}", path.display());
        let found = fs::metadata(&path).expect("metadata").gid();
        assert_eq!(found.to_string(), gid, "group of {}", path.display());
    }
    // Another node (its own home) pointed at the same directory finds a live socket there
    // and refuses to start instead of clearing it.
    let carol = MeshPeer::new("carol");
    let mut carol_node = carol.join(
        &team_file,
        &["--peers-dir", &peers_arg, "--peers-group", &gid],
    );
    let status = carol_node.process.wait(Duration::from_secs(10));
    let stderr = carol_node.process.log_text();
    assert!(!status.success(), "carol should refuse:\n{stderr}");
    assert!(stderr.contains("another running n2p node"), "{stderr}");
    assert!(
        peers.join("bob.sock").exists(),
        "carol removed alice's socket"
    );

    // Nothing of this lands in the home; the private default is untouched there.
    assert!(!alice.peers_dir().exists(), "alice's home got a peers dir");
    assert!(!bob.peers_dir().exists(), "bob's home got a peers dir");
    assert!(!alice.home.home().control_socket_path().exists());

    // `n2p status` reaches the node through the shared control socket.
    let status = alice
        .home
        .run(&["status", "--json", "--control-socket", &control_arg]);
    assert!(status.status.success(), "{status:?}");
    let json: serde_json::Value =
        serde_json::from_slice(&status.stdout).expect("n2p status --json");
    assert_eq!(json["peers_dir"], peers_arg);
}

#[test]
fn a_group_peers_dir_with_other_modes_is_refused_and_left_alone() {
    let shared = ScratchDir::new("run-n2p");
    let peers = shared.join("peers");
    fs::create_dir(&peers).expect("mkdir");
    fs::set_permissions(&peers, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let alice = MeshPeer::new("alice");
    let team = TeamDir::new();
    let team_file = team.write("team.toml", &TeamSpec::closed([alice.member()]));
    let gid = test_group().to_string();
    let peers_arg = peers.to_string_lossy().into_owned();
    let mut node = alice.join(
        &team_file,
        &["--peers-dir", &peers_arg, "--peers-group", &gid],
    );
    let status = node.process.wait(Duration::from_secs(10));
    let stderr = node.process.log_text();
    assert!(!status.success(), "should refuse:\n{stderr}");
    assert!(stderr.contains("chmod 750"), "no hint:\n{stderr}");
    assert_eq!(
        mode_of(&peers),
        0o755,
        "n2p changed a directory it did not create"
    );
}

/// Writes `text` to `path` with `mode`, creating it.
fn write_secret(path: &Path, text: &str, mode: u32) {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .expect("create secret");
    file.write_all(text.as_bytes()).expect("write secret");
}

/// Gives `path` the access ACL systemd gives a credential on a tmpfs (acl(5)): owner read,
/// `user` read, nothing for the group and others; its mode then shows 0440. Err where the
/// file system has no ACLs.
fn set_credential_acl(path: &Path, user: u32) -> Result<(), String> {
    let none = u32::MAX.to_le_bytes();
    let mut xattr = 2u32.to_le_bytes().to_vec();
    // (tag, permission, id): USER_OBJ, USER, GROUP_OBJ, MASK, OTHER.
    for (tag, perm, id) in [
        (0x01u16, 4u16, none),
        (0x02, 4, user.to_le_bytes()),
        (0x04, 0, none),
        (0x10, 4, none),
        (0x20, 0, none),
    ] {
        xattr.extend(tag.to_le_bytes());
        xattr.extend(perm.to_le_bytes());
        xattr.extend(id);
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: NUL-terminated path and name, a buffer we own with its length.
    let set = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            xattr.as_ptr().cast(),
            xattr.len(),
            0,
        )
    };
    if set != 0 {
        return Err(format!(
            "setting an ACL on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let mode = fs::metadata(path).expect("stat").mode() & 0o777;
    assert_eq!(mode, 0o440, "the ACL's mask shows as group bits");
    Ok(())
}

#[test]
fn the_team_secret_comes_from_a_systemd_credential_or_an_absolute_path() {
    let alice = MeshPeer::new("alice");
    let bob = MeshPeer::new("bob");
    let team = TeamDir::new();
    // The shared team file names a variable nobody sets: only the command line's secret
    // can make these nodes meet.
    let mut spec = TeamSpec::closed([alice.member(), bob.member()]);
    spec.secret_env = Some("N2P_E2E_SECRET_NOBODY_SETS".to_owned());
    let team_file = team.write("team.toml", &spec);

    // What systemd's LoadCredential= makes: a directory with a 0400 file, which systemd opens
    // to the unit's user through an ACL where the credentials' file system has ACLs (tmpfs).
    let credentials = ScratchDir::new("credentials");
    write_secret(&credentials.join("n2p-team"), team.secret(), 0o400);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if let Err(why) = set_credential_acl(&credentials.join("n2p-team"), me) {
        n2p_testkit::skip(
            "the_team_secret_comes_from_a_systemd_credential_or_an_absolute_path",
            &why,
        );
        return;
    }
    let mut command = alice.join_command(&team_file);
    command
        .args(["--name", "alice", "--secret-credential", "n2p-team"])
        .env("CREDENTIALS_DIRECTORY", credentials.path())
        .env_remove("N2P_E2E_SECRET_NOBODY_SETS");
    let _alice_node = alice.spawn(command);
    let secret_file = team.secret_file();
    let _bob_node = bob.join(
        &team_file,
        &["--secret-file", &secret_file.to_string_lossy()],
    );
    alice.wait_for_sockets(&["bob"], CONVERGENCE_TIMEOUT);
    bob.wait_for_sockets(&["alice"], CONVERGENCE_TIMEOUT);

    // Without the credential directory, the flag says what it needs.
    let carol = MeshPeer::new("carol");
    let mut command = carol.join_command(&team_file);
    command
        .args(["--secret-credential", "n2p-team"])
        .env_remove("CREDENTIALS_DIRECTORY");
    let mut node = carol.spawn(command);
    let status = node.process.wait(Duration::from_secs(10));
    let stderr = node.process.log_text();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("CREDENTIALS_DIRECTORY"), "{stderr}");

    // A credential whose ACL also lets another user read it is refused, and says how to fix.
    let stderr = refused_credential("dave", &team_file, team.secret(), |file| {
        set_credential_acl(file, me.wrapping_add(1)).expect("ACL");
    });
    assert!(
        stderr.contains("readable by other users (mode 440); fix it with: chmod 600"),
        "{stderr}"
    );

    // One whose ACL names this user but that another user owns (who could change it under
    // the node) is refused too. Giving a file away needs root.
    if me == 0 {
        let stderr = refused_credential("erin", &team_file, team.secret(), |file| {
            std::os::unix::fs::chown(file, Some(65534), None).expect("chown to nobody");
            set_credential_acl(file, me).expect("ACL");
        });
        assert!(
            stderr.contains("readable by other users (mode 440)"),
            "{stderr}"
        );
    }
}

/// Starts node `name` of `team_file` with its secret from a credential file (0400, then
/// changed by `prepare`) and returns its log after asserting that it refused to start.
fn refused_credential(
    name: &str,
    team_file: &Path,
    secret: &str,
    prepare: impl FnOnce(&Path),
) -> String {
    let peer = MeshPeer::new(name);
    let credentials = ScratchDir::new("credentials");
    let file = credentials.join("n2p-team");
    write_secret(&file, secret, 0o400);
    prepare(&file);
    let mut command = peer.join_command(team_file);
    command
        .args(["--secret-credential", "n2p-team"])
        .env("CREDENTIALS_DIRECTORY", credentials.path());
    let mut node = peer.spawn(command);
    let status = node.process.wait(Duration::from_secs(10));
    let stderr = node.process.log_text();
    assert!(
        !status.success(),
        "{name} should have refused its credential:\n{stderr}"
    );
    stderr
}

#[test]
fn ready_is_sent_once_the_peers_dir_and_control_socket_exist() {
    let dir = ScratchDir::new("notify");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(CONVERGENCE_TIMEOUT))
        .expect("timeout");
    let alice = MeshPeer::new("alice");
    let team = TeamDir::new();
    let team_file = team.write("team.toml", &TeamSpec::closed([alice.member()]));
    let mut command = alice.join_command(&team_file);
    command.env("NOTIFY_SOCKET", &notify_path);
    let started = Instant::now();
    let _node = alice.spawn(command);

    let mut buf = [0u8; 256];
    let n = notify
        .recv(&mut buf)
        .expect("READY=1 within the timeout (none arrived)");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    eprintln!(
        "TIMING notify {message:?} {:?} after spawning",
        started.elapsed()
    );
    assert_eq!(message, "READY=1");
    assert!(alice.home.home().control_socket_path().exists());
    assert!(alice.peers_dir().is_dir());
}

#[test]
fn a_bad_team_file_on_sighup_keeps_the_node_and_its_peers() {
    let alice = MeshPeer::new("alice");
    let bob = MeshPeer::new("bob");
    let team = TeamDir::new();
    let spec = TeamSpec::closed([alice.member(), bob.member()]);
    let alices_file = team.write("alice.toml", &spec);
    let bobs_file = team.write("bob.toml", &spec);
    let mut alice_node = alice.join(&alices_file, &[]);
    let _bob_node = bob.join(&bobs_file, &[]);
    alice.wait_for_sockets(&["bob"], CONVERGENCE_TIMEOUT);

    team.write_raw(
        "alice.toml",
        "[mesh]\nsecret_file = \"team.secret\"\nbogus = 1\n",
    );
    let mark = alice_node.process.mark();
    alice_node.process.signal(Signal::Hup);
    let line = alice_node.process.wait_for_line_since(
        &mark,
        "keeping the one loaded before",
        RELOAD_TIMEOUT,
    );
    assert!(
        line.contains("bogus"),
        "the log should say what is wrong: {line}"
    );
    assert_holds_for(
        "alice keeps running with bob's socket",
        Duration::from_secs(3 * ANNOUNCE_INTERVAL.as_secs()),
        || {
            if !alice_node.process.is_running() {
                return Err("alice's node exited".to_owned());
            }
            alice.check_sockets(&["bob"])
        },
    );
}

#[test]
fn sighup_admits_an_added_member_and_refuses_a_removed_one() {
    if !require_nix("sighup_admits_an_added_member_and_refuses_a_removed_one") {
        return;
    }
    let alice = MeshPeer::with_daemon("alice");
    let bob = MeshPeer::new("bob");
    let carol = MeshPeer::new("carol");
    let team = TeamDir::new();
    let everyone = TeamSpec::closed([alice.member(), bob.member(), carol.member()]);
    // alice's file starts without carol; bob and carol list all three.
    let alices_file = team.write(
        "alice.toml",
        &TeamSpec::closed([alice.member(), bob.member()]),
    );
    let others_file = team.write("everyone.toml", &everyone);
    let source = SourceStore::new();
    let from_bob = source.add_file("from-bob.txt", b"bob, still a member\n");
    let from_carol = source.add_file("from-carol.txt", b"carol, just added\n");
    let from_bob_later = source.add_file("from-bob-later.txt", b"bob, removed\n");

    let alice_node = alice.join(&alices_file, &[]);
    let _bob_node = bob.join(&others_file, &[]);
    let _carol_node = carol.join(&others_file, &[]);
    bob.wait_for_sockets(&["alice", "carol"], CONVERGENCE_TIMEOUT);
    alice.wait_for_sockets(&["bob"], CONVERGENCE_TIMEOUT);
    alice_node
        .process
        .wait_for_line(&format!("refused peer {}", carol.id), CONVERGENCE_TIMEOUT);
    assert_copy_succeeds(&source, &bob.socket_url("alice"), &[&from_bob]);
    assert_copied(&source, &alice.daemon().store_url(), &from_bob);

    // carol in, bob out.
    team.write(
        "alice.toml",
        &TeamSpec::closed([alice.member(), carol.member()]),
    );
    let mark = alice_node.process.mark();
    let started = Instant::now();
    alice_node.process.signal(Signal::Hup);
    let line =
        alice_node
            .process
            .wait_for_line_since(&mark, "reloaded the team file", RELOAD_TIMEOUT);
    assert!(
        line.contains("added [\"carol\"]") && line.contains("removed [\"bob\"]"),
        "{line}"
    );
    alice.wait_for_sockets(&["carol"], CONVERGENCE_TIMEOUT);
    carol.wait_for_sockets(&["alice", "bob"], CONVERGENCE_TIMEOUT);
    eprintln!(
        "TIMING reload: carol and alice have each other's sockets {:?} after SIGHUP",
        started.elapsed()
    );

    // carol's push goes in; bob's (his node still lists alice) is refused at alice's daemon.
    assert_copy_succeeds(&source, &carol.socket_url("alice"), &[&from_carol]);
    assert_copied(&source, &alice.daemon().store_url(), &from_carol);
    // bob's own file still lists alice, and he hears her through carol.
    bob.wait_for_sockets(&["alice", "carol"], CONVERGENCE_TIMEOUT);
    let stderr = assert_copy_fails(&source, &bob.socket_url("alice"), &[&from_bob_later]);
    eprintln!("bob's push after his removal failed as it should; nix said:\n{stderr}");
    assert_not_valid(&alice.daemon().store_url(), &from_bob_later);
    alice_node.process.wait_for_line_since(
        &mark,
        &format!("refused peer {}", bob.id),
        RELOAD_TIMEOUT,
    );
}

#[test]
fn logs_carry_no_timestamps_when_journald_captures_stderr() {
    let home = n2p_testkit::n2p::TempHome::new(crate::harness::N2P);
    // stderr is a terminal, where n2p colours its logs unless journald captures them: the
    // journal's stream is named by device and inode, here the terminal's own.
    let run = |journal: bool| -> String {
        let (mut master, slave) = open_pty();
        let meta = slave.metadata().expect("pty metadata");
        let mut command = home.command();
        command.arg("rotate-secret").stderr(slave);
        if journal {
            // What systemd sets: the device and inode of the stream it reads.
            command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            command.env_remove("JOURNAL_STREAM");
        }
        let status = command.status().expect("run n2p rotate-secret");
        assert!(status.success());
        drop(command);
        // The terminal keeps what was written; reading past it ends with EIO.
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut master, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let plain = run(false);
    let journal = run(true);
    eprintln!("plain: {plain:?}\njournal: {journal:?}");
    let line = |text: &str| {
        text.lines()
            .find(|l| l.contains("new access secret"))
            .unwrap_or_else(|| panic!("no log line in {text:?}"))
            .to_owned()
    };
    assert!(
        plain.contains('\u{1b}'),
        "on a terminal, colours: {plain:?}"
    );
    // Without its colour codes (ESC [ ... m), the line starts with the year.
    let uncoloured: String = line(&plain)
        .split('\u{1b}')
        .map(|part| {
            part.strip_prefix('[')
                .map_or(part, |p| &p[p.find('m').map_or(0, |m| m + 1)..])
        })
        .collect();
    assert!(uncoloured.starts_with("20"), "a timestamp first: {plain}");
    assert!(line(&journal).trim_start().starts_with("INFO"), "{journal}");
    assert!(!journal.contains('\u{1b}'), "colour codes: {journal:?}");
}

/// A new pseudo-terminal: its master, and its slave opened as a file.
fn open_pty() -> (fs::File, fs::File) {
    let master = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")
        .expect("open /dev/ptmx");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&master);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt act on the master we own; ptsname_r writes at most the
    // buffer's length, which is passed.
    let slave_name = unsafe {
        assert_eq!(libc::grantpt(fd), 0, "grantpt");
        assert_eq!(libc::unlockpt(fd), 0, "unlockpt");
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
        std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&slave_name)
        .unwrap_or_else(|e| panic!("open {slave_name}: {e}"));
    (master, slave)
}

/// Runs `command` (a program and its arguments) as the local user `user` (the test runs as
/// root), with a scratch HOME; returns whether it succeeded and its output (stdout, then
/// stderr).
fn run_as(user: &str, home: &Path, command: &[&str]) -> (bool, String) {
    let output = n2p_testkit::proc::run_bounded(
        std::process::Command::new("runuser")
            .args(["-u", user, "--", "env"])
            .arg(format!("HOME={}", home.display()))
            .arg("NIX_CONFIG=experimental-features = nix-command")
            .args(command),
        n2p_testkit::n2p::COMMAND_TIMEOUT,
        &format!("{command:?} as {user}"),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{command:?} as {user}: {}\n{text}", output.status);
    (output.status.success(), text)
}

#[test]
fn members_of_the_peers_group_reach_the_daemon_and_the_node_and_others_do_not() {
    if !require_nix("members_of_the_peers_group_reach_the_daemon_and_the_node_and_others_do_not") {
        return;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED: members_of_the_peers_group_reach_the_daemon_and_the_node_and_others_do_not: acting as other users needs root"
        );
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root"
        );
        return;
    }
    // nobody's primary group is nogroup (65534): the member. daemon (uid 1) is not in it.
    let shared = ScratchDir::new("run-n2p");
    fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("open the scratch dir for traversal, as /run is");
    let scratch_home = ScratchDir::new("other-home");
    fs::set_permissions(
        scratch_home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("a HOME anyone may write to");
    let peers = shared.join("peers");
    let control = shared.join("control.sock");
    let alice = MeshPeer::new("alice");
    let bob = MeshPeer::with_daemon("bob");
    let team = TeamDir::new();
    let team_file = team.write(
        "team.toml",
        &TeamSpec::closed([alice.member(), bob.member()]),
    );
    let peers_arg = peers.to_string_lossy().into_owned();
    let control_arg = control.to_string_lossy().into_owned();
    let _alice_node = alice.join(
        &team_file,
        &[
            "--peers-dir",
            &peers_arg,
            "--peers-group",
            "65534",
            "--control-socket",
            &control_arg,
        ],
    );
    let _bob_node = bob.join(&team_file, &[]);
    n2p_testkit::wait::wait_until(
        "bob.sock in the shared peers dir",
        CONVERGENCE_TIMEOUT,
        || {
            peers
                .join("bob.sock")
                .exists()
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        },
    );

    let store = format!("unix://{}", peers.join("bob.sock").display());
    let n2p = crate::harness::N2P;
    let ping = ["nix", "store", "ping", "--store", store.as_str()];
    let status = [n2p, "status", "--control-socket", control_arg.as_str()];
    let (ok, stderr) = run_as("nobody", scratch_home.path(), &ping);
    assert!(
        ok,
        "a member of the group should reach bob's daemon:\n{stderr}"
    );
    let (ok, stderr) = run_as("nobody", scratch_home.path(), &status);
    assert!(ok, "a member of the group should reach the node:\n{stderr}");
    let (ok, stderr) = run_as("daemon", scratch_home.path(), &ping);
    assert!(
        !ok,
        "a user outside the group reached bob's daemon:\n{stderr}"
    );
    // Refused by the file system, not failing for some other reason.
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let (ok, stderr) = run_as("daemon", scratch_home.path(), &status);
    assert!(!ok, "a user outside the group reached the node:\n{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // `n2p doctor` tells a user outside the group that the peers dir is not for them.
    let peers_arg = peers.to_string_lossy().into_owned();
    let gid = test_group().to_string();
    let doctor = [
        n2p,
        "doctor",
        "--relay",
        "disabled",
        "--peers-dir",
        peers_arg.as_str(),
        "--peers-group",
        gid.as_str(),
    ];
    let (ok, output) = run_as("daemon", scratch_home.path(), &doctor);
    assert!(
        !ok,
        "doctor should fail for a user outside the group:\n{output}"
    );
    assert!(
        output.contains("FAIL  peers group: this user is not a member of group")
            && output.contains("usermod -aG"),
        "{output}"
    );
}
