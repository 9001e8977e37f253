//! The worker-protocol client against a real nix-daemon (Debian's Nix 2.8, protocol 1.34)
//! on a chroot store: handshake, every query compared with `nix path-info`, NARs of a
//! 64 MiB file and a 2,000-file directory, operations after a NAR on the same connection,
//! the daemon's errors, and the signature probe against a daemon that trusts us and one
//! that does not.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use n2p_nix::nar::NarSummary;
use n2p_nix::worker::CLIENT_VERSION;
use n2p_nix::worker::SignatureCheck;
use n2p_nix::{DaemonClient, NarHash, PathInfo, StoreDir, StorePath, WorkerError};
use n2p_testkit::dir::ScratchDir;
use n2p_testkit::nix::{
    NIX_COMMAND_TIMEOUT, NixDaemon, SourceStore, assert_copy_succeeds, nix_command, path_metadata,
    require_nix, try_add_paths,
};
use n2p_testkit::proc::{expect_success, run_bounded};
use n2p_testkit::rand::XorShift64;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// Longest any one daemon operation may take here (the 64 MiB NAR included).
const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a daemon operation with a deadline.
async fn bounded<T>(what: &str, op: impl Future<Output = T>) -> T {
    tokio::time::timeout(OP_TIMEOUT, op)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {OP_TIMEOUT:?}"))
}

async fn connect<S>(stream: S) -> DaemonClient<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded(
        "the handshake",
        DaemonClient::handshake(stream, StoreDir::default()),
    )
    .await
    .expect("handshake with the daemon")
}

async fn connect_to(daemon: &NixDaemon) -> DaemonClient<UnixStream> {
    connect(
        UnixStream::connect(daemon.socket_path())
            .await
            .expect("connecting to the daemon's socket"),
    )
    .await
}

fn store_path(full: &str) -> StorePath {
    StoreDir::default()
        .parse_path(full)
        .expect("a store path from nix")
}

/// A path that is valid nowhere.
fn missing_path() -> StorePath {
    store_path("/nix/store/00000000000000000000000000000000-missing")
}

/// Signs `path` in `source` with a new key called `name` (`nix key generate-secret`,
/// `nix store sign`).
fn sign(source: &SourceStore, path: &str, name: &str) {
    let keys = ScratchDir::new("keys");
    let key_file = keys.join("key.sec");
    let secret = expect_success(
        &run_bounded(
            nix_command("nix").args(["key", "generate-secret", "--key-name", name]),
            NIX_COMMAND_TIMEOUT,
            "nix key generate-secret",
        ),
        "nix key generate-secret",
    );
    std::fs::write(&key_file, secret).expect("writing the key file");
    let key_file = key_file.to_str().expect("a UTF-8 temp path");
    expect_success(
        &run_bounded(
            nix_command("nix").args([
                "store",
                "sign",
                "--store",
                &source.url(),
                "--key-file",
                key_file,
                path,
            ]),
            NIX_COMMAND_TIMEOUT,
            "nix store sign",
        ),
        "nix store sign",
    );
}

/// A daemon holding `dep` and `top` (a text file referring to `dep`, signed).
struct Closure {
    daemon: NixDaemon,
    dep: String,
    top: String,
}

fn closure_in_daemon() -> Closure {
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let dep = source.add_text_with_references("dep", "a dependency", &[]);
    let top = source.add_text_with_references("top", "uses", &[&dep]);
    sign(&source, &top, "n2p-worker-test-1");
    assert_copy_succeeds(&source, &daemon.store_url(), &[&dep, &top]);
    Closure { daemon, dep, top }
}

/// Checks `info` against `nix path-info --json --sigs` on the daemon.
fn assert_matches_nix(info: &PathInfo, store_url: &str, full: &str) {
    let nix = path_metadata(store_url, full).expect("valid in the daemon");
    assert_eq!(StoreDir::default().display(&info.path), full);
    assert_eq!(
        info.nar_hash,
        NarHash::from_str(&nix.nar_hash).expect("nix's narHash")
    );
    assert_eq!(info.nar_size, nix.nar_size);
    let references: Vec<String> = info
        .references
        .iter()
        .map(|r| StoreDir::default().display(r))
        .collect();
    assert_eq!(references, nix.references);
    assert_eq!(info.sigs, nix.signatures);
    assert_eq!(info.ca, nix.ca);
    assert_eq!(info.deriver, None, "builtins.toFile paths have no deriver");
    assert!(info.registration_time > 1_600_000_000, "{info:?}");
}

#[tokio::test]
async fn handshake_and_queries_match_nix() {
    if !require_nix("handshake_and_queries_match_nix") {
        return;
    }
    let Closure { daemon, dep, top } = closure_in_daemon();
    let mut client = connect_to(&daemon).await;
    let nix_version = client.daemon_nix_version().map(str::to_owned);
    if nix_version.as_deref() == Some("2.8.0") {
        assert_eq!(client.version(), (1, 34));
        assert_eq!(client.trusted(), None, "1.34 has no trust flag");
    }
    assert!(client.version() <= CLIENT_VERSION);
    let top_path = store_path(&top);
    let dep_path = store_path(&dep);

    let info = bounded("QueryPathInfo", client.query_path_info(&top_path))
        .await
        .expect("QueryPathInfo")
        .expect("top is valid");
    assert_matches_nix(&info, &daemon.store_url(), &top);
    assert_eq!(info.references, std::slice::from_ref(&dep_path));
    assert_eq!(info.sigs.len(), 1);
    assert!(info.sigs[0].starts_with("n2p-worker-test-1:"));
    assert!(info.ca.as_deref().is_some_and(|ca| ca.starts_with("text:")));

    let missing = bounded("QueryPathInfo", client.query_path_info(&missing_path()))
        .await
        .expect("QueryPathInfo of a missing path");
    assert_eq!(missing, None);

    let found = bounded(
        "QueryPathFromHashPart",
        client.query_path_from_hash_part(top_path.hash_part()),
    )
    .await
    .expect("QueryPathFromHashPart");
    assert_eq!(found, Some(top_path.clone()));
    let none = bounded(
        "QueryPathFromHashPart",
        client.query_path_from_hash_part(missing_path().hash_part()),
    )
    .await
    .expect("QueryPathFromHashPart of a missing hash");
    assert_eq!(none, None);

    let asked = [top_path.clone(), missing_path(), dep_path.clone()];
    let mut valid = bounded("QueryValidPaths", client.query_valid_paths(&asked))
        .await
        .expect("QueryValidPaths");
    valid.sort();
    let mut expected = vec![top_path.clone(), dep_path];
    expected.sort();
    assert_eq!(valid, expected);

    bounded("AddTempRoot", client.add_temp_root(&top_path))
        .await
        .expect("AddTempRoot");
    assert!(client.is_usable());
}

/// Streams `path`'s NAR into a counting sink and checks it against QueryPathInfo on the same
/// connection; returns the summary and the time the NAR took.
async fn nar_matches_info(
    client: &mut DaemonClient<UnixStream>,
    full: &str,
) -> (NarSummary, Duration) {
    let path = store_path(full);
    let info = bounded("QueryPathInfo", client.query_path_info(&path))
        .await
        .expect("QueryPathInfo")
        .expect("valid");
    let mut sink = tokio::io::sink();
    let started = Instant::now();
    let summary = bounded("NarFromPath", client.nar_from_path(&path, &mut sink))
        .await
        .expect("NarFromPath");
    let took = started.elapsed();
    assert_eq!(summary.size, info.nar_size, "{full}");
    assert_eq!(summary.hash, info.nar_hash, "{full}");
    (summary, took)
}

#[tokio::test]
async fn nars_of_a_large_file_and_a_large_directory_stream_whole() {
    if !require_nix("nars_of_a_large_file_and_a_large_directory_stream_whole") {
        return;
    }
    let daemon = NixDaemon::start();
    // Added straight through the daemon (one import each, not a local store and a copy).
    let staging = ScratchDir::new("staging");
    XorShift64::new(7)
        .write_file(&staging.join("big"), 64 << 20)
        .expect("writing the big file");
    std::fs::create_dir(staging.join("many")).expect("mkdir");
    for i in 0..2000 {
        std::fs::write(
            staging.join("many").join(format!("f{i:05}")),
            format!("{i}\n"),
        )
        .expect("writing a small file");
    }
    std::fs::write(staging.join("small"), "small\n").expect("writing");
    let files = ["big", "many", "small"].map(|name| staging.join(name));
    let [big, tree, small]: [String; 3] =
        try_add_paths(&daemon.store_url(), &files, NIX_COMMAND_TIMEOUT)
            .unwrap_or_else(|failure| panic!("{failure}"))
            .try_into()
            .expect("three paths");

    let mut client = connect_to(&daemon).await;
    let (summary, took) = nar_matches_info(&mut client, &big).await;
    assert!(summary.size > 64 << 20);
    eprintln!(
        "64 MiB NAR: {} bytes in {took:?} ({:.0} MiB/s)",
        summary.size,
        summary.size as f64 / took.as_secs_f64() / f64::from(1 << 20)
    );
    let (_, took) = nar_matches_info(&mut client, &tree).await;
    eprintln!("2,000-file NAR in {took:?}");
    // Two NARs in a row, then other operations: nothing was read past either NAR.
    nar_matches_info(&mut client, &small).await;
    nar_matches_info(&mut client, &small).await;
    let valid = bounded(
        "QueryValidPaths",
        client.query_valid_paths(&[store_path(&tree)]),
    )
    .await
    .expect("QueryValidPaths after NARs");
    assert_eq!(valid, [store_path(&tree)]);
}

#[tokio::test]
async fn daemon_errors_are_remote_errors() {
    if !require_nix("daemon_errors_are_remote_errors") {
        return;
    }
    let Closure { daemon, top, .. } = closure_in_daemon();
    let mut client = connect_to(&daemon).await;

    // An error inside the operation's work: the daemon goes on with the next operation.
    match bounded(
        "QueryPathFromHashPart",
        client.query_path_from_hash_part("tooshort"),
    )
    .await
    {
        Err(WorkerError::Remote(message)) => {
            assert!(message.contains("hash part"), "{message}")
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert!(client.is_usable());
    nar_matches_info(&mut client, &top).await;

    // NarFromPath fails after the daemon's STDERR_LAST, where the NAR should be; the daemon
    // then closes the connection, and the client says so.
    match bounded(
        "NarFromPath",
        client.nar_from_path(&missing_path(), &mut tokio::io::sink()),
    )
    .await
    {
        Err(WorkerError::Remote(message)) => {
            assert!(message.contains("-missing"), "{message}")
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert!(!client.is_usable());
    match client.query_path_info(&store_path(&top)).await {
        Err(WorkerError::Protocol(message)) => assert!(message.contains("unusable"), "{message}"),
        other => panic!("a broken connection was used: {other:?}"),
    }
    // A new connection works.
    let mut client = connect_to(&daemon).await;
    nar_matches_info(&mut client, &top).await;
}

/// The name of the user running the tests, as `trusted-users` wants it.
fn me() -> String {
    let output = run_bounded(Command::new("id").arg("-un"), NIX_COMMAND_TIMEOUT, "id -un");
    expect_success(&output, "id -un").trim().to_owned()
}

#[tokio::test]
async fn the_signature_probe_tells_a_trusting_daemon_and_adds_nothing() {
    if !require_nix("the_signature_probe_tells_a_trusting_daemon_and_adds_nothing") {
        return;
    }
    let probe = store_path("/nix/store/00000000000000000000000000000000-n2p-test-probe");
    for (config, trusted) in [
        ("trusted-users = n2p-test-nobody".to_owned(), false),
        (format!("trusted-users = {}", me()), true),
    ] {
        let daemon = NixDaemon::start_with_config(&config);
        let mut client = connect_to(&daemon).await;
        assert_eq!(
            client.trusted(),
            None,
            "Nix 2.8 does not say in the handshake"
        );
        let answer = bounded(
            "AddToStoreNar probe",
            client.probe_signature_check(probe.name()),
        )
        .await
        .expect("the daemon's refusal");
        match (&answer, trusted) {
            (SignatureCheck::Enforced(message), false) => {
                assert!(message.contains("signature"), "{message}")
            }
            (SignatureCheck::Skipped(message), true) => {
                assert!(message.contains("Nix archive"), "{message}")
            }
            _ => panic!("{config}: {answer:?}"),
        }
        // The daemon read the whole request: the same connection answers the next query,
        // and the path was not added.
        assert!(client.is_usable());
        let valid = bounded(
            "QueryValidPaths",
            client.query_valid_paths(std::slice::from_ref(&probe)),
        )
        .await
        .expect("QueryValidPaths after the probe");
        assert!(valid.is_empty(), "{config}: the probe added {valid:?}");
    }
}

#[tokio::test]
async fn a_peer_that_is_not_a_daemon_fails_the_handshake() {
    let (ours, mut theirs) = tokio::io::duplex(1024);
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        theirs.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await
    });
    match bounded(
        "the handshake",
        DaemonClient::handshake(ours, StoreDir::default()),
    )
    .await
    {
        Err(WorkerError::Handshake(message)) => assert!(message.contains("not a nix-daemon")),
        other => panic!("expected a handshake error, got {other:?}"),
    }
    server.await.expect("task").expect("write");
}

/// The NAR and error checks of the tests above against a daemon started by hand (e.g. a
/// newer Nix in a chroot, see `record_handshake_and_query_path_info`):
/// `N2P_RECORD_SOCKET=... N2P_RECORD_PATH=... cargo test -p n2p-nix --test daemon external -- --ignored`.
#[tokio::test]
#[ignore = "needs a daemon started by hand"]
async fn external_daemon_nar_and_errors() {
    let socket = std::env::var("N2P_RECORD_SOCKET").expect("N2P_RECORD_SOCKET");
    let top = std::env::var("N2P_RECORD_PATH").expect("N2P_RECORD_PATH");
    let connect_external =
        async || connect(UnixStream::connect(&socket).await.expect("connecting")).await;
    let mut client = connect_external().await;
    println!(
        "Nix {:?}, protocol {:?}, trusted {:?}",
        client.daemon_nix_version(),
        client.version(),
        client.trusted()
    );
    nar_matches_info(&mut client, &top).await;
    match client.query_path_from_hash_part("tooshort").await {
        Err(WorkerError::Remote(message)) => println!("remote error, usable: {message}"),
        Ok(found) => println!("no error, {found:?}"),
        Err(other) => panic!("{other}"),
    }
    assert!(client.is_usable());
    nar_matches_info(&mut client, &top).await;
    match client
        .nar_from_path(&missing_path(), &mut tokio::io::sink())
        .await
    {
        Err(WorkerError::Remote(message)) => println!("NarFromPath of a missing path: {message}"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert!(!client.is_usable());
    let mut client = connect_external().await;
    nar_matches_info(&mut client, &top).await;
}

/// A stream that keeps a copy of everything read from it and written to it.
struct Tee<S> {
    inner: S,
    read: Vec<u8>,
    written: Vec<u8>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tee<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read.extend_from_slice(&buf.filled()[before..]);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tee<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.written.extend_from_slice(&buf[..n]);
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Records a handshake and one QueryPathInfo of the `top` path of [`closure_in_daemon`]
/// into `tests/fixtures/daemon-<nix version>.{from-daemon,from-client}.bin`, which the
/// worker's unit tests replay. Run by hand:
/// `N2P_RECORD_SOCKET=/path/daemon.sock cargo test -p n2p-nix --test daemon -- --ignored`
/// records from a daemon already holding the closure (e.g. a newer Nix in a chroot); without
/// the variable, from a fresh Nix 2.8 daemon.
#[tokio::test]
#[ignore = "records fixtures; run by hand"]
async fn record_handshake_and_query_path_info() {
    let (socket, top, _daemon) = match std::env::var("N2P_RECORD_SOCKET") {
        Ok(socket) => (
            socket.into(),
            std::env::var("N2P_RECORD_PATH").expect("N2P_RECORD_PATH: the path to query"),
            None,
        ),
        Err(_) => {
            let closure = closure_in_daemon();
            let socket = closure.daemon.socket_path().to_owned();
            (socket, closure.top, Some(closure.daemon))
        }
    };
    let stream = UnixStream::connect(&socket).await.expect("connecting");
    let mut tee = Tee {
        inner: stream,
        read: Vec::new(),
        written: Vec::new(),
    };
    let mut client = connect(&mut tee).await;
    let info = client
        .query_path_info(&store_path(&top))
        .await
        .expect("QueryPathInfo")
        .expect("valid");
    let version = client
        .daemon_nix_version()
        .expect("a daemon that says its version")
        .to_owned();
    drop(client);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::write(
        dir.join(format!("daemon-{version}.from-daemon.bin")),
        &tee.read,
    )
    .expect("writing");
    std::fs::write(
        dir.join(format!("daemon-{version}.from-client.bin")),
        &tee.written,
    )
    .expect("writing");
    println!("recorded from Nix {version}: {info:#?}");
}
