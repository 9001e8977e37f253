//! `n2p server`: share this machine's nix-daemon with clients that hold its address, and let
//! them pull from its store (`n2p/store/1`, for `n2p client --cache`).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use iroh::protocol::Router;
use n2p_cache::{
    proto::STORE_ALPN,
    server::{StoreLimits, StoreService},
};
use n2p_core::{
    access::{AccessPolicy, SecretPolicy},
    address::ServerAddress,
    daemon::{DAEMON_ALPN, DaemonService},
    endpoint::RelayChoice,
    identity::load_or_create_access_secret,
};
use tracing::{info, warn};

use crate::{
    cli::{GlobalArgs, ServerArgs},
    cmd::pull,
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
    let mut policy = SecretPolicy::new(secret.clone());
    if !args.allow.is_empty() {
        policy = policy.with_allow_list(args.allow.iter().copied());
        info!(target: "n2p", "only these clients may connect: {:?}", args.allow.iter().map(|id| id.to_string()).collect::<Vec<_>>());
    }
    let policy: Arc<dyn AccessPolicy> = Arc::new(policy);

    let signing_key = pull::signing_key(&home, &setup::host_name())?;

    let options = setup::endpoint_options(global, RelayChoice::Default);
    let endpoint = setup::endpoint(
        key,
        vec![DAEMON_ALPN.to_vec(), STORE_ALPN.to_vec()],
        &options,
    )
    .await?;
    let service = DaemonService::new(daemon_socket.clone(), policy.clone(), endpoint.id());
    // Clients holding the address may also pull from this store (same policy, --allow too).
    let store = StoreService::new(
        daemon_socket.clone(),
        setup::store_dir(),
        policy,
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
    let address = ServerAddress::new(endpoint.addr(), secret);
    info!(target: "n2p", "forwarding to the nix-daemon at {}", daemon_socket.display());
    info!(target: "n2p", "node id: {}", endpoint.id());
    info!(target: "n2p", "nix signing key: {}", signing_key.public());
    let direct: Vec<String> = address.endpoint.ip_addrs().map(|a| a.to_string()).collect();
    info!(target: "n2p", "direct addresses: {}", if direct.is_empty() { "none".to_owned() } else { direct.join(" ") });
    info!(target: "n2p", "short address: {}", address.to_short_string());
    info!(target: "n2p", "long address: {}", address.to_long_string());
    info!(target: "n2p", "on the other machine: n2p client <address>");

    let signal = shutdown::signal_received().await?;
    info!(target: "n2p", "{signal} received, shutting down");
    router.shutdown().await.ok();
    Ok(())
}
