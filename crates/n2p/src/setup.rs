//! Setting a command up from the global flags: the home directory (`--home`, `N2P_HOME`,
//! `~/.n2p`), this node's identity, the endpoint options and bound endpoint, and which
//! nix-daemon socket to use.

use std::path::PathBuf;

use anyhow::Context;
use iroh::Endpoint;
use n2p_core::{
    SecretKey,
    access::HandshakeGate,
    endpoint::{EndpointOptions, RelayChoice, bind_builder, endpoint_builder},
    home::N2pHome,
    identity::load_or_create_secret_key,
};

use crate::cli::GlobalArgs;

/// The home directory named by `--home`/`N2P_HOME`, else `~/.n2p`.
pub(crate) fn home(global: &GlobalArgs) -> anyhow::Result<N2pHome> {
    match &global.home {
        Some(dir) => Ok(N2pHome::new(dir)),
        None => Ok(N2pHome::from_env()?),
    }
}

/// This node's secret key, created on first use.
pub(crate) fn secret_key(home: &N2pHome) -> anyhow::Result<SecretKey> {
    load_or_create_secret_key(home).context("cannot load this node's identity")
}

/// Endpoint options from the global flags, with `relay_fallback` when `--relay` is absent.
pub(crate) fn endpoint_options(
    global: &GlobalArgs,
    relay_fallback: RelayChoice,
) -> EndpointOptions {
    EndpointOptions {
        relay: global.relay.clone().unwrap_or(relay_fallback),
        bind: global.bind.clone(),
        congestion: global.congestion,
        relay_ca: global.relay_ca.clone(),
    }
}

/// Binds the node's endpoint; with a `gate`, peers its authority does not admit are refused
/// at the handshake, whatever ALPN they ask for.
pub(crate) async fn endpoint(
    key: SecretKey,
    alpns: Vec<Vec<u8>>,
    options: &EndpointOptions,
    gate: Option<HandshakeGate>,
) -> anyhow::Result<Endpoint> {
    let mut builder = endpoint_builder(key, alpns, options)?;
    if let Some(gate) = gate {
        builder = builder.hooks(gate);
    }
    let endpoint = bind_builder(builder, options).await?;
    tracing::debug!(id = %endpoint.id(), relay = %options.relay, "endpoint bound");
    Ok(endpoint)
}

/// Where Nix puts the daemon socket unless told otherwise.
const DEFAULT_DAEMON_SOCKET: &str = "/nix/var/nix/daemon-socket/socket";

/// The daemon socket: `explicit` (flag or config), else `$NIX_DAEMON_SOCKET_PATH`, else
/// Nix's default.
pub(crate) fn daemon_socket(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("NIX_DAEMON_SOCKET_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DAEMON_SOCKET))
}

/// The control socket: `--control-socket` / `N2P_CONTROL_SOCKET`, else the home's.
pub(crate) fn control_socket(global: &GlobalArgs, home: &N2pHome) -> PathBuf {
    global
        .control_socket
        .clone()
        .unwrap_or_else(|| home.control_socket_path())
}

/// The store directory: `$NIX_STORE_DIR`, else `/nix/store`.
pub(crate) fn store_dir() -> n2p_nix::StoreDir {
    std::env::var("NIX_STORE_DIR")
        .ok()
        .filter(|dir| !dir.is_empty())
        .map(|dir| n2p_nix::StoreDir::new(dir.trim_end_matches('/').to_owned()))
        .unwrap_or_default()
}

/// The host name, or `peer`.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "peer".to_owned())
}
