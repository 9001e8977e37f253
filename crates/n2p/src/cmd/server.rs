//! `n2p server`: share this machine's nix-daemon with clients that hold its address, and let
//! them pull from its store (`n2p/store/1`, for `n2p client --cache`). SIGHUP re-reads
//! `access.secret` (so `n2p rotate-secret` takes effect without a restart).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use iroh::protocol::Router;
use n2p_cache::{
    proto::STORE_ALPN,
    server::{StoreLimits, StoreService},
};
use n2p_core::{
    access::{AccessPolicy, HandshakeGate, Permission, ServerAuthority},
    address::ServerAddress,
    daemon::{DAEMON_ALPN, DaemonService},
    endpoint::RelayChoice,
    identity::load_or_create_access_secret,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    cli::{GlobalArgs, ServerArgs},
    cmd::pull,
    memory::HeapTrimmer,
    setup, shutdown,
};

/// How long to wait for a home relay before printing addresses anyway.
const RELAY_WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn run(global: &GlobalArgs, args: ServerArgs) -> anyhow::Result<()> {
    let home = setup::home(global)?;
    // One node per home: two servers would share one identity and access secret.
    let _lock = home.lock("node")?;
    let key = setup::secret_key(&home)?;
    let secret = load_or_create_access_secret(&home).context("cannot load the access secret")?;
    let daemon_socket = setup::daemon_socket(args.daemon_socket.clone());
    if !daemon_socket.exists() {
        warn!(target: "n2p",
            "no nix-daemon socket at {} (yet); clients will be disconnected until it exists (set --daemon-socket or NIX_DAEMON_SOCKET_PATH)",
            daemon_socket.display()
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        warn!(target: "n2p",
            "running as root: the nix-daemon trusts this process, so every allowed peer acts as a trusted Nix user (can import unsigned paths). Run n2p as a user outside trusted-users to keep signature checks."
        );
    }
    // The one authority: the handshake, the daemon (push) and the store (pull) all read it.
    let mut authority = ServerAuthority::new(secret.clone());
    if !args.allow.is_empty() {
        authority = authority.with_allow_list(args.allow.iter().copied());
        info!(target: "n2p", "only these clients may connect: {:?}", args.allow.iter().map(|id| id.to_string()).collect::<Vec<_>>());
    }
    let authority = Arc::new(authority);

    let signing_key = pull::signing_key(&home, &setup::host_name())?;

    let options = setup::endpoint_options(global, RelayChoice::Default);
    let endpoint = setup::endpoint(
        key,
        vec![DAEMON_ALPN.to_vec(), STORE_ALPN.to_vec()],
        &options,
        Some(HandshakeGate(authority.clone())),
    )
    .await?;
    let service = DaemonService::new(
        daemon_socket.clone(),
        AccessPolicy::new(authority.clone(), Permission::Push),
        endpoint.id(),
    );
    // Clients holding the address may also pull from this store (--allow applies too).
    let store = StoreService::new(
        daemon_socket.clone(),
        setup::store_dir(),
        AccessPolicy::new(authority.clone(), Permission::Pull),
        endpoint.id(),
        signing_key.clone(),
        StoreLimits::default(),
    );
    let router = Router::builder(endpoint.clone())
        .accept(DAEMON_ALPN, service)
        .accept(STORE_ALPN, store)
        .spawn();

    if options.relay != RelayChoice::Disabled
        && tokio::time::timeout(RELAY_WAIT, endpoint.online())
            .await
            .is_err()
    {
        warn!(target: "n2p", "no relay reached within {RELAY_WAIT:?}; the long address has direct addresses only");
    }
    let address = ServerAddress::new(endpoint.addr(), secret.clone());
    info!(target: "n2p", "forwarding to the nix-daemon at {}", daemon_socket.display());
    info!(target: "n2p", "node id: {}", endpoint.id());
    info!(target: "n2p", "nix signing key: {}", signing_key.public());
    let direct: Vec<String> = address.endpoint.ip_addrs().map(|a| a.to_string()).collect();
    info!(target: "n2p", "direct addresses: {}", if direct.is_empty() { "none".to_owned() } else { direct.join(" ") });
    log_addresses(&address);
    info!(target: "n2p", "on the other machine: n2p client <address>");
    let _trimmer = HeapTrimmer::start();

    // SIGHUP re-reads access.secret (after `n2p rotate-secret`); SIGINT/SIGTERM stop.
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let stop = shutdown::signal_received();
    tokio::pin!(stop);
    let mut secret = secret;
    let received = loop {
        tokio::select! {
            received = &mut stop => break received?,
            _ = hangup.recv() => match load_or_create_access_secret(&home) {
                Ok(fresh) if fresh == secret => {
                    info!(target: "n2p", "SIGHUP: {} unchanged", home.access_secret_path().display());
                }
                Ok(fresh) => {
                    authority.replace_secret(fresh.clone());
                    secret = fresh;
                    info!(target: "n2p",
                        "SIGHUP: new access secret loaded from {}; addresses printed before no longer work (new streams are checked against it; transfers in flight go on)",
                        home.access_secret_path().display()
                    );
                    log_addresses(&ServerAddress::new(endpoint.addr(), secret.clone()));
                }
                Err(e) => error!(target: "n2p",
                    "SIGHUP: cannot reload the access secret, keeping the old one: {}",
                    anyhow::Error::from(e)
                ),
            },
        }
    };
    info!(target: "n2p", "{received} received, shutting down");
    shutdown::unless_signalled_again(async {
        router.shutdown().await.ok();
    })
    .await;
    Ok(())
}

/// Logs both addresses, each the last word of its line (what scripts and tests read).
fn log_addresses(address: &ServerAddress) {
    info!(target: "n2p", "short address: {}", address.to_short_string());
    info!(target: "n2p", "long address: {}", address.to_long_string());
}
