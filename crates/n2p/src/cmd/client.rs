//! `n2p client`: a local unix socket that reaches a server's nix-daemon.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use n2p_core::{
    address::ServerAddress,
    daemon::{DaemonDialer, ListenerShutdown, serve_local_listener},
    endpoint::RelayChoice,
    home::N2pHome,
    unix::bind_private_listener,
};
use tracing::{info, warn};

use n2p_cache::{
    client::{Peer, StoreClient},
    facade::{Facade, PeerSource},
};

use crate::{
    cli::{ClientArgs, GlobalArgs},
    cmd::pull,
    memory::HeapTrimmer,
    setup, shutdown,
};

/// How long SIGINT/SIGTERM wait for transfers in flight to finish before aborting them (the
/// same bound as a mesh node's clean leave).
const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// A fresh socket path under `$N2P_HOME/clients/` (the directory created 0700).
fn default_socket_path(home: &N2pHome) -> anyhow::Result<PathBuf> {
    let dir = home.clients_dir();
    home.ensure_subdir(&dir)?;
    let name: [u8; 6] = rand::random();
    Ok(dir.join(format!("{}.sock", data_encoding::HEXLOWER.encode(&name))))
}

pub(crate) async fn run(global: &GlobalArgs, args: ClientArgs) -> anyhow::Result<()> {
    let address: ServerAddress = args
        .address
        .parse()
        .with_context(|| format!("invalid server address '{}'", abbreviate(&args.address)))?;
    let home = setup::home(global)?;
    let key = setup::secret_key(&home)?;
    // The socket first: a path that cannot be bound fails at once, not after a connection
    // attempt. Nobody is told about it before the server answers, and it goes (with its
    // guard) if the server does not.
    let socket_path = match args.socket {
        Some(path) => path,
        None => default_socket_path(&home)?,
    };
    let socket_path = std::path::absolute(&socket_path).unwrap_or(socket_path);
    let (listener, socket_guard) = bind_private_listener(&socket_path)?;
    let cache_listener = match args.cache {
        Some(addr) => Some(pull::bind_facade(addr).await?),
        None => None,
    };

    let options = setup::endpoint_options(global, RelayChoice::Default);
    let endpoint = setup::endpoint(key, Vec::new(), &options, None).await?;
    let dialer = DaemonDialer::new(endpoint.clone(), address.endpoint.clone(), &address.secret)
        .with_connect_timeout(args.connect_timeout);
    // Connected is not enough: a wrong or rotated secret, or an identity outside the
    // server's --allow, must stop the client here, not fail every Nix operation later.
    let checked = match dialer.connection().await {
        Ok(_) => dialer
            .check_access()
            .await
            .context("the server did not accept this client"),
        Err(e) => Err(e).context("cannot reach the server"),
    };
    if let Err(e) = checked {
        endpoint.close().await;
        return Err(e);
    }
    // The binary cache: the server is its one peer, `/peer/server/` its one named path.
    let facade = cache_listener.map(|listener| {
        let idle_close = args
            .peer_idle_close_ms
            .map_or(n2p_core::idle::PEER_IDLE_CLOSE, Duration::from_millis);
        let client = Arc::new(
            StoreClient::new(endpoint.clone())
                .with_connect_timeout(args.connect_timeout)
                .with_idle_close(idle_close),
        );
        let server = Peer {
            name: "server".to_owned(),
            addr: address.endpoint.clone(),
            secret: address.secret.clone(),
        };
        let peers: PeerSource = Arc::new(move || {
            let server = server.clone();
            Box::pin(async move { vec![server] })
        });
        let facade = Facade::new(
            pull::facade_config(&args.cache_options, Vec::new()),
            client,
            peers,
        );
        pull::RunningFacade::spawn(listener, facade)
    });
    info!(target: "n2p", "unix:{}", socket_path.display());
    let _trimmer = HeapTrimmer::start();

    // On a signal: the socket goes at once, transfers in flight get DRAIN_BOUND to finish,
    // the rest are aborted (reset), and only then does the connection close.
    let stop = ListenerShutdown::new();
    let dialer = Arc::new(dialer);
    let mut serving = tokio::spawn(serve_local_listener(listener, dialer.clone(), stop.clone()));
    let signal = shutdown::signal_received().await;
    drop(socket_guard);
    stop.stop();
    let in_flight = stop.in_flight();
    match &signal {
        Ok(signal) if in_flight > 0 => info!(target: "n2p",
            "{signal} received; removed {}; waiting up to {DRAIN_BOUND:?} for {in_flight} transfer(s) in flight to finish",
            socket_path.display()
        ),
        Ok(signal) => info!(target: "n2p", "{signal} received; removed {}", socket_path.display()),
        Err(_) => {}
    }
    shutdown::unless_signalled_again(async {
        if tokio::time::timeout(DRAIN_BOUND, &mut serving)
            .await
            .is_err()
        {
            warn!(target: "n2p",
                "aborting {} transfer(s) still in flight after {DRAIN_BOUND:?}",
                stop.in_flight()
            );
            stop.abort();
            serving.await.ok();
        }
        if let Some(facade) = facade {
            facade.stop().await;
        }
        dialer.close().await;
        endpoint.close().await;
    })
    .await;
    signal?;
    Ok(())
}

/// The first characters of what the user typed, for error messages.
fn abbreviate(text: &str) -> String {
    const MAX: usize = 24;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
