//! Soak: many short Nix connections through one client socket leave no descriptors and no
//! memory behind in the server or the client.

use std::path::Path;
use std::time::Duration;

use n2p_nix::{DaemonClient, StoreDir};

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::{ServerConfig, TempHome};
use n2p_testkit::nix::{NixDaemon, require_nix};
use n2p_testkit::proc::Process;
use n2p_testkit::procfs::{open_fds, rss_bytes};
use n2p_testkit::wait::poll_until;
use tokio::net::UnixStream;
use tokio::runtime::Runtime;

use crate::harness::N2P;

/// Connections in the soak.
const CONNECTIONS: usize = 500;

/// Connections made before the baseline is taken (lazily built state, allocator pools).
const WARM_UP: usize = 50;

/// How much a process's resident memory may grow over the soak: allocator noise, far below
/// what 450 leaked connections (buffers of 64 KiB each way) would take.
const RSS_SLACK: u64 = 4 << 20;

/// How long descriptors may take to return to the baseline after the last connection.
const FDS_SETTLE: Duration = Duration::from_secs(10);

/// Bound on one handshake through the tunnel.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// 500 sequential daemon connections (each a full worker-protocol handshake with a real
/// nix-daemon, one operation it answers, then a close) through one `n2p client`: the descriptors of both n2p
/// processes return to where they were after the warm-up, and their resident memory stays
/// within [`RSS_SLACK`].
#[test]
fn five_hundred_sequential_connections_leave_fds_and_memory_flat() {
    if !require_nix("five_hundred_sequential_connections_leave_fds_and_memory_flat") {
        return;
    }
    let daemon = NixDaemon::start();
    let server_home = TempHome::new(N2P);
    let server = server_home.server(&ServerConfig::new(daemon.socket_path()));
    let dir = ScratchDir::new("soak");
    let client_home = TempHome::new(N2P);
    let client = client_home.client(&server.long_address, &dir.join("c.sock"));
    client.wait_until_listening();
    let processes = [&server.process, &client.process];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the handshakes");

    for _ in 0..WARM_UP {
        handshake(&runtime, &client.socket);
    }
    let before = processes.map(|p| settled_fds(p, usize::MAX));
    let rss_before = processes.map(rss_of);
    for _ in WARM_UP..CONNECTIONS {
        handshake(&runtime, &client.socket);
    }
    for (i, process) in processes.into_iter().enumerate() {
        let fds = settled_fds(process, before[i]);
        let rss = rss_of(process);
        eprintln!(
            "MEASURED {} after {WARM_UP} / {CONNECTIONS} connections: {} / {fds} fds, \
             VmRSS {} / {} KiB",
            process.label(),
            before[i],
            rss_before[i] / 1024,
            rss / 1024
        );
        assert!(
            rss <= rss_before[i] + RSS_SLACK,
            "the {}'s resident memory grew from {} KiB to {} KiB over {} connections",
            process.label(),
            rss_before[i] / 1024,
            rss / 1024,
            CONNECTIONS - WARM_UP
        );
    }
}

/// The process's descriptor count once it is at most `bound` (or has stopped changing, for
/// `usize::MAX`); panics if it stays above `bound` for [`FDS_SETTLE`].
fn settled_fds(process: &Process, bound: usize) -> usize {
    let pid = process.pid();
    let read = || open_fds(pid).unwrap_or_else(|e| panic!("reading /proc/{pid}/fd: {e}"));
    let mut last = read();
    poll_until(FDS_SETTLE, Duration::from_millis(100), || {
        let now = read();
        let stable = now == last;
        last = now;
        if now <= bound && (bound != usize::MAX || stable) {
            Ok(now)
        } else {
            Err(now)
        }
    })
    .unwrap_or_else(|now| {
        panic!(
            "the {} holds {now} descriptors {FDS_SETTLE:?} after the last connection, {bound} \
             before (a connection leaked)",
            process.label()
        )
    })
}

fn rss_of(process: &Process) -> u64 {
    let pid = process.pid();
    rss_bytes(pid).unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"))
}

/// One daemon connection as Nix opens it: n2p-nix's worker-protocol handshake up to the
/// daemon's `STDERR_LAST`, then a close. Panics with what went wrong.
fn handshake(runtime: &Runtime, socket: &Path) {
    runtime.block_on(async {
        let connect = async {
            let stream = UnixStream::connect(socket).await?;
            let mut daemon = DaemonClient::handshake(stream, StoreDir::default()).await?;
            // The client may answer the handshake itself (its hello cache): an operation
            // makes each connection wait for the daemon, so connections stay sequential.
            daemon.query_valid_paths(&[]).await
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
            Ok(Ok(_valid)) => {}
            Ok(Err(e)) => panic!("the handshake through {}: {e}", socket.display()),
            Err(_) => panic!(
                "no handshake through {} within {HANDSHAKE_TIMEOUT:?}",
                socket.display()
            ),
        }
    });
}
