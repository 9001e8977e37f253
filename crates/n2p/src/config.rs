//! The personal config file, `$N2P_HOME/config.toml`: who I am in the mesh and what I share.
//! Command-line flags override it; the team file (shared) says who the team is.

use std::path::{Path, PathBuf};

use n2p_core::config_file::{ConfigFileError, load_toml};
use serde::Deserialize;

/// The keys of `config.toml`; every one is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PersonalConfig {
    /// The name I announce (a team file entry for my id wins).
    pub(crate) name: Option<String>,
    /// Whether teammates may use my nix-daemon (default: true).
    pub(crate) share: Option<bool>,
    /// My nix-daemon's socket.
    pub(crate) daemon_socket: Option<PathBuf>,
    /// The team file (relative paths are relative to this config file's directory).
    pub(crate) team: Option<PathBuf>,
    /// Where the peer sockets go (relative paths as for `team`).
    pub(crate) peers_dir: Option<PathBuf>,
    /// The Unix group (name or gid) the peer sockets are shared with.
    pub(crate) peers_group: Option<String>,
    /// Where `n2p mesh join` serves the binary cache for Nix (default 127.0.0.1:5496).
    pub(crate) cache: Option<std::net::SocketAddr>,
}

impl PersonalConfig {
    /// Loads `path`, or the defaults when it does not exist.
    pub(crate) fn load_or_default(path: &Path) -> Result<Self, ConfigFileError> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let mut config: Self = load_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.team = config.team.map(|team| base.join(team));
        config.daemon_socket = config.daemon_socket.map(|socket| base.join(socket));
        config.peers_dir = config.peers_dir.map(|dir| base.join(dir));
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use n2p_core::config_file::parse_toml;

    use super::*;

    #[test]
    fn shipped_examples_parse() {
        parse_toml::<PersonalConfig>(
            include_str!("../../../config/config.toml"),
            Path::new("config/config.toml"),
        )
        .expect("config/config.toml");
        let team = n2p_mesh::proto::team::TeamConfig::parse(
            include_str!("../../../config/team.toml"),
            Path::new("config/team.toml"),
        )
        .expect("config/team.toml");
        assert_eq!(team.members().len(), 3);
        assert!(!team.is_open());
    }

    #[test]
    fn parses_all_keys_and_rejects_unknown_ones() {
        let text = "name = \"alice\"\nshare = false\ndaemon_socket = \"/run/d.sock\"\nteam = \"team.toml\"\n\
                    peers_dir = \"/run/n2p/peers\"\npeers_group = \"n2p-peers\"\n";
        let config: PersonalConfig = parse_toml(text, Path::new("config.toml")).expect("parse");
        assert_eq!(config.peers_group.as_deref(), Some("n2p-peers"));
        assert_eq!(config.name.as_deref(), Some("alice"));
        assert_eq!(config.share, Some(false));

        let err = parse_toml::<PersonalConfig>("name = \"a\"\nshar = true\n", Path::new("c.toml"))
            .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.starts_with("c.toml:2:"), "{msg}");
        assert!(msg.contains("share"), "{msg}");

        let err = parse_toml::<PersonalConfig>("share = \"yes\"\n", Path::new("c.toml"))
            .expect_err("bad value");
        assert!(err.to_string().starts_with("c.toml:1:"), "{err}");
    }
}
