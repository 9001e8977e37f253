//! The command line on its own and its failure modes: bad addresses, unreachable servers, a
//! server whose daemon socket is missing.

use std::time::{Duration, Instant};

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::COMMAND_TIMEOUT;
use n2p_testkit::n2p::{ServerConfig, TempHome};
use n2p_testkit::nix::{SourceStore, assert_copy_fails, require_nix};
use n2p_testkit::proc::{expect_success, run_bounded};

use crate::harness::N2P;

/// How quickly a client must give up on an address that cannot be parsed.
const MALFORMED_ADDRESS_TIMEOUT: Duration = Duration::from_secs(10);

/// How quickly a client must give up on a server that does not answer: QUIC's idle timeout
/// (4 s) ends the attempt, before the client's own 10 s connect timeout; slack for a loaded
/// machine.
const UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn id_is_stable_and_global_options_go_anywhere() {
    let home = TempHome::new(N2P);
    let id = home.id();
    assert_eq!(home.id(), id, "n2p id should print the same id every time");
    for args in [
        &["--relay", "disabled", "-v", "id"][..],
        &["id", "--relay", "disabled", "-v"][..],
    ] {
        let stdout = expect_success(&home.run(args), &format!("n2p {}", args.join(" ")));
        assert_eq!(
            stdout.trim(),
            id,
            "n2p {} printed another id",
            args.join(" ")
        );
    }
    assert_ne!(
        TempHome::new(N2P).id(),
        id,
        "two homes should have different ids"
    );
}

#[test]
fn client_rejects_a_malformed_address() {
    let home = TempHome::new(N2P);
    let dir = ScratchDir::new("client");
    let started = Instant::now();
    let mut client = home.client("garbage", &dir.join("c.sock"));
    let status = client.process.wait(MALFORMED_ADDRESS_TIMEOUT);
    let stderr = client.process.log_text();
    eprintln!(
        "client gave up on a malformed address in {:?}",
        started.elapsed()
    );
    assert!(!status.success(), "n2p client garbage exited successfully");
    assert_eq!(
        stderr.trim(),
        "error: invalid server address 'garbage': not an n2p address: it must start with \
         'n2p' (copy the whole 'long address' that `n2p server` printed)",
        "n2p client garbage should say exactly what is wrong with the address"
    );
    assert!(
        !client.socket.exists(),
        "a failed client left its socket behind"
    );
}

#[test]
fn client_gives_up_on_an_unreachable_server() {
    // Nothing here needs Nix: the server goes away before anyone connects.
    let dir = ScratchDir::new("nothing");
    let server_home = TempHome::new(N2P);
    let server_id = server_home.id();
    let server = server_home.server(&ServerConfig::new(&dir.join("daemon.sock")));
    let address = server.long_address.clone();
    server.stop();

    let started = Instant::now();
    let client_home = TempHome::new(N2P);
    let mut client = client_home.client(&address, &dir.join("c.sock"));
    let status = client.process.wait(UNREACHABLE_TIMEOUT);
    let stderr = client.process.log_text();
    eprintln!(
        "client gave up on an unreachable server in {:?}",
        started.elapsed()
    );
    assert!(
        !status.success(),
        "a client of a stopped server exited successfully"
    );
    // The one error line names the server and the time really waited, which is bounded.
    let prefix = format!("error: cannot reach the server: peer {server_id} did not answer within ");
    let suffix = " s (is it running, and is the address current?)";
    let line = stderr.trim();
    let waited: f64 = line
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("expected {prefix}<secs>{suffix}, the client said:\n{stderr}"));
    assert!(
        waited > 0.0 && waited <= UNREACHABLE_TIMEOUT.as_secs_f64(),
        "the client claims to have waited {waited} s"
    );
    assert!(
        !client.socket.exists(),
        "a failed client left its socket behind"
    );
}

#[test]
fn server_reports_a_missing_daemon_socket() {
    if !require_nix("server_reports_a_missing_daemon_socket") {
        return;
    }
    let source = SourceStore::new();
    let path = source.add_file("lost.txt", b"has nowhere to go\n");
    let dir = ScratchDir::new("nothing");
    let missing = dir.join("no-daemon.sock");
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(&missing));
    let client_home = TempHome::new(N2P);
    let client = client_home.client(&server.long_address, &dir.join("c.sock"));
    client.wait_until_listening();

    // The server may warn about the socket at startup already; what counts is that the
    // failed connection itself is explained.
    let mark = server.process.mark();
    assert_copy_fails(&source, &client.store_url(), &[&path]);
    server.process.wait_for_line_since(
        &mark,
        &missing.display().to_string(),
        Duration::from_secs(10),
    );
}

/// One node per home: a second `n2p server` on the same `N2P_HOME` exits at once with a
/// message naming the lock, and the first one keeps running.
#[test]
fn a_second_server_on_one_home_is_refused() {
    let dir = ScratchDir::new("two-servers");
    let daemon_socket = dir.join("no-daemon.sock");
    let home = TempHome::new(N2P);
    let mut first = home.server(&ServerConfig::new(&daemon_socket));
    let output = run_bounded(
        home.command()
            .args([
                "server",
                "--relay",
                "disabled",
                "--bind",
                "127.0.0.1:0",
                "--daemon-socket",
            ])
            .arg(&daemon_socket),
        COMMAND_TIMEOUT,
        "a second n2p server on the same home",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the second server started: {stderr}"
    );
    assert!(
        stderr.contains("another n2p node is already running with this home"),
        "the second server should say why it stops: {stderr}"
    );
    assert!(first.process.is_running(), "the first server stopped");
}

/// Every forwarded Nix connection holds a socket: n2p raises its soft open-file limit to
/// the hard limit at start (here started with a soft limit of 256).
#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let dir = ScratchDir::new("fd-limit");
    let home = TempHome::new(N2P);
    let command = home.command();
    let n2p = command.get_program().to_owned();
    let mut shell = std::process::Command::new("sh");
    shell
        .arg("-c")
        .arg("ulimit -Sn 256 && exec \"$0\" \"$@\"")
        .arg(n2p)
        .args([
            "--relay",
            "disabled",
            "--bind",
            "127.0.0.1:0",
            "server",
            "--daemon-socket",
        ])
        .arg(dir.join("no-daemon.sock"))
        .envs(command.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    let server = n2p_testkit::proc::Process::spawn("server", &mut shell);
    server.wait_for_line("long address:", n2p_testkit::n2p::STARTUP_TIMEOUT);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid()))
        .expect("reading the server's limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers.len(), 2, "{line}");
    assert_eq!(
        numbers[0], numbers[1],
        "the soft limit should be raised to the hard one: {line}"
    );
    assert_ne!(numbers[0], "256", "the soft limit stayed at 256: {line}");
}

/// A `--socket` that cannot be created is reported at once, before any connection attempt:
/// the server here is gone, and the client must complain about the socket, not the server.
#[test]
fn client_checks_its_socket_path_before_connecting() {
    let dir = ScratchDir::new("bad-socket");
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(&dir.join("daemon.sock")));
    let address = server.long_address.clone();
    server.stop();

    let client_home = TempHome::new(N2P);
    let missing = dir.join("no-such-dir").join("c.sock");
    let output = run_bounded(
        client_home
            .command()
            .args([
                "--relay",
                "disabled",
                "--bind",
                "127.0.0.1:0",
                "client",
                &address,
                "--socket",
            ])
            .arg(&missing),
        COMMAND_TIMEOUT,
        "n2p client with an unusable --socket",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the client started: {stderr}");
    assert!(
        stderr.contains(&format!("cannot create socket {}", missing.display())),
        "the client should name the socket it cannot create: {stderr}"
    );
    assert!(
        !stderr.contains("cannot reach the server"),
        "the client tried the server before checking its socket: {stderr}"
    );
}

/// A symbolic link where the client's socket should go is refused with a message naming it,
/// and neither the link nor what it points at (here a file of the user's) is touched.
#[test]
fn client_refuses_a_symlink_at_its_socket_path() {
    let dir = ScratchDir::new("symlink-socket");
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(&dir.join("daemon.sock")));
    let address = server.long_address.clone();
    server.stop();

    let victim = dir.join("precious.txt");
    std::fs::write(&victim, b"keep me").expect("writing the victim file");
    let link = dir.join("c.sock");
    std::os::unix::fs::symlink(&victim, &link).expect("making the symlink");
    let client_home = TempHome::new(N2P);
    let output = run_bounded(
        client_home
            .command()
            .args([
                "--relay",
                "disabled",
                "--bind",
                "127.0.0.1:0",
                "client",
                &address,
                "--socket",
            ])
            .arg(&link),
        COMMAND_TIMEOUT,
        "n2p client with a symlink as --socket",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the client started: {stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: {} is a symbolic link; refusing to bind through it or replace it (remove \
             it, or choose another --socket)",
            link.display()
        )
    );
    assert_eq!(std::fs::read_link(&link).expect("the link"), victim);
    assert_eq!(std::fs::read(&victim).expect("the victim"), b"keep me");
}

/// One mistyped character in a real address is caught when the client parses it, with a
/// message saying so, before anything is bound or dialled.
#[test]
fn client_rejects_a_mistyped_address() {
    let dir = ScratchDir::new("typo");
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(&dir.join("daemon.sock")));
    let address = server.long_address.clone();
    server.stop();
    // A character in the middle (inside the secret or the addresses) replaced by another.
    let at = address.len() / 2;
    let replacement = if &address[at..=at] == "q" { "r" } else { "q" };
    let mut typo = address.clone();
    typo.replace_range(at..=at, replacement);

    let home = TempHome::new(N2P);
    let mut client = home.client(&typo, &dir.join("c.sock"));
    let status = client.process.wait(MALFORMED_ADDRESS_TIMEOUT);
    assert!(!status.success(), "a mistyped address was accepted");
    assert_eq!(
        client.process.log_text().trim(),
        format!(
            "error: invalid server address '{}…': not an n2p address: its checksum does not \
             match, so a character is mistyped, missing or extra (copy the whole address again)",
            &typo[..24]
        )
    );
    assert!(
        !client.socket.exists(),
        "a failed client left its socket behind"
    );
}

/// The UDP sockets on `port` that `ss` lists in `ns`, as their local addresses.
fn udp_sockets_on(ns: &n2p_testkit::netns::Netns, port: u16) -> Vec<String> {
    let output = run_bounded(
        ns.command("ss").args(["-H", "-u", "-l", "-n"]),
        COMMAND_TIMEOUT,
        "ss -uln",
    );
    let text = expect_success(&output, "ss -uln");
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter(|local| local.ends_with(&format!(":{port}")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_fixed_port_binds_ipv4_and_ipv6() {
    let test = "a_fixed_port_binds_ipv4_and_ipv6";
    if let Some(why) = n2p_testkit::netns::unavailable() {
        n2p_testkit::skip(test, &format!("network namespaces are unavailable: {why}"));
        return;
    }
    // A namespace of its own, so the fixed port is free.
    const PORT: u16 = 7001;
    let ns = n2p_testkit::netns::Netns::create("n2pt-bind-", "v6")
        .unwrap_or_else(|failure| panic!("{failure}"));
    let home = TempHome::new(N2P);
    let mut command = ns.command(N2P);
    command
        .env("N2P_HOME", home.path())
        .args(["--relay", "disabled"])
        .args(["--bind", &format!("0.0.0.0:{PORT}")])
        .args(["--bind", &format!("[::]:{PORT}")])
        .args(["server", "--daemon-socket", "/nonexistent/daemon.sock"]);
    let server = n2p_testkit::proc::Process::spawn("server", &mut command);
    server.wait_for_line("node id", COMMAND_TIMEOUT);
    let mut sockets = udp_sockets_on(&ns, PORT);
    sockets.sort();
    assert_eq!(
        sockets,
        [format!("0.0.0.0:{PORT}"), format!("[::]:{PORT}")],
        "{}",
        server.log_text()
    );
}
