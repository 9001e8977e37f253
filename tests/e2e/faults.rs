//! Faults: a transfer cut off half-way must never look complete to Nix.

use std::fs::File;
use std::process::Stdio;
use std::time::{Duration, Instant};

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::{ServerConfig, TempHome};
use n2p_testkit::nix::{
    NixDaemon, SourceStore, assert_copied, nix_command, path_info, require_nix,
};
use n2p_testkit::proc::{Signal, wait_bounded};

use crate::harness::N2P;

/// Rounds of the kill test: Debian's Nix 2.8 used to exit 0 in about 4 of 10.
const ROUNDS: u64 = 10;

/// Large enough that a debug build is still pushing when the server dies.
const PUSH_LEN: usize = 256 << 20;

/// How long the server may take to notice a killed client (QUIC idle timeout, 4 s) and
/// reset the daemon stream, with slack.
const SERVER_NOTICES: Duration = Duration::from_secs(6);

/// How long Nix may take to report the failure after the kill: the QUIC idle timeout (4 s)
/// plus slack for a loaded machine.
const FAILURE_BOUND: Duration = Duration::from_secs(30);

/// Which process of the tunnel a fault test kills.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Server,
    Client,
}

/// SIGKILLs `n2p server` while Nix 2.8 pushes 256 MiB through `n2p client`, ten times, each
/// at another moment. `nix copy` must never exit 0 unless the path is valid, whole, in the
/// destination store; and it must end within a bounded time.
#[test]
fn killing_the_server_mid_push_never_looks_complete() {
    if !require_nix("killing_the_server_mid_push_never_looks_complete") {
        return;
    }
    kill_mid_push(Victim::Server, ROUNDS);
}

/// The same with `n2p client` killed: Nix sees its socket die at once, and the receiving
/// daemon, whose stream is reset once the server notices, never gets a valid partial path.
#[test]
fn killing_the_client_mid_push_leaves_no_partial_path() {
    if !require_nix("killing_the_client_mid_push_leaves_no_partial_path") {
        return;
    }
    kill_mid_push(Victim::Client, 3);
}

/// Pushes through a fresh server/client pair `rounds` times and SIGKILLs `victim` at a
/// different moment each time; checks what Nix and the destination store saw.
fn kill_mid_push(victim: Victim, rounds: u64) {
    let source = SourceStore::new();
    let path = source.add_random_file("big.bin", PUSH_LEN, 3);
    let scratch = ScratchDir::new("faults");
    let mut interrupted = 0;
    let mut failure_times = Vec::new();
    for round in 0..rounds {
        let daemon = NixDaemon::start();
        let server_home = TempHome::new(N2P);
        let server = server_home.server(&ServerConfig::new(daemon.socket_path()));
        let client_home = TempHome::new(N2P);
        let client = client_home.client(
            &server.long_address,
            &scratch.join(&format!("c{round}.sock")),
        );
        client.wait_until_listening();

        let log_path = scratch.join(&format!("copy{round}.log"));
        let log = File::create(&log_path).expect("create the copy log");
        let mut copy = nix_command("nix")
            .args([
                "copy",
                "--from",
                &source.url(),
                "--to",
                &client.store_url(),
                &path,
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nix copy");
        // A different moment each round: early in the handshake to deep in the NAR.
        std::thread::sleep(Duration::from_millis(200 + 100 * round));
        match victim {
            Victim::Server => server.process.signal(Signal::Kill),
            Victim::Client => client.process.signal(Signal::Kill),
        }
        let killed = Instant::now();
        let status = wait_bounded(&mut copy, FAILURE_BOUND).unwrap_or_else(|| {
            panic!("round {round}: nix copy still runs {FAILURE_BOUND:?} after the {victim:?} died")
        });
        let ended_after = killed.elapsed();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if matches!(victim, Victim::Client) {
            // The server notices the dead client within its idle timeout and resets the
            // daemon stream; give it that long before looking at the store.
            std::thread::sleep(SERVER_NOTICES);
        }
        let arrived = path_info(&daemon.store_url(), &path);
        eprintln!(
            "round {round}: nix copy {status} {ended_after:?} after the kill, path valid: {}; {}",
            arrived.is_some(),
            log.lines().last().unwrap_or_default()
        );
        match arrived {
            Some(_) => {
                // Finished before the kill: then it must be whole.
                assert_copied(&source, &daemon.store_url(), &path);
            }
            None => {
                assert!(
                    !status.success(),
                    "round {round}: nix copy exited 0 but {path} is not valid in the destination \
                     (a truncated transfer looked complete); its log:\n{log}"
                );
                interrupted += 1;
                failure_times.push(ended_after);
            }
        }
    }
    failure_times.sort();
    eprintln!(
        "{victim:?} killed: interrupted rounds: {interrupted} of {rounds}; nix copy failed after {failure_times:?}"
    );
    assert!(
        interrupted * 2 >= rounds,
        "only {interrupted} of {rounds} rounds were cut off mid-push: the test no longer tests"
    );
}
