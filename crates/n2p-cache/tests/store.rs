//! The store protocol end to end in one process: a real nix-daemon on a chroot store behind
//! a [`StoreService`] on a real iroh endpoint, asked by a [`StoreClient`] on another.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use iroh::{Endpoint, SecretKey, protocol::Router};
use n2p_cache::{
    client::{Peer, PullError, StoreClient},
    facade::{Facade, FacadeConfig, PeerSource, nar_url},
    proto::STORE_ALPN,
    server::{StoreLimits, StoreService},
};
use n2p_core::{
    access::{AccessPolicy, AccessSecret, Permission, ServerAuthority},
    daemon::DialError,
    endpoint::{EndpointOptions, bind_endpoint},
};
use n2p_nix::{NarHash, StoreDir, StorePath, nar::copy_nar};
use n2p_testkit::http;
use n2p_testkit::nix::{
    NixDaemon, SourceStore, assert_copy_succeeds, nix_command, path_metadata, require_nix,
};
use n2p_testkit::proc::expect_success;
use n2p_testkit::procfs::children;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn endpoint(seed: u8, alpns: Vec<Vec<u8>>) -> Result<Endpoint, Box<dyn std::error::Error>> {
    Ok(bind_endpoint(
        SecretKey::from_bytes(&[seed; 32]),
        alpns,
        &EndpointOptions::loopback(),
    )
    .await?)
}

struct Served {
    router: Router,
    service: StoreService,
    key: n2p_nix::SecretKey,
    secret: AccessSecret,
}

async fn serve(daemon: &NixDaemon) -> Result<Served, Box<dyn std::error::Error>> {
    serve_with(daemon, StoreLimits::default()).await
}

async fn serve_with(
    daemon: &NixDaemon,
    limits: StoreLimits,
) -> Result<Served, Box<dyn std::error::Error>> {
    let endpoint = endpoint(1, vec![STORE_ALPN.to_vec()]).await?;
    let secret = AccessSecret::from_bytes([3; 32]);
    let key = n2p_nix::SecretKey::from_seed("bob-n2p-1", [4; 32]);
    let service = StoreService::new(
        daemon.socket_path().to_owned(),
        StoreDir::default(),
        AccessPolicy::new(
            Arc::new(ServerAuthority::new(secret.clone())),
            Permission::Pull,
        ),
        endpoint.id(),
        key.clone(),
        limits,
    );
    let router = Router::builder(endpoint)
        .accept(STORE_ALPN, service.clone())
        .spawn();
    Ok(Served {
        router,
        service,
        key,
        secret,
    })
}

impl Served {
    /// The served node as a peer named bob, with the right secret.
    fn peer(&self) -> Peer {
        Peer {
            name: "bob".into(),
            addr: self.router.endpoint().addr(),
            secret: self.secret.clone(),
        }
    }
}

fn basename(full: &str) -> StorePath {
    StoreDir::default()
        .parse_path(full)
        .unwrap_or_else(|e| panic!("{full}: {e}"))
}

#[tokio::test]
async fn narinfo_and_nar_come_whole_signed_and_only_for_the_right_hash() -> TestResult {
    if !require_nix("narinfo_and_nar_come_whole_signed_and_only_for_the_right_hash") {
        return Ok(());
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let dep = source.add_file("dep", b"dependency\n");
    let top = source.add_text_with_references("top", "top", &[&dep]);
    let blob = source.add_random_file("blob", 3 << 20, 11);
    assert_copy_succeeds(&source, &daemon.store_url(), &[&top, &blob]);
    let served = serve(&daemon).await?;

    let client = StoreClient::new(endpoint(2, vec![]).await?);
    let peer = served.peer();
    let (top_path, blob_path) = (basename(&top), basename(&blob));
    let missing = "0".repeat(32);
    let infos = client
        .narinfos(
            &peer,
            &[
                top_path.hash_part().to_owned(),
                missing.clone(),
                "not-a-hash".to_owned(),
                blob_path.hash_part().to_owned(),
            ],
        )
        .await?;
    assert_eq!(infos.len(), 4);
    assert!(infos[1].is_none() && infos[2].is_none());
    let top_info = infos[0].clone().expect("top is valid");
    let blob_info = infos[3].clone().expect("blob is valid");
    let want = path_metadata(&daemon.store_url(), &top).expect("top in bob's store");
    assert_eq!(top_info.store_path, top_path);
    assert_eq!(top_info.nar_hash.to_sri(), want.nar_hash);
    assert_eq!(top_info.nar_size, want.nar_size);
    assert_eq!(top_info.references, vec![basename(&dep)]);
    assert_eq!(top_info.ca, want.ca);
    // Signed by the serving node.
    assert!(top_info.signed_by_any(&StoreDir::default(), &[served.key.public()]));

    // The NAR: whole, with the announced size and hash, then a clean end.
    let mut download = client.nar(&peer, &blob_path, blob_info.nar_hash).await?;
    assert_eq!(download.nar_size, blob_info.nar_size);
    let mut bytes = Vec::new();
    while let Some(chunk) = download.next_chunk(1 << 20).await? {
        bytes.extend_from_slice(&chunk);
    }
    download.completed();
    assert_eq!(bytes.len() as u64, blob_info.nar_size);
    assert_eq!(NarHash::of(&bytes), blob_info.nar_hash);
    let summary = copy_nar(&mut &bytes[..], &mut tokio::io::sink()).await?;
    assert_eq!(summary.hash, blob_info.nar_hash);

    // Another NAR hash, or a path bob does not have: refused, no bytes.
    let wrong = client.nar(&peer, &blob_path, NarHash([0; 32])).await;
    assert!(
        matches!(wrong, Err(PullError::HashMismatch(_))),
        "{wrong:?}"
    );
    let absent = basename(&format!("/nix/store/{missing}-absent"));
    let none = client.nar(&peer, &absent, blob_info.nar_hash).await;
    assert!(matches!(none, Err(PullError::NotFound(_))), "{none:?}");

    client.close().await;
    served.router.shutdown().await?;
    Ok(())
}

/// A peer that left the live set is forgotten (dialer, idle task, connection) only once
/// nothing is under way with it: a NAR still downloading keeps it; a later lookup connects
/// again.
#[tokio::test]
async fn a_peer_that_left_is_forgotten_once_nothing_is_under_way() -> TestResult {
    if !require_nix("a_peer_that_left_is_forgotten_once_nothing_is_under_way") {
        return Ok(());
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let blob = source.add_random_file("blob", 1 << 20, 12);
    assert_copy_succeeds(&source, &daemon.store_url(), &[&blob]);
    let served = serve(&daemon).await?;
    let client = StoreClient::new(endpoint(5, vec![]).await?);
    let peer = served.peer();
    let blob_path = basename(&blob);
    let hash_parts = [blob_path.hash_part().to_owned()];

    let info = client.narinfos(&peer, &hash_parts).await?[0]
        .clone()
        .expect("blob is valid");
    let mut download = client.nar(&peer, &blob_path, info.nar_hash).await?;
    client.forget_idle_peers(&[peer.id()]).await;
    assert_eq!(client.peers_known(), 1, "forgot a live peer");
    client.forget_idle_peers(&[]).await;
    assert_eq!(
        client.peers_known(),
        1,
        "forgot a peer that left while its NAR was downloading"
    );
    let mut received = 0;
    while let Some(chunk) = download.next_chunk(1 << 20).await? {
        received += chunk.len() as u64;
    }
    download.completed();
    assert_eq!(received, info.nar_size, "the NAR was cut");

    client.forget_idle_peers(&[]).await;
    assert_eq!(
        client.peers_known(),
        0,
        "kept a peer that left, with nothing under way"
    );
    let again = client.narinfos(&peer, &hash_parts).await?;
    assert!(again[0].is_some(), "no answer after the peer came back");
    assert_eq!(client.peers_known(), 1);

    client.close().await;
    served.router.shutdown().await?;
    Ok(())
}

/// A lookup on a connection made again (after an idle close) resumes the session: it goes
/// out with 0-RTT, the server answers it from the first flight, and the answer is the one
/// a full handshake gets. A server that cannot resume the session (a new process, with
/// other ticket keys) refuses the 0-RTT data; the lookup is sent again and answered.
#[tokio::test]
async fn a_lookup_on_a_resumed_session_goes_out_with_0rtt_and_again_if_refused() -> TestResult {
    if !require_nix("a_lookup_on_a_resumed_session_goes_out_with_0rtt_and_again_if_refused") {
        return Ok(());
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let blob = source.add_random_file("blob", 1 << 10, 13);
    assert_copy_succeeds(&source, &daemon.store_url(), &[&blob]);
    let served = serve(&daemon).await?;
    let client = StoreClient::new(endpoint(5, vec![]).await?);
    let hash_parts = [basename(&blob).hash_part().to_owned()];

    let first = client.narinfos(&served.peer(), &hash_parts).await?;
    assert!(first[0].is_some(), "no answer to the first lookup");
    assert_eq!(
        client.early_requests(),
        0,
        "0-RTT without a session to resume"
    );
    assert_eq!(served.service.resumed_connections(), 0);

    // The connection is closed as idle; the next lookup makes it again.
    client.forget_idle_peers(&[]).await;
    let resumed = client.narinfos(&served.peer(), &hash_parts).await?;
    assert_eq!(resumed, first, "another answer on the resumed session");
    assert_eq!(
        client.early_requests(),
        1,
        "the lookup did not go out with 0-RTT"
    );
    assert_eq!(
        served.service.resumed_connections(),
        1,
        "the server did not serve the resumed session from its first flight"
    );

    // The server restarts: same identity, new process.
    client.forget_idle_peers(&[]).await;
    served.router.shutdown().await?;
    let restarted = serve(&daemon).await?;
    let again = client.narinfos(&restarted.peer(), &hash_parts).await?;
    assert_eq!(again, first, "another answer after the refused 0-RTT data");
    assert_eq!(client.early_refused(), 1, "the 0-RTT data was not refused");
    assert_eq!(client.early_requests(), 1);
    assert_eq!(restarted.service.resumed_connections(), 0);

    client.close().await;
    restarted.router.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_wrong_secret_is_refused_before_the_store() -> TestResult {
    if !require_nix("a_wrong_secret_is_refused_before_the_store") {
        return Ok(());
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let path = source.add_file("secret-thing", b"private\n");
    assert_copy_succeeds(&source, &daemon.store_url(), &[&path]);
    let served = serve(&daemon).await?;
    let client = StoreClient::new(endpoint(5, vec![]).await?);
    let peer = Peer {
        name: "bob".into(),
        addr: served.router.endpoint().addr(),
        secret: AccessSecret::from_bytes([9; 32]),
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.narinfos(&peer, &[basename(&path).hash_part().to_owned()]),
    )
    .await?;
    match answer {
        Err(PullError::Dial(DialError::Refused { reason, .. })) => {
            assert_eq!(reason, "wrong access secret")
        }
        // The refusal closes the connection; the stream may see that as a lost read first.
        Err(PullError::Frame(_)) | Err(PullError::Dial(_)) => {}
        other => panic!("a wrong secret got {other:?}"),
    }
    client.close().await;
    served.router.shutdown().await?;
    Ok(())
}

/// The daemon connections a store service keeps are reused (no new daemon worker per
/// request) and closed once idle for the timeout (the worker exits, releasing its
/// temporary roots).
#[tokio::test]
async fn kept_daemon_connections_are_reused_then_closed_when_idle() -> TestResult {
    if !require_nix("kept_daemon_connections_are_reused_then_closed_when_idle") {
        return Ok(());
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let path = source.add_file("kept", b"asked twice\n");
    assert_copy_succeeds(&source, &daemon.store_url(), &[&path]);
    let timeout = Duration::from_secs(2);
    let limits = StoreLimits {
        idle_daemon_timeout: timeout,
        ..StoreLimits::default()
    };
    let served = serve_with(&daemon, limits).await?;
    let client = StoreClient::new(endpoint(2, vec![]).await?);
    let peer = served.peer();
    // With a miss in every request, since only hits are answered from memory.
    let asked = [basename(&path).hash_part().to_owned(), "0".repeat(32)];
    assert!(client.narinfos(&peer, &asked).await?[0].is_some());
    let workers = children(daemon.pid());
    assert_eq!(workers.len(), 1, "one daemon worker after one request");
    for _ in 0..5 {
        assert!(client.narinfos(&peer, &asked).await?[0].is_some());
    }
    assert_eq!(
        children(daemon.pid()),
        workers,
        "later requests reuse the kept connection"
    );
    let idle = Instant::now();
    while !children(daemon.pid()).is_empty() {
        assert!(
            idle.elapsed() < timeout * 3,
            "the idle daemon connection was still open after {:?}",
            idle.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "MEASURED idle daemon worker gone {:?} after the last request",
        idle.elapsed()
    );
    assert!(
        idle.elapsed() >= timeout.saturating_sub(Duration::from_millis(200)),
        "closed before the timeout"
    );
    client.close().await;
    served.router.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn narinfo_hits_are_remembered_misses_are_not_and_nars_always_ask_the_daemon() -> TestResult {
    if !require_nix("narinfo_hits_are_remembered_misses_are_not_and_nars_always_ask_the_daemon") {
        return Ok(());
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let kept = source.add_file("kept", b"asked, then deleted\n");
    let later = source.add_file("later", b"added after a miss\n");
    assert_copy_succeeds(&source, &daemon.store_url(), &[&kept]);
    let served = serve(&daemon).await?;
    let client = StoreClient::new(endpoint(2, vec![]).await?);
    let peer = served.peer();
    let (kept_path, later_path) = (basename(&kept), basename(&later));
    let asked = [
        kept_path.hash_part().to_owned(),
        later_path.hash_part().to_owned(),
    ];
    let infos = client.narinfos(&peer, &asked).await?;
    let kept_info = infos[0].clone().expect("kept is valid");
    assert!(infos[1].is_none(), "later is not in bob's store yet");

    // A miss is not remembered: the path added since is found at once.
    assert_copy_succeeds(&source, &daemon.store_url(), &[&later]);
    let infos = client.narinfos(&peer, &asked).await?;
    assert!(infos[1].is_some(), "a remembered miss hid a new path");

    // A hit is: bob deletes the path, and the repeat within the TTL still announces it
    // (the daemon is not asked again), but its NAR is refused, since a NAR request always
    // asks the daemon whether the path is valid.
    let output = nix_command("nix")
        .args(["store", "delete", "--store", &daemon.store_url(), &kept])
        .output()?;
    expect_success(&output, "nix store delete");
    assert!(path_metadata(&daemon.store_url(), &kept).is_none());
    let infos = client.narinfos(&peer, &asked).await?;
    assert_eq!(
        infos[0].as_ref(),
        Some(&kept_info),
        "the hit was not remembered"
    );
    let nar = client.nar(&peer, &kept_path, kept_info.nar_hash).await;
    assert!(matches!(nar, Err(PullError::NotFound(_))), "{nar:?}");

    client.close().await;
    served.router.shutdown().await?;
    Ok(())
}

/// Lookups of single narinfos made at the same time go to the peer together: 30 at once (10
/// valid paths, 20 misses) take at most a few requests, and each gets its own answer.
#[tokio::test]
async fn simultaneous_narinfo_lookups_share_requests_and_each_gets_its_own_answer() -> TestResult {
    if !require_nix("simultaneous_narinfo_lookups_share_requests_and_each_gets_its_own_answer") {
        return Ok(());
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let paths: Vec<String> = (0..10)
        .map(|i| source.add_file(&format!("p{i}"), format!("path {i}\n").as_bytes()))
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    assert_copy_succeeds(&source, &daemon.store_url(), &refs);
    let served = serve(&daemon).await?;
    let client = Arc::new(StoreClient::new(endpoint(2, vec![]).await?));
    let peer = served.peer();
    let mut asked: Vec<(String, Option<StorePath>)> = paths
        .iter()
        .map(|p| {
            let path = basename(p);
            (path.hash_part().to_owned(), Some(path))
        })
        .collect();
    asked.extend((0..20).map(|i| (format!("{i:0>32}"), None)));
    let answers = futures_util::future::join_all(
        asked
            .iter()
            .map(|(hash_part, _)| client.narinfo(&peer, hash_part)),
    )
    .await;
    for ((hash_part, want), answer) in asked.iter().zip(answers) {
        let got = answer
            .map_err(|e| e.to_string())?
            .map(|info| info.store_path);
        assert_eq!(&got, want, "answer for {hash_part}");
    }
    let requests = client.narinfo_requests();
    assert!(
        requests <= 3,
        "30 simultaneous lookups took {requests} requests"
    );
    Ok(())
}

/// `HEAD` of a NAR URL is answered from the narinfo (its `Content-Length` is the NarSize)
/// without fetching the NAR; a `GET` fetches it; a NAR hash no peer has is a 404.
#[tokio::test]
async fn a_head_of_a_nar_url_fetches_no_nar() -> TestResult {
    if !require_nix("a_head_of_a_nar_url_fetches_no_nar") {
        return Ok(());
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let path = source.add_file("headed", b"asked with HEAD first\n");
    assert_copy_succeeds(&source, &daemon.store_url(), &[&path]);
    let served = serve(&daemon).await?;
    let client = Arc::new(StoreClient::new(endpoint(2, vec![]).await?));
    let peer = served.peer();
    let peers: PeerSource = Arc::new(move || {
        let peer = peer.clone();
        Box::pin(async move { vec![peer] })
    });
    let facade = Facade::new(FacadeConfig::default(), client.clone(), peers);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let facade = facade.clone();
        async move {
            facade
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    let ask = |method: &'static str, url: String| {
        tokio::task::spawn_blocking(move || {
            http::request(method, addr, &url, Duration::from_secs(10))
        })
    };

    let store_path = basename(&path);
    let narinfo = ask("GET", format!("/{}.narinfo", store_path.hash_part())).await??;
    assert_eq!(narinfo.status, 200);
    let text = String::from_utf8(narinfo.body)?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::to_owned)
            .ok_or(format!("no {name} in {text}"))
    };
    let (url, size) = (field("URL: ")?, field("NarSize: ")?);

    let head = ask("HEAD", format!("/{url}")).await??;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(size.as_str()));
    assert!(head.body.is_empty());
    assert_eq!(client.nar_requests(), 0, "a HEAD fetched the NAR");

    let nar = ask("GET", format!("/{url}")).await??;
    assert_eq!(nar.status, 200);
    assert_eq!(nar.body.len().to_string(), size);
    assert_eq!(client.nar_requests(), 1);

    let other = nar_url(&store_path, &NarHash([7; 32]));
    assert_eq!(ask("HEAD", format!("/{other}")).await??.status, 404);
    assert_eq!(client.nar_requests(), 1);

    let _ = stop.send(());
    serving.await??;
    client.close().await;
    served.router.shutdown().await?;
    Ok(())
}

/// A NAR request beyond its peer's slots waits for one only `nar_slot_wait`, then its stream
/// is reset (busy) instead of waiting as long as the NAR in front of it; a freed slot serves
/// the next request whole.
#[tokio::test]
async fn a_nar_request_waits_for_a_slot_only_so_long() -> TestResult {
    if !require_nix("a_nar_request_waits_for_a_slot_only_so_long") {
        return Ok(());
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    // Far larger than a stream's flow-control window, so an unread NAR holds its slot.
    let big = source.add_file("big", &vec![0x5a; 24 << 20]);
    assert_copy_succeeds(&source, &daemon.store_url(), &[&big]);
    let wait = Duration::from_millis(300);
    let limits = StoreLimits {
        nars_per_peer: 1,
        nar_slot_wait: wait,
        ..StoreLimits::default()
    };
    let served = serve_with(&daemon, limits).await?;
    let client = StoreClient::new(endpoint(2, vec![]).await?);
    let peer = served.peer();
    let path = basename(&big);
    let info = client
        .narinfos(&peer, &[path.hash_part().to_owned()])
        .await?
        .remove(0)
        .ok_or("the big path is valid")?;

    let first = client.nar(&peer, &path, info.nar_hash).await?;
    let started = Instant::now();
    let second = client.nar(&peer, &path, info.nar_hash).await;
    let took = started.elapsed();
    let error = second.err().ok_or("a second NAR got the only slot")?;
    assert!(matches!(error, PullError::Busy), "{error}");
    assert!(
        took >= wait && took < wait + Duration::from_secs(5),
        "refused after {took:?}"
    );

    drop(first);
    let mut third = client.nar(&peer, &path, info.nar_hash).await?;
    let mut received = 0u64;
    while let Some(chunk) = third.next_chunk(1 << 20).await? {
        received += chunk.len() as u64;
    }
    assert_eq!(received, info.nar_size);
    third.completed();

    client.close().await;
    served.router.shutdown().await?;
    Ok(())
}
