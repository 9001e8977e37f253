//! The team file: who is in the team, what each member may do, how to reach them, and where
//! the shared secret comes from. It is meant to be committed to the team's repository, so it
//! never holds the secret itself.
//!
//! ```
//! use n2p_mesh::proto::team::TeamConfig;
//! use std::path::Path;
//!
//! let team = TeamConfig::parse(
//!     r#"
//!     [mesh]
//!     secret_file = "team.secret"
//!
//!     [[member]]
//!     name = "alice"
//!     id = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
//!     "#,
//!     Path::new("/repo/n2p-team.toml"),
//! )?;
//! assert!(!team.is_open());
//! assert_eq!(team.members()[0].name, "alice");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Keys
//!
//! `[mesh]` (required):
//!
//! - `secret_file` — path of a file holding the team secret (at least 16 bytes once
//!   surrounding white space is trimmed; mode 600). Relative paths are relative to the team
//!   file's directory.
//! - `secret_env` — or the name of an environment variable holding it. Exactly one of the
//!   two must be set.
//! - `relay` — `"default"` (n0's public relays, the default), `"disabled"` (direct addresses
//!   only) or the URL of your own relay.
//! - `open` — whether anyone holding the secret may join, besides the listed members.
//!   Defaults to `true` when there is no `[[member]]` and `false` otherwise.
//! - `expiry_secs` — a peer not heard from for this many seconds is dropped (default 6,
//!   from 2 to 3600); each node announces itself every third of it.
//!
//! `[[member]]` (any number; none makes an open team):
//!
//! - `name` — the member's name, also its socket's name (`peers/<name>.sock`): up to 32
//!   letters, digits, `.`, `_` or `-`, starting with a letter, digit or `_`; unique
//!   regardless of case.
//! - `id` — the member's iroh endpoint id, as printed by `n2p id`.
//! - `push` — whether the member may push into (use) the other members' daemons (default
//!   `true`).
//! - `pull` — whether the member may pull from (read the stores of) the other members
//!   through the `n2p/store` protocol (default `true`).
//! - `nix_key` — the member's Nix public key, `name:base64` as `n2p key` prints it,
//!   optional: `n2p trust` lists it in `trusted-public-keys`, and the binary cache ranks
//!   paths it signed first. Key names are unique in a team (Nix looks keys up by name).
//! - `addrs` — fixed direct addresses (`"ip:port"`) to reach the member at, optional.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::OsString,
    fmt, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use iroh::{EndpointAddr, EndpointId, TransportAddr};
use n2p_core::{
    access::Permission,
    config_file::{ConfigFileError, ConfigSource, Spanned, read_config_text},
    endpoint::RelayChoice,
    secret_file::{SecretFileError, read_secret_file as read_private_file},
};
use serde::Deserialize;

use crate::proto::{
    names::{MAX_NAME_LEN, name_key, validate_name},
    topic::{TeamSecret, TeamSecretError},
};

/// How long a silent peer is kept when the team file does not say.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(6);
/// The shortest allowed `expiry_secs`.
pub const MIN_EXPIRY_SECS: u64 = 2;
/// The longest allowed `expiry_secs`.
pub const MAX_EXPIRY_SECS: u64 = 3600;
/// The most fixed addresses one member may list.
pub const MAX_MEMBER_ADDRS: usize = 16;

/// One `[[member]]` of a team file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// The member's name; also the stem of its socket file.
    pub name: String,
    /// Its iroh endpoint id.
    pub id: EndpointId,
    /// Whether it may push into (use) the other members' daemons.
    pub push: bool,
    /// Whether it may pull from the other members' stores.
    pub pull: bool,
    /// Its Nix public key, if listed.
    pub nix_key: Option<n2p_nix::PublicKey>,
    /// Fixed direct addresses to reach it at.
    pub addrs: Vec<SocketAddr>,
}

/// Where the team secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file (already resolved against the team file's directory).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// Why the team secret could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretLoadError {
    /// The secret file could not be read.
    #[error("cannot read the team secret file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Group or others may read the secret file.
    #[error(
        "the team secret file {} is readable by other users (mode {mode:03o}); fix it with: chmod 600 {}",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The secret file is not a regular file, or too large to be a secret.
    #[error("cannot use the team secret file")]
    File(#[source] SecretFileError),
    /// The environment variable is not set.
    #[error("the environment variable {var} (the team's secret_env) is not set")]
    EnvUnset {
        /// Its name.
        var: String,
    },
    /// The secret is empty, too short or too long.
    #[error("unusable team secret from {origin}")]
    Weak {
        /// Where it came from.
        origin: SecretSource,
        /// What is wrong with it.
        #[source]
        reason: TeamSecretError,
    },
}

impl SecretLoadError {
    /// A suggestion for the user, where there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            // The message itself says how to fix the mode.
            Self::TooOpen { .. } => None,
            Self::Weak { .. } => Some(
                "make a new secret with: n2p mesh new-secret > team.secret && chmod 600 \
                 team.secret (and share it privately)"
                    .to_owned(),
            ),
            Self::EnvUnset { var } => Some(format!("export {var}=<the team secret>")),
            Self::Io { .. } | Self::File(_) => None,
        }
    }
}

/// A checked team file.
#[derive(Debug, Clone)]
pub struct TeamConfig {
    path: Option<PathBuf>,
    secret: SecretSource,
    relay: RelayChoice,
    open: bool,
    expiry: Duration,
    members: Vec<Member>,
    /// Where each member's id is in `members`: the table asks for every announcement and
    /// every peer, and ids compare in constant time, 32 bytes at a time.
    by_id: HashMap<EndpointId, usize>,
    /// The members' names as [`name_key`]s: reserved for them. The table asks on every
    /// peer that joins.
    name_keys: BTreeSet<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeamFile {
    mesh: Spanned<RawMesh>,
    #[serde(default)]
    member: Vec<RawMember>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMesh {
    secret_file: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    relay: Option<Spanned<String>>,
    open: Option<Spanned<bool>>,
    expiry_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: Spanned<String>,
    id: Spanned<String>,
    #[serde(default = "default_push")]
    push: bool,
    #[serde(default = "default_push")]
    pull: bool,
    nix_key: Option<Spanned<String>>,
    addrs: Option<Spanned<Vec<Spanned<String>>>>,
}

fn default_push() -> bool {
    true
}

impl TeamConfig {
    /// Reads and checks the team file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = read_config_text(path)?;
        Self::parse(&text, path)
    }

    /// Checks team file `text` read from `path` (which names the file in errors and anchors a
    /// relative `secret_file`).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigFileError> {
        let src = ConfigSource::new(path, text);
        let raw: RawTeamFile = src.parse()?;
        let mesh_span = raw.mesh.span();
        let mesh = raw.mesh.into_inner();

        let secret = match (mesh.secret_file, mesh.secret_env) {
            (Some(_), Some(env)) => {
                return Err(src.error_at(
                    env.span(),
                    "both `secret_file` and `secret_env` are set",
                    Some("keep exactly one of them".to_owned()),
                ));
            }
            (None, None) => {
                return Err(src.error_at(
                    mesh_span,
                    "`[mesh]` does not say where the team secret comes from",
                    Some(
                        "add `secret_file = \"team.secret\"` (a file next to this one, mode 600) \
                         or `secret_env = \"N2P_TEAM_SECRET\"`"
                            .to_owned(),
                    ),
                ));
            }
            (Some(file), None) => {
                if file.get_ref().trim().is_empty() {
                    return Err(src.error_at(
                        file.span(),
                        "`secret_file` is empty",
                        Some("give the path of the file holding the team secret".to_owned()),
                    ));
                }
                let file = Path::new(file.get_ref());
                let base = path.parent().unwrap_or(Path::new(""));
                SecretSource::File(base.join(file))
            }
            (None, Some(env)) => {
                let var = env.get_ref();
                if var.is_empty() || var.contains(['=', '\0']) {
                    return Err(src.error_at(
                        env.span(),
                        format!("`{var}` is not an environment variable name"),
                        Some("use a name such as \"N2P_TEAM_SECRET\"".to_owned()),
                    ));
                }
                SecretSource::Env(var.clone())
            }
        };

        let relay = match mesh.relay {
            None => RelayChoice::Default,
            Some(relay) => relay.get_ref().parse().map_err(|_| {
                src.error_at(
                    relay.span(),
                    format!("unknown relay `{}`", relay.get_ref()),
                    Some(
                        "use \"default\", \"disabled\" or a relay URL such as \
                         \"https://relay.example.org\""
                            .to_owned(),
                    ),
                )
            })?,
        };

        let expiry = match mesh.expiry_secs {
            None => DEFAULT_EXPIRY,
            Some(secs) => {
                let value = *secs.get_ref();
                if !(MIN_EXPIRY_SECS..=MAX_EXPIRY_SECS).contains(&value) {
                    return Err(src.error_at(
                        secs.span(),
                        format!(
                            "`expiry_secs` must be between {MIN_EXPIRY_SECS} and \
                             {MAX_EXPIRY_SECS}, not {value}"
                        ),
                        Some(
                            "peers announce themselves every expiry_secs / 3 seconds; \
                             the default, 6, suits most teams"
                                .to_owned(),
                        ),
                    ));
                }
                Duration::from_secs(value)
            }
        };

        let members = check_members(&src, raw.member)?;

        let open = match mesh.open {
            None => members.is_empty(),
            Some(open) => {
                if !*open.get_ref() && members.is_empty() {
                    return Err(src.error_at(
                        open.span(),
                        "a closed team (`open = false`) needs at least one `[[member]]`",
                        Some("add `[[member]]` tables, or remove `open = false`".to_owned()),
                    ));
                }
                if *open.get_ref()
                    && let Some(member) = members.iter().find(|m| !m.push)
                {
                    // The daemon of an open team admits anyone who proves the secret, and
                    // anyone holding the secret can make a new identity: push = false could
                    // be sidestepped by its own member, so it is refused rather than ignored.
                    return Err(src.error_at(
                        open.span(),
                        format!(
                            "member `{}` has `push = false`, which an open team cannot \
                             enforce: anyone holding the team secret can join under a new \
                             identity and push",
                            member.name
                        ),
                        Some(
                            "remove `open = true` to make the team closed (only listed \
                             members join), or drop `push = false`"
                                .to_owned(),
                        ),
                    ));
                }
                if *open.get_ref()
                    && let Some(member) = members.iter().find(|m| !m.pull)
                {
                    // As for push: the store protocol of an open team admits anyone who
                    // proves the secret.
                    return Err(src.error_at(
                        open.span(),
                        format!(
                            "member `{}` has `pull = false`, which an open team cannot \
                             enforce: anyone holding the team secret can join under a new \
                             identity and pull",
                            member.name
                        ),
                        Some(
                            "remove `open = true` to make the team closed (only listed \
                             members join), or drop `pull = false`"
                                .to_owned(),
                        ),
                    ));
                }
                *open.get_ref()
            }
        };

        Ok(Self {
            path: Some(path.to_owned()),
            secret,
            relay,
            open,
            expiry,
            by_id: index_by_id(&members),
            name_keys: members.iter().map(|m| name_key(&m.name)).collect(),
            members,
        })
    }

    /// An open team without a file: anyone holding the secret from `secret` may join.
    pub fn open_team(secret: SecretSource, relay: RelayChoice) -> Self {
        Self {
            path: None,
            secret,
            relay,
            open: true,
            expiry: DEFAULT_EXPIRY,
            members: Vec::new(),
            by_id: HashMap::new(),
            name_keys: BTreeSet::new(),
        }
    }

    /// Sets how long a silent peer is kept (clamped to the range a team file allows).
    pub fn with_expiry(mut self, expiry: Duration) -> Self {
        self.expiry = expiry.clamp(
            Duration::from_secs(MIN_EXPIRY_SECS),
            Duration::from_secs(MAX_EXPIRY_SECS),
        );
        self
    }

    /// The file this came from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Where the team secret comes from.
    pub fn secret_source(&self) -> &SecretSource {
        &self.secret
    }

    /// The relay setting.
    pub fn relay(&self) -> &RelayChoice {
        &self.relay
    }

    /// After how long without an announcement a peer is dropped.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// How often a node should announce itself: a third of [`Self::expiry`], so two lost
    /// announcements in a row do not drop it.
    pub fn announce_interval(&self) -> Duration {
        self.expiry / 3
    }

    /// The members, in file order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The members' names as [`name_key`]s (what no one else may be called).
    pub fn member_name_keys(&self) -> &BTreeSet<String> {
        &self.name_keys
    }

    /// The member with endpoint id `id`.
    pub fn member_by_id(&self, id: &EndpointId) -> Option<&Member> {
        self.by_id.get(id).map(|&at| &self.members[at])
    }

    /// The member called `name` (ignoring ASCII case, as names do).
    pub fn member_by_name(&self, name: &str) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(name))
    }

    /// Whether peers not listed as members may join (with the secret).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether `id` may admit itself to the mesh: every listed member, and in an open team
    /// anyone (the secret is checked elsewhere).
    pub fn admits(&self, id: &EndpointId) -> bool {
        self.open || self.member_by_id(id).is_some()
    }

    /// The Nix public keys of the members that list one.
    pub fn nix_keys(&self) -> Vec<n2p_nix::PublicKey> {
        self.members
            .iter()
            .filter_map(|m| m.nix_key.clone())
            .collect()
    }

    /// Whether `id` holds `permission` (`push` or `pull` in its `[[member]]` entry);
    /// anyone not listed holds it only in an open team. (An open team cannot take a right
    /// away from a listed member, since anyone with the secret can mint a fresh identity:
    /// such a file is refused at load.)
    pub fn permits(&self, id: &EndpointId, permission: Permission) -> bool {
        match (self.member_by_id(id), permission) {
            (Some(member), Permission::Push) => member.push,
            (Some(member), Permission::Pull) => member.pull,
            (None, _) => self.open,
        }
    }

    /// The members to bootstrap the gossip swarm from: everyone but `me`, with their fixed
    /// addresses (which may be none; then the address lookup has to find them).
    pub fn bootstrap(&self, me: &EndpointId) -> Vec<EndpointAddr> {
        self.members
            .iter()
            .filter(|m| m.id != *me)
            .map(|m| EndpointAddr::from_parts(m.id, m.addrs.iter().copied().map(TransportAddr::Ip)))
            .collect()
    }

    /// Loads the team secret from its file or environment variable.
    pub fn load_secret(&self) -> Result<TeamSecret, SecretLoadError> {
        self.load_secret_with(|var| std::env::var_os(var))
    }

    /// Like [`Self::load_secret`], with `env` standing in for the process environment.
    pub fn load_secret_with(
        &self,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<TeamSecret, SecretLoadError> {
        load_secret(&self.secret, env)
    }
}

/// Loads the secret from `source`; `env` looks up environment variables.
pub fn load_secret(
    source: &SecretSource,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<TeamSecret, SecretLoadError> {
    let bytes = match source {
        SecretSource::File(path) => read_secret_file(path)?,
        SecretSource::Env(var) => {
            let value = env(var).ok_or_else(|| SecretLoadError::EnvUnset { var: var.clone() })?;
            zeroize::Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(value))
        }
    };
    TeamSecret::new(bytes.trim_ascii().to_vec()).map_err(|reason| SecretLoadError::Weak {
        origin: source.clone(),
        reason,
    })
}

/// Reads the secret file through core's checked loader (type and mode checked on the open
/// file, size bounded).
fn read_secret_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, SecretLoadError> {
    let limit = TeamSecret::MAX_LEN * 2 + 64;
    read_private_file(path, limit).map_err(|e| match e {
        SecretFileError::TooOpen { path, mode } => SecretLoadError::TooOpen { path, mode },
        SecretFileError::Io { path, source } => SecretLoadError::Io { path, source },
        other => SecretLoadError::File(other),
    })
}

/// Each member's position in `members`, by id (ids are unique: [`check_members`]).
fn index_by_id(members: &[Member]) -> HashMap<EndpointId, usize> {
    members
        .iter()
        .enumerate()
        .map(|(at, m)| (m.id, at))
        .collect()
}

fn check_members(
    src: &ConfigSource<'_>,
    raw: Vec<RawMember>,
) -> Result<Vec<Member>, ConfigFileError> {
    let name_hint = || {
        Some(format!(
            "names may hold up to {MAX_NAME_LEN} letters, digits, '.', '_' or '-', \
             and start with a letter, digit or '_'"
        ))
    };
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_id: BTreeMap<EndpointId, usize> = BTreeMap::new();
    let mut members = Vec::with_capacity(raw.len());
    for m in raw {
        let name = m.name.get_ref();
        if let Err(e) = validate_name(name) {
            return Err(src.error_at(
                m.name.span(),
                format!("invalid member name `{}`: {e}", name.escape_debug()),
                name_hint(),
            ));
        }
        let line = line_of(src, m.name.span().start);
        if let Some(first) = by_name.insert(name_key(name), line) {
            return Err(src.error_at(
                m.name.span(),
                format!("duplicate member name `{name}` (first on line {first})"),
                Some("names must be unique, ignoring case".to_owned()),
            ));
        }

        let id_text = m.id.get_ref().trim();
        let id: EndpointId = id_text.parse().map_err(|_| {
            src.error_at(
                m.id.span(),
                format!("invalid endpoint id `{}`", id_text.escape_debug()),
                Some("use the id `n2p id` prints on that machine (64 hex digits)".to_owned()),
            )
        })?;
        let line = line_of(src, m.id.span().start);
        if let Some(first) = by_id.insert(id, line) {
            return Err(src.error_at(
                m.id.span(),
                format!(
                    "duplicate member id {} (first on line {first})",
                    id.fmt_short()
                ),
                Some("each member needs its own id".to_owned()),
            ));
        }

        let raw_addrs = match m.addrs {
            Some(list) if list.get_ref().len() > MAX_MEMBER_ADDRS => {
                return Err(src.error_at(
                    list.span(),
                    format!(
                        "{} addresses; at most {MAX_MEMBER_ADDRS} are allowed",
                        list.get_ref().len()
                    ),
                    None,
                ));
            }
            Some(list) => list.into_inner(),
            None => Vec::new(),
        };
        let mut addrs = Vec::with_capacity(raw_addrs.len());
        for addr in raw_addrs {
            let parsed: SocketAddr = addr.get_ref().trim().parse().map_err(|_| {
                src.error_at(
                    addr.span(),
                    format!("invalid address `{}`", addr.get_ref().escape_debug()),
                    Some(
                        "write an IP address and port, such as \"192.168.1.10:7001\" or \
                         \"[fe80::1%2]:7001\"; host names are not supported"
                            .to_owned(),
                    ),
                )
            })?;
            if parsed.port() == 0 {
                return Err(src.error_at(
                    addr.span(),
                    format!("address `{parsed}` has port 0"),
                    Some("give the port the member's n2p listens on".to_owned()),
                ));
            }
            if !addrs.contains(&parsed) {
                addrs.push(parsed);
            }
        }

        let nix_key = match m.nix_key {
            None => None,
            Some(text) => {
                let key = n2p_nix::PublicKey::parse(text.get_ref().trim()).map_err(|e| {
                    src.error_at(
                        text.span(),
                        format!("invalid `nix_key`: {e}"),
                        Some(
                            "paste the line `n2p key` prints on the member's machine \
                             (name:base64)"
                                .to_owned(),
                        ),
                    )
                })?;
                if let Some(other) = members.iter().find(|other: &&Member| {
                    other
                        .nix_key
                        .as_ref()
                        .is_some_and(|k| k.name() == key.name())
                }) {
                    return Err(src.error_at(
                        text.span(),
                        format!(
                            "Nix key name `{}` is also used by member `{}`",
                            key.name(),
                            other.name
                        ),
                        Some("Nix looks keys up by name: give each member its own".to_owned()),
                    ));
                }
                Some(key)
            }
        };

        members.push(Member {
            name: name.clone(),
            id,
            push: m.push,
            pull: m.pull,
            nix_key,
            addrs,
        });
    }
    Ok(members)
}

fn line_of(src: &ConfigSource<'_>, offset: usize) -> usize {
    n2p_core::config_file::Location::of(src.text(), offset).line
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, fs, os::unix::fs::PermissionsExt};

    use iroh::SecretKey;

    use super::*;

    fn id(seed: u8) -> EndpointId {
        SecretKey::from_bytes(&[seed; 32]).public()
    }

    fn parse(text: &str) -> Result<TeamConfig, ConfigFileError> {
        TeamConfig::parse(text, Path::new("/repo/team.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("should be refused").to_string()
    }

    fn two_members() -> String {
        format!(
            r#"
[mesh]
secret_file = "team.secret"
relay = "disabled"
expiry_secs = 6

[[member]]
name = "alice"
id = "{}"
addrs = ["127.0.0.1:7001", "[::1]:7001"]

[[member]]
name = "bob"
id = "{}"
push = false
"#,
            id(1),
            id(2)
        )
    }

    #[test]
    fn full_file() {
        let team = parse(&two_members()).expect("valid");
        assert_eq!(team.path(), Some(Path::new("/repo/team.toml")));
        assert_eq!(
            team.secret_source(),
            &SecretSource::File(PathBuf::from("/repo/team.secret"))
        );
        assert_eq!(team.relay(), &RelayChoice::Disabled);
        assert_eq!(team.expiry(), Duration::from_secs(6));
        assert_eq!(team.announce_interval(), Duration::from_secs(2));
        assert!(!team.is_open());
        assert_eq!(team.members().len(), 2);
        let alice = team.member_by_id(&id(1)).expect("alice");
        assert_eq!(alice.name, "alice");
        assert!(alice.push);
        assert_eq!(alice.addrs.len(), 2);
        assert_eq!(team.member_by_name("BOB").map(|m| m.id), Some(id(2)));
        assert!(team.member_by_id(&id(3)).is_none());
    }

    #[test]
    fn permissions() {
        let team = parse(&two_members()).expect("valid");
        assert!(team.permits(&id(1), Permission::Push));
        assert!(!team.permits(&id(2), Permission::Push));
        assert!(!team.permits(&id(3), Permission::Push));
        assert!(team.admits(&id(2)));
        assert!(!team.admits(&id(3)));

        let open = parse(
            &two_members()
                .replace("expiry_secs = 6", "open = true")
                .replace("push = false", "push = true"),
        )
        .expect("open");
        assert!(open.is_open());
        assert!(open.permits(&id(1), Permission::Push));
        assert!(open.permits(&id(3), Permission::Push));
        assert!(open.admits(&id(3)));
    }

    #[test]
    fn push_false_in_an_open_team_is_refused() {
        let text = two_members().replace("expiry_secs = 6", "open = true");
        let err = parse(&text).expect_err("push = false cannot hold in an open team");
        let msg = err.to_string();
        assert!(
            msg.contains("`push = false`, which an open team cannot enforce"),
            "{msg}"
        );
        assert!(msg.contains("remove `open = true`"), "{msg}");
    }

    /// A Nix public key named `name` (any 32 bytes make a valid ed25519 public key here).
    fn nix_key(name: &str, seed: u8) -> String {
        n2p_nix::SecretKey::from_seed(name, [seed; 32])
            .public()
            .to_string()
    }

    #[test]
    fn pull_and_nix_key_per_member() {
        let text = two_members().replace(
            "push = false",
            &format!(
                "push = false\npull = false\nnix_key = \"{}\"",
                nix_key("bob-n2p-1", 2)
            ),
        );
        let team = parse(&text).expect("valid");
        let alice = team.member_by_id(&id(1)).expect("alice");
        let bob = team.member_by_id(&id(2)).expect("bob");
        assert!(alice.pull && alice.nix_key.is_none());
        assert!(!bob.pull);
        assert_eq!(
            bob.nix_key.as_ref().map(|k| k.to_string()),
            Some(nix_key("bob-n2p-1", 2))
        );
        assert!(team.permits(&id(1), Permission::Pull));
        assert!(!team.permits(&id(2), Permission::Pull));
        assert!(!team.permits(&id(3), Permission::Pull));
        assert_eq!(team.nix_keys().len(), 1);
    }

    #[test]
    fn pull_false_in_an_open_team_is_refused() {
        let text = two_members()
            .replace("expiry_secs = 6", "open = true")
            .replace("push = false", "pull = false");
        let msg = parse(&text)
            .expect_err("pull = false in an open team")
            .to_string();
        assert!(
            msg.contains("`pull = false`, which an open team cannot enforce"),
            "{msg}"
        );
    }

    #[test]
    fn bad_or_colliding_nix_keys_are_refused_with_their_line() {
        let text = two_members().replace("push = false", "nix_key = \"bob:not-base64!\"");
        let msg = err(&text);
        assert!(
            msg.contains(":15:") && msg.contains("invalid `nix_key`"),
            "{msg}"
        );
        assert!(msg.contains("n2p key"), "{msg}");

        let text = two_members()
            .replace(
                "addrs = [",
                &format!("nix_key = \"{}\"\naddrs = [", nix_key("same-1", 1)),
            )
            .replace(
                "push = false",
                &format!("nix_key = \"{}\"", nix_key("same-1", 2)),
            );
        let msg = err(&text);
        assert!(
            msg.contains("Nix key name `same-1` is also used by member `alice`"),
            "{msg}"
        );
    }

    #[test]
    fn minimal_file_is_an_open_team() {
        let team = parse("[mesh]\nsecret_env = \"N2P_TEAM_SECRET\"\n").expect("valid");
        assert!(team.is_open());
        assert_eq!(team.relay(), &RelayChoice::Default);
        assert_eq!(team.expiry(), DEFAULT_EXPIRY);
        assert_eq!(
            team.secret_source(),
            &SecretSource::Env("N2P_TEAM_SECRET".into())
        );
        assert!(team.permits(&id(9), Permission::Push));
        assert!(team.bootstrap(&id(9)).is_empty());
    }

    #[test]
    fn relative_secret_file_follows_the_team_file() {
        let team = TeamConfig::parse("[mesh]\nsecret_file = \"s/x\"\n", Path::new("team.toml"))
            .expect("valid");
        assert_eq!(team.secret_source(), &SecretSource::File("s/x".into()));
        let team = parse("[mesh]\nsecret_file = \"/etc/n2p/secret\"\n").expect("valid");
        assert_eq!(
            team.secret_source(),
            &SecretSource::File("/etc/n2p/secret".into())
        );
    }

    #[test]
    fn bootstrap_lists_others_with_addresses() {
        let team = parse(&two_members()).expect("valid");
        let boot = team.bootstrap(&id(1));
        assert_eq!(boot.len(), 1);
        assert_eq!(boot[0].id, id(2));
        assert!(boot[0].addrs.is_empty());
        let boot = team.bootstrap(&id(2));
        assert_eq!(boot[0].id, id(1));
        assert_eq!(boot[0].ip_addrs().count(), 2);
    }

    #[test]
    fn secret_source_errors() {
        let e = err("[mesh]\nsecret_file = \"a\"\nsecret_env = \"B\"\n");
        assert!(
            e.starts_with("/repo/team.toml:3:14: both `secret_file` and `secret_env`"),
            "{e}"
        );
        let e = err("[mesh]\nrelay = \"default\"\n");
        assert!(
            e.starts_with("/repo/team.toml:1:1: `[mesh]` does not say"),
            "{e}"
        );
        assert!(e.contains("hint: add `secret_file"), "{e}");
        let e = err("[mesh]\nsecret_file = \" \"\n");
        assert!(e.contains("`secret_file` is empty"), "{e}");
        let e = err("[mesh]\nsecret_env = \"A=B\"\n");
        assert!(e.contains("is not an environment variable name"), "{e}");
        let e = err("[mesh]\nsecret = \"inline\"\n");
        assert!(e.contains("unknown key `secret`"), "{e}");
    }

    #[test]
    fn relay_errors() {
        let e = err("[mesh]\nsecret_env = \"S\"\nrelay = \"sometimes\"\n");
        assert_eq!(
            e,
            "/repo/team.toml:3:9: unknown relay `sometimes`\n  hint: use \"default\", \
             \"disabled\" or a relay URL such as \"https://relay.example.org\""
        );
        let team = parse("[mesh]\nsecret_env = \"S\"\nrelay = \"https://relay.example.org\"\n")
            .expect("url");
        assert!(matches!(team.relay(), RelayChoice::Custom(_)));
    }

    #[test]
    fn expiry_limits() {
        let e = err("[mesh]\nsecret_env = \"S\"\nexpiry_secs = 1\n");
        assert!(
            e.starts_with("/repo/team.toml:3:15: `expiry_secs` must be between 2"),
            "{e}"
        );
        let e = err("[mesh]\nsecret_env = \"S\"\nexpiry_secs = 100000\n");
        assert!(e.contains("not 100000"), "{e}");
        let team = parse("[mesh]\nsecret_env = \"S\"\nexpiry_secs = 2\n").expect("min");
        assert!(team.announce_interval() > Duration::ZERO);
    }

    #[test]
    fn closed_team_needs_members() {
        let e = err("[mesh]\nsecret_env = \"S\"\nopen = false\n");
        assert!(e.contains("needs at least one `[[member]]`"), "{e}");
    }

    #[test]
    fn member_name_errors() {
        let text = two_members().replace("name = \"bob\"", "name = \"../bob\"");
        let e = err(&text);
        assert!(e.contains(":13:8: invalid member name `../bob`"), "{e}");
        assert!(e.contains("hint: names may hold"), "{e}");
        for bad in [".hidden", "", "a b", "-x", "ö"] {
            let text = two_members().replace("name = \"bob\"", &format!("name = \"{bad}\""));
            assert!(parse(&text).is_err(), "{bad:?}");
        }
        let text =
            two_members().replace("name = \"bob\"", &format!("name = \"{}\"", "x".repeat(33)));
        assert!(err(&text).contains("limit is 32"));
    }

    #[test]
    fn duplicate_names_and_ids() {
        let text = two_members().replace("name = \"bob\"", "name = \"Alice\"");
        let e = err(&text);
        assert!(
            e.contains(":13:8: duplicate member name `Alice` (first on line 8)"),
            "{e}"
        );
        let text = two_members().replace(&id(2).to_string(), &id(1).to_string());
        let e = err(&text);
        assert!(e.contains(":14:6: duplicate member id"), "{e}");
        assert!(e.contains("(first on line 9)"), "{e}");
    }

    #[test]
    fn bad_ids() {
        for bad in [
            "",
            "abc",
            "not hex at all",
            &"0".repeat(63),
            &"g".repeat(64),
        ] {
            let text = two_members().replace(&id(2).to_string(), bad);
            let e = err(&text);
            assert!(e.contains("invalid endpoint id"), "{bad:?}: {e}");
            assert!(e.contains("hint: use the id `n2p id` prints"), "{e}");
        }
        // the base32 form iroh also accepts is fine
        let z = data_encoding_free_base32(&id(2));
        let text = two_members().replace(&id(2).to_string(), &z);
        assert_eq!(parse(&text).expect("base32").members()[1].id, id(2));
    }

    /// iroh's `FromStr` also reads lowercase RFC 4648 base32 (no padding).
    fn data_encoding_free_base32(id: &EndpointId) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut out = String::new();
        let (mut buffer, mut bits) = (0u32, 0);
        for &b in id.as_bytes() {
            buffer = (buffer << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                out.push(ALPHABET[((buffer >> (bits - 5)) & 31) as usize] as char);
                bits -= 5;
            }
        }
        if bits > 0 {
            out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
        }
        out
    }

    #[test]
    fn bad_addrs() {
        for bad in [
            "localhost:7001",
            "127.0.0.1",
            "1.2.3.4:99999",
            "1.2.3.4:0",
            "",
        ] {
            let text = two_members().replace("\"127.0.0.1:7001\"", &format!("\"{bad}\""));
            let e = err(&text);
            assert!(e.contains(":10:10:"), "{bad:?}: {e}");
        }
        let many = vec!["\"127.0.0.1:1\""; MAX_MEMBER_ADDRS + 1].join(", ");
        let text = two_members().replace("\"127.0.0.1:7001\", \"[::1]:7001\"", &many);
        assert!(err(&text).contains("at most 16"));
        // duplicates are merged
        let text = two_members().replace("\"[::1]:7001\"", "\"127.0.0.1:7001\"");
        assert_eq!(parse(&text).expect("valid").members()[0].addrs.len(), 1);
    }

    #[test]
    fn unknown_member_key() {
        let text = two_members().replace("push = false", "pussh = false");
        let e = err(&text);
        assert!(e.contains("unknown key `pussh`"), "{e}");
        assert!(e.contains("did you mean `push`?"), "{e}");
    }

    #[test]
    fn load_reads_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("team.toml");
        fs::write(&path, two_members()).expect("write");
        let team = TeamConfig::load(&path).expect("load");
        assert_eq!(
            team.secret_source(),
            &SecretSource::File(dir.path().join("team.secret"))
        );
        let missing = TeamConfig::load(&dir.path().join("nope.toml")).expect_err("missing");
        assert!(matches!(missing, ConfigFileError::Io { .. }));
    }

    fn write_secret(dir: &Path, content: &[u8], mode: u32) -> PathBuf {
        let path = dir.join("team.secret");
        fs::write(&path, content).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn secret_from_file_is_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_secret(dir.path(), b"  0123456789abcdef\n", 0o600);
        let a = load_secret(&SecretSource::File(path), |_| None).expect("load");
        let b = TeamSecret::new(b"0123456789abcdef".to_vec()).expect("secret");
        let ka = crate::proto::topic::MeshKeys::derive(&a, "t").expect("keys");
        let kb = crate::proto::topic::MeshKeys::derive(&b, "t").expect("keys");
        assert_eq!(ka.topic_id(), kb.topic_id());
    }

    #[test]
    fn secret_file_must_be_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let path = write_secret(dir.path(), b"0123456789abcdef", mode);
            let e = load_secret(&SecretSource::File(path.clone()), |_| None).expect_err("open");
            assert!(matches!(e, SecretLoadError::TooOpen { .. }), "{mode:o}");
            assert_eq!(e.hint(), None, "the message already holds the fix");
            assert!(
                e.to_string()
                    .contains(&format!("chmod 600 {}", path.display()))
            );
        }
        let path = write_secret(dir.path(), b"0123456789abcdef", 0o400);
        assert!(load_secret(&SecretSource::File(path), |_| None).is_ok());
    }

    #[test]
    fn weak_secrets_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for content in [&b""[..], b"\n\n  ", b"short", b"0123456789abcde\n"] {
            let path = write_secret(dir.path(), content, 0o600);
            let e = load_secret(&SecretSource::File(path), |_| None).expect_err("weak");
            assert!(matches!(e, SecretLoadError::Weak { .. }), "{content:?}");
            assert!(e.hint().is_some());
        }
    }

    #[test]
    fn missing_secret_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = load_secret(&SecretSource::File(dir.path().join("nope")), |_| None)
            .expect_err("missing");
        assert!(matches!(e, SecretLoadError::Io { .. }));
    }

    #[test]
    fn secret_from_env() {
        let env: HashMap<&str, &str> = [
            ("GOOD", " 0123456789abcdef "),
            ("SHORT", "abc"),
            ("EMPTY", ""),
        ]
        .into();
        let lookup = |var: &str| env.get(var).map(OsString::from);
        assert!(load_secret(&SecretSource::Env("GOOD".into()), lookup).is_ok());
        assert!(matches!(
            load_secret(&SecretSource::Env("SHORT".into()), lookup),
            Err(SecretLoadError::Weak {
                reason: TeamSecretError::TooShort { len: 3 },
                ..
            })
        ));
        assert!(matches!(
            load_secret(&SecretSource::Env("EMPTY".into()), lookup),
            Err(SecretLoadError::Weak {
                reason: TeamSecretError::Empty,
                ..
            })
        ));
        let e = load_secret(&SecretSource::Env("UNSET".into()), lookup).expect_err("unset");
        assert!(matches!(e, SecretLoadError::EnvUnset { .. }));
        let team = parse("[mesh]\nsecret_env = \"GOOD\"\n").expect("team");
        assert!(team.load_secret_with(lookup).is_ok());
    }

    #[test]
    fn open_team_without_file() {
        let team = TeamConfig::open_team(SecretSource::Env("S".into()), RelayChoice::Disabled)
            .with_expiry(Duration::from_millis(10));
        assert!(team.is_open());
        assert_eq!(team.expiry(), Duration::from_secs(MIN_EXPIRY_SECS));
        assert!(team.path().is_none());
    }
}
