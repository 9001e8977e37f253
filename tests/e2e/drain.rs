//! Draining: a socket taken away stops new connections, but a push already running through
//! it finishes (or fails on its own); a clean stop waits for it, bounded, and then aborts
//! it, so the receiving daemon sees an error and never a valid partial path.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::{SHUTDOWN_TIMEOUT, ServerConfig, TempHome};
use n2p_testkit::nix::{
    NixDaemon, SourceStore, assert_copied, assert_not_valid, nix_command, path_info, require_nix,
};
use n2p_testkit::proc::{Process, Signal, signal, wait_bounded};
use n2p_testkit::wait::wait_until;

use crate::harness::N2P;
use crate::harness::forge::Forgers;
use crate::harness::mesh::{CONVERGENCE_TIMEOUT, MeshPeer, MeshProcess, TeamDir, TeamSpec};

/// Large enough that a debug build is still pushing when the signal arrives, small enough
/// that the rest of the push fits in the drain bound on a busy machine: a debug build
/// pushed 64 MiB in 6 to 8 s with two such tests side by side on a loaded 2-core machine,
/// and 128 MiB once took over 11 s alone.
const PUSH_LEN: usize = 32 << 20;

/// How long the push runs after Nix names the path it copies before the test freezes it:
/// past the handshake and into the NAR, far from its end ([`PUSH_LEN`] takes hundreds of
/// milliseconds even on a fast, quiet machine).
const INTO_THE_NAR: Duration = Duration::from_millis(50);

/// Longest Nix may take to start copying the path.
const COPY_START_BOUND: Duration = Duration::from_secs(20);

/// n2p's drain bound (`LEAVE_DRAIN_BOUND`, and the client's): transfers in flight get this
/// long after SIGTERM.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// How long before the drain bound the stall test lets its frozen push go on: far too
/// short for the rest of its NAR.
const RESUME_BEFORE_BOUND: Duration = Duration::from_millis(1500);

/// Longest a push may take to end (either way) after the signal: the drain bound plus
/// slack for a loaded machine.
const PUSH_END_BOUND: Duration = Duration::from_secs(30);

/// Longest the socket file may outlive the signal: it goes at once.
const SOCKET_GONE_BOUND: Duration = Duration::from_secs(2);

/// A `nix copy` running in the background, its stderr in a file; killed (even when
/// stopped) on drop.
struct Push {
    child: Child,
    log: PathBuf,
}

impl Push {
    /// Starts `nix copy --from <source> --to <to_url> <path>`.
    fn start(source: &SourceStore, to_url: &str, path: &str, log: &Path) -> Self {
        let file = File::create(log).expect("create the copy log");
        let child = nix_command("nix")
            .args(["copy", "--from", &source.url(), "--to", to_url, path])
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start nix copy");
        Self {
            child,
            log: log.to_owned(),
        }
    }

    /// Waits (bounded) until Nix says it copies the path, lets it run [`INTO_THE_NAR`] and
    /// freezes it (SIGSTOP): the push is then surely in flight, however fast the machine (a
    /// fixed head start of 700 ms was once longer than a whole 32 MiB push). Panics if it
    /// ended first (the test would no longer interrupt anything).
    fn freeze_in_flight(&mut self) {
        wait_until("nix copy starts copying the path", COPY_START_BOUND, || {
            if self.log_text().contains("copying path") {
                Ok(())
            } else {
                Err(format!("its log so far:\n{}", self.log_text()))
            }
        });
        std::thread::sleep(INTO_THE_NAR);
        self.signal(Signal::Stop);
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the push ended ({status}) within {INTO_THE_NAR:?} of its start, before the test \
                 could interrupt it: make PUSH_LEN larger; its log:\n{}",
                self.log_text()
            );
        }
    }

    fn signal(&self, sig: Signal) {
        signal(self.child.id(), sig).unwrap_or_else(|error| panic!("{sig:?} to nix copy: {error}"));
    }

    /// Waits (bounded) for `nix copy` to end.
    fn wait(&mut self, what: &str) -> ExitStatus {
        wait_bounded(&mut self.child, PUSH_END_BOUND).unwrap_or_else(|| {
            panic!(
                "nix copy still runs {PUSH_END_BOUND:?} after {what}; its log:\n{}",
                self.log_text()
            )
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Push {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_bounded(&mut self.child, Duration::from_secs(10));
    }
}

/// Waits (bounded) until `socket` no longer exists.
fn wait_socket_gone(socket: &Path) -> Duration {
    wait_until(
        &format!("{} is removed", socket.display()),
        SOCKET_GONE_BOUND,
        || {
            if socket.exists() {
                Err(format!("{} still exists", socket.display()))
            } else {
                Ok(())
            }
        },
    )
}

/// SIGTERMs `process` and checks that it removes `socket` at once and says it waits for
/// one transfer; returns when the signal was sent.
fn terminate_while_pushing(process: &Process, socket: &Path) -> Instant {
    let mark = process.mark();
    process.signal(Signal::Term);
    let signalled = Instant::now();
    let gone = wait_socket_gone(socket);
    process.wait_for_line_since(&mark, "1 transfer(s) in flight", SOCKET_GONE_BOUND);
    eprintln!(
        "{}: socket gone {gone:?} after SIGTERM, drain started",
        process.label()
    );
    signalled
}

/// Freezes `push` once it is in flight, SIGTERMs `process` (which serves `socket`), resumes
/// the push, and checks that it still finishes whole in `dest_url` and that the process
/// exits 0 after it.
fn sigterm_lets_push_finish(
    process: &mut Process,
    socket: &Path,
    mut push: Push,
    (source, path): (&SourceStore, &str),
    dest_url: &str,
) {
    let started = Instant::now();
    push.freeze_in_flight();
    let signalled = terminate_while_pushing(process, socket);
    push.signal(Signal::Cont);
    let status = push.wait("SIGTERM");
    let drained = signalled.elapsed();
    assert!(
        status.success(),
        "nix copy failed ({status}) although {} drains; its log:\n{}\n{}'s log:\n{}",
        process.label(),
        push.log_text(),
        process.label(),
        process.log_text()
    );
    assert_copied(source, dest_url, path);
    let exit = process.wait(SHUTDOWN_TIMEOUT);
    assert!(exit.success(), "{} exited with {exit}", process.label());
    eprintln!(
        "TIMING {} drain: push of {} MiB ran {:?} before SIGTERM, finished {drained:?} after \
         it; {} exited {:?} after it",
        process.label(),
        PUSH_LEN >> 20,
        signalled - started,
        process.label(),
        signalled.elapsed()
    );
}

/// alice (no daemon) and bob (with one) in a closed team, and a random file for alice to
/// push into bob's daemon.
struct ClosedPair {
    alice: MeshPeer,
    bob: MeshPeer,
    _team: TeamDir,
    team_file: PathBuf,
    source: SourceStore,
    path: String,
    scratch: ScratchDir,
}

impl ClosedPair {
    /// The nodes (not started) and a random file of `len` bytes made from `seed`.
    fn new(len: usize, seed: u64) -> Self {
        let alice = MeshPeer::new("alice");
        let bob = MeshPeer::with_daemon("bob");
        let team = TeamDir::new();
        let team_file = team.write(
            "team.toml",
            &TeamSpec::closed([alice.member(), bob.member()]),
        );
        let source = SourceStore::new();
        let path = source.add_random_file("big.bin", len, seed);
        Self {
            alice,
            bob,
            _team: team,
            team_file,
            source,
            path,
            scratch: ScratchDir::new("drain"),
        }
    }

    /// Starts both nodes, lets alice's push of the file get going and freezes it (SIGSTOP).
    /// Make the file large (8 × [`PUSH_LEN`]), so that the push is surely mid-NAR when it is
    /// frozen: Nix keeps its connection open after a finished copy, and a frozen finished
    /// copy would only look stalled.
    fn stalled_push(&self) -> (MeshProcess<'_>, MeshProcess<'_>, Push) {
        let alice_node = self.alice.join(&self.team_file, &[]);
        let bob_node = self.bob.join(&self.team_file, &[]);
        self.alice.wait_for_sockets(&["bob"], CONVERGENCE_TIMEOUT);
        let mut push = self.push();
        push.freeze_in_flight();
        (alice_node, bob_node, push)
    }

    /// Starts pushing the file through alice's `peers/bob.sock`.
    fn push(&self) -> Push {
        Push::start(
            &self.source,
            &self.alice.socket_url("bob"),
            &self.path,
            &self.scratch.join("copy.log"),
        )
    }
}

/// Two closed-team nodes: alice (no daemon) pushes into bob's daemon through
/// `peers/bob.sock`; alice gets SIGTERM mid-push. The push finishes whole, and alice leaves
/// after it.
#[test]
fn sigterm_lets_a_mesh_push_in_flight_finish() {
    if !require_nix("sigterm_lets_a_mesh_push_in_flight_finish") {
        return;
    }
    let pair = ClosedPair::new(PUSH_LEN, 11);
    let (alice, bob) = (&pair.alice, &pair.bob);
    let mut alice_node = alice.join(&pair.team_file, &[]);
    let _bob_node = bob.join(&pair.team_file, &[]);
    alice.wait_for_sockets(&["bob"], CONVERGENCE_TIMEOUT);

    sigterm_lets_push_finish(
        &mut alice_node.process,
        &alice.socket("bob"),
        pair.push(),
        (&pair.source, &pair.path),
        &bob.daemon().store_url(),
    );
}

/// `n2p client` gets SIGTERM mid-push: the push finishes whole, and the client exits 0
/// after it.
#[test]
fn sigterm_lets_a_client_push_in_flight_finish() {
    if !require_nix("sigterm_lets_a_client_push_in_flight_finish") {
        return;
    }
    let source = SourceStore::new();
    let path = source.add_random_file("big.bin", PUSH_LEN, 12);
    let scratch = ScratchDir::new("drain");
    let daemon = NixDaemon::start();
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(daemon.socket_path()));
    let client_home = TempHome::new(N2P);
    let mut client = client_home.client(&server.long_address, &scratch.join("c.sock"));
    client.wait_until_listening();

    let push = Push::start(
        &source,
        &client.store_url(),
        &path,
        &scratch.join("copy.log"),
    );
    let socket = client.socket.clone();
    sigterm_lets_push_finish(
        &mut client.process,
        &socket,
        push,
        (&source, &path),
        &daemon.store_url(),
    );
}

/// A push that stalls (its `nix copy` frozen with SIGSTOP) for most of alice's drain bound
/// after SIGTERM cannot finish in it: alice aborts it and exits; `nix copy` fails, saying
/// why, and bob's daemon has no valid path.
///
/// `nix copy` is resumed [`RESUME_BEFORE_BOUND`] before the bound, so that the abort hits a
/// running Nix, as it would in life. The next test aborts a frozen one.
#[test]
fn a_stalled_push_is_aborted_after_the_drain_bound() {
    if !require_nix("a_stalled_push_is_aborted_after_the_drain_bound") {
        return;
    }
    abort_stalled_push(Resume::BeforeTheBound);
}

/// As above, but `nix copy` stays frozen until alice has aborted it and exited. Nix 2.8
/// used to exit 0 without the path here (twice in about ten runs): on resuming, its reader
/// thread met the closed socket first, and its uploading thread took that end of file for
/// the end of its own input. alice now tells it, in the protocol, that the push was cut.
#[test]
fn a_push_frozen_through_the_abort_fails_when_resumed() {
    if !require_nix("a_push_frozen_through_the_abort_fails_when_resumed") {
        return;
    }
    abort_stalled_push(Resume::AfterTheExit);
}

/// When [`abort_stalled_push`] resumes the frozen `nix copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// [`RESUME_BEFORE_BOUND`] before alice's drain bound.
    BeforeTheBound,
    /// Once alice has aborted the push and exited.
    AfterTheExit,
}

/// Freezes alice's push into bob, SIGTERMs alice, resumes the push as `resume` says, and
/// checks that alice aborts it after the drain bound and exits 0, that `nix copy` fails
/// with alice's reason, and that bob's daemon has no valid path.
fn abort_stalled_push(resume: Resume) {
    let pair = ClosedPair::new(8 * PUSH_LEN, 13);
    let (alice, bob) = (&pair.alice, &pair.bob);
    let (mut alice_node, _bob_node, mut push) = pair.stalled_push();
    let mark = alice_node.process.mark();
    let signalled = terminate_while_pushing(&alice_node.process, &alice.socket("bob"));
    if resume == Resume::BeforeTheBound {
        std::thread::sleep((DRAIN_BOUND - RESUME_BEFORE_BOUND).saturating_sub(signalled.elapsed()));
        push.signal(Signal::Cont);
    }
    alice_node.process.wait_for_line_since(
        &mark,
        "aborting 1 transfer(s) still in flight",
        DRAIN_BOUND + SHUTDOWN_TIMEOUT,
    );
    let aborted = signalled.elapsed();
    assert!(
        aborted >= DRAIN_BOUND,
        "alice aborted after {aborted:?}, before the drain bound {DRAIN_BOUND:?}"
    );
    let exit = alice_node.process.wait(SHUTDOWN_TIMEOUT);
    let exited = signalled.elapsed();
    assert!(exit.success(), "alice exited with {exit}");
    if resume == Resume::AfterTheExit {
        push.signal(Signal::Cont);
    }
    let status = push.wait("alice aborted it");
    let arrived = path_info(&bob.daemon().store_url(), &pair.path);
    assert!(
        !status.success() && arrived.is_none(),
        "nix copy exited with {status} although alice aborted it, and the path is {} in bob's \
         store; its log:\n{}\nalice's log:\n{}",
        if arrived.is_some() {
            "valid"
        } else {
            "not valid"
        },
        push.log_text(),
        alice_node.process.log_text()
    );
    assert!(
        push.log_text().contains(ABORT_TOLD),
        "nix copy failed without alice's reason ({ABORT_TOLD:?}); its log:\n{}",
        push.log_text()
    );
    assert_not_valid(&bob.daemon().store_url(), &pair.path);
    eprintln!(
        "TIMING drain bound ({resume:?}): alice aborted the stalled push {aborted:?} after \
         SIGTERM and exited {exited:?} after it; nix copy: {}",
        push.log_text().lines().last().unwrap_or_default()
    );
}

/// What Nix shows of an abort: the error n2p gives it in the protocol.
const ABORT_TOLD: &str = "n2p: the n2p node serving this socket is shutting down";

/// In an open team, an impostor taking bob's name renames alice's socket for bob while
/// alice pushes through it: `bob.sock` goes, `bob-<id>.sock` comes, and the push in flight
/// through the removed socket still finishes whole.
///
/// The push is frozen (SIGSTOP) while the impostor starts and is heard, and resumed once
/// the socket is gone, so the transfer is in flight across the rename however fast or
/// loaded the machine is.
#[test]
fn a_push_in_flight_survives_its_socket_being_renamed() {
    if !require_nix("a_push_in_flight_survives_its_socket_being_renamed") {
        return;
    }
    let root = ScratchDir::new("drain");
    let team = TeamDir::new();
    let team_file = team.write("team.toml", &TeamSpec::open());
    let alice = MeshPeer::new_in(root.path(), "alice");
    let bob = MeshPeer::with_daemon("bob");
    let alice_node = alice.join(&team_file, &[]);
    alice_node.wait_until_joined();
    let ticket = alice.invite();
    let _bob_node = bob.join(&team_file, &["--ticket", &ticket]);
    alice.wait_for_sockets(&["bob"], CONVERGENCE_TIMEOUT);
    let source = SourceStore::new();
    let path = source.add_random_file("big.bin", PUSH_LEN, 14);

    let mut push = Push::start(
        &source,
        &alice.socket_url("bob"),
        &path,
        &root.join("copy.log"),
    );
    let mark = alice_node.process.mark();
    push.freeze_in_flight();
    let forgers = Forgers::join(root.path(), &team_file, &ticket, &["bob"]);
    let bob_real = format!("bob-{}", bob.short_id());
    let bob_fake = format!("bob-{}", forgers.nodes[0].short_id());
    let took = alice.wait_for_sockets(&[&bob_real, &bob_fake], CONVERGENCE_TIMEOUT);
    alice_node.process.wait_for_line_since(
        &mark,
        "transfer(s) in flight may finish",
        SOCKET_GONE_BOUND,
    );
    eprintln!("alice renamed bob's socket {took:?} into the wait, with the push in flight");
    push.signal(Signal::Cont);
    let status = push.wait("the rename");
    assert!(
        status.success(),
        "nix copy through the removed socket failed ({status}); its log:\n{}\nalice's log:\n{}",
        push.log_text(),
        alice_node.process.log_text()
    );
    assert_copied(&source, &bob.daemon().store_url(), &path);
    // The new socket works too.
    let small = source.add_file("after-rename.txt", b"after the rename\n");
    n2p_testkit::nix::assert_copy_succeeds(&source, &alice.socket_url(&bob_real), &[&small]);
    assert_copied(&source, &bob.daemon().store_url(), &small);
}

/// Longest a node may take to exit after a second SIGTERM: it does not wait for the rest.
const SECOND_SIGNAL_EXIT_BOUND: Duration = Duration::from_secs(3);

/// A second SIGTERM during the drain ends the node at once: alice, draining a push of
/// 256 MiB, exits within [`SECOND_SIGNAL_EXIT_BOUND`] of the second signal instead of
/// waiting for the push or the drain bound, `nix copy` fails, and the cut push leaves no
/// valid path in bob's store. (The first signal's handler replaces the default action, so
/// without this a second signal would do nothing.)
///
/// The push is frozen while the first signal is taken, so that it is surely in flight, and
/// resumed just before the second, so that the cut hits a running Nix (see
/// [`a_stalled_push_is_aborted_after_the_drain_bound`] for why a frozen one would not do).
#[test]
fn a_second_sigterm_ends_the_drain_at_once() {
    if !require_nix("a_second_sigterm_ends_the_drain_at_once") {
        return;
    }
    let pair = ClosedPair::new(8 * PUSH_LEN, 15);
    let (alice, bob) = (&pair.alice, &pair.bob);
    let (mut alice_node, _bob_node, mut push) = pair.stalled_push();
    let first = terminate_while_pushing(&alice_node.process, &alice.socket("bob"));
    push.signal(Signal::Cont);
    let mark = alice_node.process.mark();
    alice_node.process.signal(Signal::Term);
    let second = Instant::now();
    alice_node.process.wait_for_line_since(
        &mark,
        "SIGTERM received again",
        SECOND_SIGNAL_EXIT_BOUND,
    );
    let exit = alice_node.process.wait(SECOND_SIGNAL_EXIT_BOUND);
    let exited = second.elapsed();
    assert!(exit.success(), "alice exited with {exit}");
    assert!(
        first.elapsed() < DRAIN_BOUND,
        "alice took {:?} from the first SIGTERM, as long as the drain bound {DRAIN_BOUND:?}",
        first.elapsed()
    );
    let status = push.wait("alice exited");
    assert!(
        !status.success(),
        "nix copy succeeded although alice was made to exit mid-push; its log:\n{}",
        push.log_text()
    );
    assert_not_valid(&bob.daemon().store_url(), &pair.path);
    eprintln!("TIMING alice exited {exited:?} after the second SIGTERM");
}
