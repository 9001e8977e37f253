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

/// How long Nix may take to report the failure after the kill: the QUIC idle timeout (4 s)
/// plus slack for a loaded machine.
const FAILURE_BOUND: Duration = Duration::from_secs(30);

/// SIGKILLs `n2p server` while Nix 2.8 pushes 256 MiB through `n2p client`, ten times, each
/// at another moment. `nix copy` must never exit 0 unless the path is valid, whole, in the
/// destination store; and it must end within a bounded time.
#[test]
fn killing_the_server_mid_push_never_looks_complete() {
    if !require_nix("killing_the_server_mid_push_never_looks_complete") {
        return;
    }
    let source = SourceStore::new();
    let path = source.add_random_file("big.bin", PUSH_LEN, 3);
    let scratch = ScratchDir::new("faults");
    let mut interrupted = 0;
    let mut failure_times = Vec::new();
    for round in 0..ROUNDS {
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
        server.process.signal(Signal::Kill);
        let killed = Instant::now();
        let status = wait_bounded(&mut copy, FAILURE_BOUND).unwrap_or_else(|| {
            panic!("round {round}: nix copy still runs {FAILURE_BOUND:?} after the server died")
        });
        let ended_after = killed.elapsed();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
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
        "interrupted rounds: {interrupted} of {ROUNDS}; nix copy failed after {failure_times:?}"
    );
    assert!(
        interrupted >= ROUNDS / 2,
        "only {interrupted} of {ROUNDS} rounds were cut off mid-push: the test no longer tests"
    );
}
