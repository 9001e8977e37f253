//! The pull side in the binary: the node's Nix signing key, the facade's listener and task,
//! and the `n2p key` and `n2p trust` commands.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use n2p_cache::{
    facade::{DEFAULT_FACADE_ADDR, Facade, FacadeConfig},
    signing::{load_or_create_signing_key, signing_key_path},
};
use n2p_core::home::N2pHome;
use n2p_mesh::proto::team::TeamConfig;
use n2p_nix::{PublicKey, SecretKey};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    cli::{CacheArgs, GlobalArgs, KeyArgs, TrustArgs},
    config::PersonalConfig,
    setup,
};

/// How long requests in flight (NAR downloads) get to end when the facade stops.
const FACADE_DRAIN: Duration = Duration::from_secs(5);

/// The node's Nix signing key, created on first use named after `node_name`.
pub(crate) fn signing_key(home: &N2pHome, node_name: &str) -> anyhow::Result<SecretKey> {
    load_or_create_signing_key(home, node_name).context("cannot load the Nix signing key")
}

/// The facade's address: `flag`, else the personal config's `cache`, else the default.
pub(crate) fn facade_addr(flag: Option<SocketAddr>, personal: &PersonalConfig) -> SocketAddr {
    flag.or(personal.cache).unwrap_or_else(|| {
        DEFAULT_FACADE_ADDR
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5496)))
    })
}

/// Binds the facade's listener; an address beyond loopback is allowed, with a warning.
pub(crate) async fn bind_facade(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        warn!(target: "n2p",
            "the binary cache at {addr} is not on loopback: anyone who can reach it can read the stores of every peer that lets you pull"
        );
    }
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot serve the binary cache at {addr} (another n2p there? choose another with --cache IP:PORT)")
    })
}

/// A facade serving in the background.
pub(crate) struct RunningFacade {
    task: JoinHandle<std::io::Result<()>>,
    stop: CancellationToken,
}

impl RunningFacade {
    /// Serves `facade` on `listener` until [`Self::stop`].
    pub(crate) fn spawn(listener: TcpListener, facade: Arc<Facade>) -> Self {
        if let Ok(addr) = listener.local_addr() {
            info!(target: "n2p", "binary cache for Nix at http://{addr}");
        }
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            facade
                .serve(listener, async move { stopped.cancelled().await })
                .await
        });
        Self { task, stop }
    }

    /// Stops accepting, gives requests in flight [`FACADE_DRAIN`], then cuts them.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        match tokio::time::timeout(FACADE_DRAIN, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(target: "n2p", "the binary cache failed: {e}"),
            Ok(Err(e)) => warn!(target: "n2p", "the binary cache task failed: {e}"),
            Err(_) => {
                warn!(target: "n2p", "cutting the binary cache's downloads still in flight after {FACADE_DRAIN:?}");
                self.task.abort();
            }
        }
    }
}

/// `n2p key`: prints the node's Nix public key.
pub(crate) fn key(global: &GlobalArgs, args: KeyArgs) -> anyhow::Result<()> {
    let home = setup::home(global)?;
    let personal = PersonalConfig::load_or_default(&home.config_path())?;
    let name = args.name.or(personal.name).unwrap_or_else(setup::host_name);
    let key = signing_key(&home, &name)?;
    println!("{}", key.public());
    tracing::debug!("the secret key is in {}", signing_key_path(&home).display());
    Ok(())
}

/// `n2p trust`: prints the nix.conf lines for this machine.
pub(crate) fn trust(global: &GlobalArgs, args: TrustArgs) -> anyhow::Result<()> {
    let home = setup::home(global)?;
    let personal = PersonalConfig::load_or_default(&home.config_path())?;
    let mut keys: Vec<PublicKey> = Vec::new();
    for text in &args.keys {
        keys.push(PublicKey::parse(text).with_context(|| {
            format!("invalid --key '{text}' (expected name:base64, as `n2p key` prints)")
        })?);
    }
    if let Some(team_path) = args.team.clone().or(personal.team.clone()) {
        let team = TeamConfig::load(&team_path)?;
        let mut missing = Vec::new();
        for member in team.members() {
            match &member.nix_key {
                Some(key) => keys.push(key.clone()),
                None => missing.push(member.name.clone()),
            }
        }
        if !missing.is_empty() {
            warn!(target: "n2p",
                "no nix_key in {} for {}: their paths are accepted only when signed by a key trusted otherwise (ask them for `n2p key`)",
                team_path.display(),
                missing.join(", ")
            );
        }
    }
    if keys.is_empty() {
        bail!(
            "no keys to trust: add `nix_key = \"...\"` (from `n2p key`) to the team file's members, or pass --key NAME:BASE64"
        );
    }
    let mut names = std::collections::BTreeSet::new();
    let keys: Vec<String> = keys
        .into_iter()
        .filter(|key| names.insert(key.to_string()))
        .map(|key| key.to_string())
        .collect();
    let addr = facade_addr(args.cache, &personal);
    let url = format!("http://{addr}");
    print!("{}", nix_conf_lines(&url, &keys));
    info!(target: "n2p", "add these lines to /etc/nix/nix.conf (as root) and restart nix-daemon");
    Ok(())
}

/// The nix.conf lines that make `url` a substituter whose paths signed by `keys` are taken.
fn nix_conf_lines(url: &str, keys: &[String]) -> String {
    format!(
        "# n2p: substitute from teammates through the local binary cache\n\
         extra-substituters = {url}\n\
         extra-trusted-substituters = {url}\n\
         extra-trusted-public-keys = {}\n\
         narinfo-cache-negative-ttl = 10\n",
        keys.join(" ")
    )
}

/// The facade's settings from the command line and the team's keys.
pub(crate) fn facade_config(options: &CacheArgs, trusted_keys: Vec<PublicKey>) -> FacadeConfig {
    FacadeConfig {
        store_dir: setup::store_dir(),
        deadline: options.narinfo_deadline,
        trusted_keys,
        ..FacadeConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_conf_lines_are_exact() {
        let lines = nix_conf_lines(
            "http://127.0.0.1:5496",
            &["a-n2p-1:AAA=".into(), "b:BBB=".into()],
        );
        assert_eq!(
            lines,
            "# n2p: substitute from teammates through the local binary cache\n\
             extra-substituters = http://127.0.0.1:5496\n\
             extra-trusted-substituters = http://127.0.0.1:5496\n\
             extra-trusted-public-keys = a-n2p-1:AAA= b:BBB=\n\
             narinfo-cache-negative-ttl = 10\n"
        );
    }
}
