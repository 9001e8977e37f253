//! `n2p mesh …` and `n2p status`: join a team's gossip topic and keep a socket per live peer.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use n2p_cache::{
    client::{Peer, StoreClient},
    facade::{Facade, PeerSource},
    proto::STORE_ALPN,
    server::{StoreLimits, StoreService},
};
use n2p_core::{
    access::{AccessSecret, Permission},
    home::N2pHome,
};
use n2p_mesh::{
    node::{MeshNode, MeshSettings, ProtocolFactory, SharedTeam},
    proto::{
        names::{sanitize_name, validate_name},
        team::{TeamConfig, load_secret},
        ticket::MeshTicket,
        topic::MeshKeys,
    },
    status::MeshStatus,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{
    cli::{GlobalArgs, InviteArgs, JoinArgs, StatusArgs},
    cmd::pull,
    config::PersonalConfig,
    control,
    memory::HeapTrimmer,
    service, setup, shutdown,
};

/// `n2p mesh join`.
pub(crate) async fn join(global: &GlobalArgs, args: JoinArgs) -> anyhow::Result<()> {
    let home = setup::home(global)?;
    let personal = PersonalConfig::load_or_default(&home.config_path())?;
    let team_path = args
        .team
        .clone()
        .or(personal.team.clone())
        .context("no team file: pass --team FILE or set `team = \"...\"` in config.toml")?;
    let team = TeamConfig::load(&team_path)?;
    let secret_override = service::secret_override(
        args.service.secret_file.as_deref(),
        args.service.secret_credential.as_deref(),
    )?;
    let secret_source = secret_override
        .clone()
        .unwrap_or_else(|| team.secret_source().clone());
    let secret = load_secret(&secret_source, |var| std::env::var_os(var))
        .map_err(|e| {
            let hint = e.hint();
            let message = format!("{:#}", anyhow::Error::new(e));
            match hint {
                Some(hint) => anyhow::anyhow!("{message}\n  hint: {hint}"),
                None => anyhow::anyhow!("{message}"),
            }
        })
        .with_context(|| match &secret_override {
            Some(source) => format!("cannot load the team secret from {source}"),
            None => format!(
                "cannot load the team secret named in {}",
                team_path.display()
            ),
        })?;
    let peers_dir = args
        .service
        .peers_dir
        .clone()
        .or(personal.peers_dir.clone())
        .unwrap_or_else(|| home.peers_dir());
    let peers_access = service::socket_access(
        args.service
            .peers_group
            .as_deref()
            .or(personal.peers_group.as_deref()),
    )?;
    let control_path = setup::control_socket(global, &home);

    let _lock = home.lock("node")?;
    let key = setup::secret_key(&home)?;
    let me = key.public();
    let name = match team.member_by_id(&me) {
        Some(member) => member.name.clone(),
        None => {
            let wanted = args
                .name
                .clone()
                .or(personal.name.clone())
                .unwrap_or_else(setup::host_name);
            if args.name.is_some() || personal.name.is_some() {
                validate_name(&wanted).with_context(|| format!("invalid name '{wanted}'"))?;
                wanted
            } else {
                sanitize_name(&wanted)
            }
        }
    };
    if !team.is_open() && team.member_by_id(&me).is_none() {
        tracing::warn!(target: "n2p",
            "my id {me} is not listed in {}: the team's members will refuse me (add a [[member]] with this id)",
            team_path.display()
        );
    }
    let share_daemon = if args.no_share {
        false
    } else {
        args.share || personal.share.unwrap_or(true)
    };
    let daemon_socket = setup::daemon_socket(
        args.daemon_socket
            .clone()
            .or(personal.daemon_socket.clone()),
    );
    let mut bootstrap = Vec::new();
    for text in &args.ticket {
        let ticket: MeshTicket = text.parse().context("invalid --ticket")?;
        if ticket.topic != args.topic {
            bail!(
                "the ticket is for topic '{}', not '{}'",
                ticket.topic,
                args.topic
            );
        }
        bootstrap.extend(ticket.peers);
    }
    // The pull side: my store to members allowed to pull, and the binary cache for my Nix
    // (which proves the team's access secret to the peers it asks).
    let access = AccessSecret::from_bytes(
        MeshKeys::derive(&secret, &args.topic)
            .context("invalid topic name")?
            .access_secret(),
    );
    let signing_key = pull::signing_key(&home, &name)?;
    // Members with `pull` in the team file in force (it follows SIGHUP reloads).
    let store_key = signing_key.clone();
    let store_daemon = daemon_socket.clone();
    let store = ProtocolFactory::new(move |team: &SharedTeam| {
        Box::new(StoreService::new(
            store_daemon,
            setup::store_dir(),
            team.policy(Permission::Pull),
            me,
            store_key,
            StoreLimits::default(),
        ))
    });
    let cache_listener = if args.no_cache {
        None
    } else {
        let addr = pull::facade_addr(args.cache, &personal);
        match pull::bind_facade(addr).await {
            Ok(listener) => Some(listener),
            Err(e) if args.cache.is_none() && personal.cache.is_none() => {
                tracing::warn!(target: "n2p", "{e:#}; running without it");
                None
            }
            Err(e) => return Err(e),
        }
    };
    let trusted_keys = team.nix_keys();

    let peer_idle_close = args
        .peer_idle_close_ms
        .map_or(n2p_core::idle::PEER_IDLE_CLOSE, Duration::from_millis);
    let settings = MeshSettings {
        topic: args.topic.clone(),
        name,
        share_daemon,
        daemon_socket,
        endpoint: setup::endpoint_options(global, team.relay().clone()),
        team,
        secret,
        peers_dir: peers_dir.clone(),
        peers_access,
        peer_idle_close,
        bootstrap,
        protocols: vec![(STORE_ALPN.to_vec(), store)],
    };
    let node = Arc::new(MeshNode::join(key, settings).await?);
    info!(target: "n2p", "nix signing key: {}", signing_key.public());
    let facade = cache_listener.map(|listener| {
        let client =
            Arc::new(StoreClient::new(node.endpoint().clone()).with_idle_close(peer_idle_close));
        let source_node = node.clone();
        let peers: PeerSource = Arc::new(move || {
            let node = source_node.clone();
            let access = access.clone();
            Box::pin(async move { live_peers(&node, &access).await })
        });
        let facade = Facade::new(
            pull::facade_config(&args.cache_options, trusted_keys),
            client,
            peers,
        );
        warn_if_no_pull(&node);
        (facade.clone(), pull::RunningFacade::spawn(listener, facade))
    });
    let cancel = CancellationToken::new();
    let responder_node = node.clone();
    let topic = args.topic.clone();
    let _control = control::serve(
        &control_path,
        peers_access,
        Arc::new(move |request: String| {
            let node = responder_node.clone();
            let topic = topic.clone();
            Box::pin(async move { answer(&node, &topic, &request).await })
                as std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send>>
        }),
        cancel.clone(),
    )?;
    info!(target: "n2p", "peer sockets appear in {}", peers_dir.display());
    // The peers directory, the control socket and the endpoint exist now.
    service::notify("READY=1");
    let _trimmer = HeapTrimmer::start();

    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot watch SIGHUP")?;
    let shutdown = shutdown::signal_received();
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            signal = &mut shutdown => {
                let signal = signal?;
                info!(target: "n2p", "{signal} received; leaving the mesh");
                service::notify("STOPPING=1");
                break Ok(());
            }
            _ = hangup.recv() => {
                service::reload_team(&node, &team_path, secret_override.is_some()).await;
                if let Some((facade, _)) = &facade {
                    facade.set_trusted_keys(node.team().nix_keys());
                    warn_if_no_pull(&node);
                }
            }
            () = node.stopped() => {
                // Serving a frozen peer table would hide the failure: exit non-zero so that a
                // supervisor (systemd, launchd) starts a fresh node.
                break Err(anyhow::anyhow!(
                    "the mesh node stopped on its own (see the warning above); exiting"
                ));
            }
        }
    };
    cancel.cancel();
    shutdown::unless_signalled_again(async {
        if let Some((_, running)) = facade {
            running.stop().await;
        }
        node.leave().await;
    })
    .await;
    outcome
}

/// Says, where the user looks, why the binary cache will find nothing.
fn warn_if_no_pull(node: &MeshNode) {
    if !node.may(Permission::Pull) {
        tracing::warn!(target: "n2p",
            "the team file gives me `pull = false`: the binary cache asks no peer and answers every request with 404"
        );
    }
}

/// The live peers as the facade wants them (an id is enough: the node's endpoint knows
/// their addresses); none when the node has stopped.
async fn live_peers(node: &MeshNode, access: &AccessSecret) -> Vec<Peer> {
    if !node.may(Permission::Pull) {
        debug!("not asking peers: the team file in force does not let me pull");
        return Vec::new();
    }
    let Ok(status) = node.status().await else {
        return Vec::new();
    };
    status
        .peers
        .into_iter()
        .filter_map(|p| {
            let id: iroh::EndpointId = p.id.parse().ok()?;
            Some(Peer {
                name: p.name,
                addr: iroh::EndpointAddr::new(id),
                secret: access.clone(),
            })
        })
        .collect()
}

async fn answer(node: &MeshNode, topic: &str, request: &str) -> serde_json::Value {
    match request {
        "status" => match node.status().await {
            Ok(status) => serde_json::to_value(status).unwrap_or_else(
                |e| serde_json::json!({ "error": format!("cannot encode the status: {e}") }),
            ),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        },
        "invite" => {
            let ticket = MeshTicket {
                topic: topic.to_owned(),
                peers: vec![node.endpoint().addr()],
            };
            serde_json::json!({ "ticket": ticket.to_string() })
        }
        other => serde_json::json!({ "error": format!("unknown request '{other}'") }),
    }
}

/// The running node's [`MeshStatus`], through the control socket.
async fn running_status(global: &GlobalArgs, home: &N2pHome) -> anyhow::Result<MeshStatus> {
    control::ask(&setup::control_socket(global, home), "status").await
}

/// `n2p mesh peers`.
pub(crate) async fn peers(global: &GlobalArgs, args: StatusArgs) -> anyhow::Result<()> {
    let home = setup::home(global)?;
    let status = running_status(global, &home).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status.peers)?);
        return Ok(());
    }
    print_peers(&status);
    Ok(())
}

/// `n2p status`.
pub(crate) async fn status(global: &GlobalArgs, args: StatusArgs) -> anyhow::Result<()> {
    let home = setup::home(global)?;
    let s = running_status(global, &home).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("node     {} ({})", s.name, s.id);
    println!(
        "topic    {}{}",
        s.topic,
        if s.open_team { " (open team)" } else { "" }
    );
    println!("sharing  {}", if s.shares_daemon { "yes" } else { "no" });
    println!(
        "links    {} gossip, {} daemon, {} other (open iroh connections)",
        s.connections.gossip, s.connections.daemon, s.connections.other
    );
    if let Some(ms) = s.check_wait_ms {
        let wait = Duration::from_millis(ms);
        let usual = n2p_mesh::node::PROBE_TIMEOUT;
        if wait > usual {
            println!(
                "checks   not keeping up: a dial to check a peer waits {wait:?} for an answer ({usual:?} when keeping up)"
            );
        } else {
            println!("checks   keeping up: a dial to check a peer waits {wait:?} for an answer");
        }
    }
    println!("peers in {}", s.peers_dir.display());
    print_peers(&s);
    Ok(())
}

fn print_peers(status: &MeshStatus) {
    if status.peers.is_empty() {
        println!("no live peers");
        return;
    }
    println!(
        "{:<20} {:<10} {:<7} {:<7} {:>9} {:>9}  SOCKET",
        "NAME", "ID", "SHARES", "PATH", "RTT", "SEEN"
    );
    for p in &status.peers {
        let rtt = p
            .rtt_ms
            .map(|ms| format!("{ms:.1}ms"))
            .unwrap_or_else(|| "-".to_owned());
        println!(
            "{:<20} {:<10} {:<7} {:<7} {:>9} {:>8.1}s  {}",
            p.name,
            &p.id[..p.id.len().min(10)],
            if p.shares_daemon { "yes" } else { "no" },
            p.path,
            rtt,
            p.last_seen_secs,
            p.socket
                .as_ref()
                .map(|s| format!("unix://{}", s.display()))
                .unwrap_or_else(|| "-".to_owned())
        );
    }
}

/// `n2p mesh invite`.
pub(crate) async fn invite(global: &GlobalArgs, args: InviteArgs) -> anyhow::Result<()> {
    let home = setup::home(global)?;
    let value = control::request(&setup::control_socket(global, &home), "invite").await?;
    let ticket: MeshTicket = value["ticket"]
        .as_str()
        .context("the running node gave no ticket")?
        .parse()
        .context("the running node gave an invalid ticket")?;
    if ticket.topic != args.topic {
        bail!(
            "the running node is in topic '{}', not '{}'",
            ticket.topic,
            args.topic
        );
    }
    println!("{ticket}");
    Ok(())
}

/// `n2p mesh new-secret`: 32 random bytes as hex, for a team secret file.
pub(crate) fn new_secret() {
    let bytes: [u8; 32] = rand::random();
    println!("{}", data_encoding::HEXLOWER.encode(&bytes));
}
