//! Mesh nodes: a team secret and team files ([`TeamDir`], [`TeamSpec`]), one [`MeshPeer`]
//! per node (a home, a fixed loopback port, a nix-daemon when the test pushes to it) and the
//! `n2p mesh join` processes started from them ([`MeshProcess`]).
//!
//! ```ignore
//! let (alice, bob) = (MeshPeer::new("alice"), MeshPeer::new("bob"));
//! let team = TeamDir::new();
//! let team_file = team.write("team.toml", &TeamSpec::closed([alice.member(), bob.member()]));
//! let _alice = alice.join(&team_file, &[]);
//! let _bob = bob.join(&team_file, &[]);
//! alice.wait_for_sockets(&["bob"], CONVERGENCE_TIMEOUT);
//! ```
//!
//! Every node binds 127.0.0.1 with relays disabled; closed teams list each member's address,
//! open teams bootstrap from `n2p mesh invite` tickets.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::{COMMAND_TIMEOUT, STARTUP_TIMEOUT, TempHome, n2p_command};
use n2p_testkit::net::{free_loopback_addr, free_tcp_port};
use n2p_testkit::nix::{NixDaemon, socket_store_url};
use n2p_testkit::proc::{Process, expect_success, run_bounded};
use n2p_testkit::wait::wait_until;

use super::{N2P, dir_names};

/// The topic the tests' nodes join. Every test has a secret of its own, and the gossip topic
/// id is derived from both, so tests running side by side never meet.
pub(crate) const TOPIC: &str = "e2e";

/// `expiry_secs` of the test teams: the smallest value that still leaves nodes two
/// announcements (one a second) to miss before they are dropped.
pub(crate) const EXPIRY_SECS: u64 = 3;

/// How often nodes of a test team announce themselves.
pub(crate) const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(EXPIRY_SECS / 3);

/// Longest nodes may take from their start until they see each other. The contract is 2 s
/// from the first announcement; starting a debug build on a busy 2-core machine comes on top.
pub(crate) const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(15);

/// The team secret's file name inside a [`TeamDir`].
const SECRET_FILE: &str = "team.secret";

/// alice and bob (no daemons) and `team.toml`, a closed team of the two: where many tests
/// start. Returns the team directory too, for more files beside it.
pub(crate) fn alice_and_bob() -> (MeshPeer, MeshPeer, TeamDir, PathBuf) {
    let alice = MeshPeer::new("alice");
    let bob = MeshPeer::new("bob");
    let team = TeamDir::new();
    let team_file = team.write(
        "team.toml",
        &TeamSpec::closed([alice.member(), bob.member()]),
    );
    (alice, bob, team, team_file)
}

/// A directory holding a fresh team secret (`team.secret`, mode 0600, made by
/// `n2p mesh new-secret`) and the team files that refer to it.
pub(crate) struct TeamDir {
    dir: ScratchDir,
    secret: String,
}

impl TeamDir {
    /// A new directory with a new secret.
    pub(crate) fn new() -> Self {
        let output = run_bounded(
            n2p_command(N2P.as_ref()).args(["mesh", "new-secret"]),
            COMMAND_TIMEOUT,
            "n2p mesh new-secret",
        );
        let secret = expect_success(&output, "n2p mesh new-secret")
            .trim()
            .to_owned();
        assert!(
            secret.len() >= 32 && secret.chars().all(|c| c.is_ascii_hexdigit()),
            "n2p mesh new-secret should print a long hex secret, printed {secret:?}"
        );
        let dir = ScratchDir::new("team");
        write_file(&dir.join(SECRET_FILE), &format!("{secret}\n"), 0o600);
        Self { dir, secret }
    }

    /// The secret, as written to the secret file.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// The secret file.
    pub(crate) fn secret_file(&self) -> PathBuf {
        self.dir.join(SECRET_FILE)
    }

    /// Writes `spec` as the team file `file_name` in this directory; returns its path.
    pub(crate) fn write(&self, file_name: &str, spec: &TeamSpec) -> PathBuf {
        self.write_raw(file_name, &spec.to_toml())
    }

    /// Writes `text` as the file `file_name` in this directory; returns its path.
    pub(crate) fn write_raw(&self, file_name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(file_name);
        write_file(&path, text, 0o644);
        path
    }
}

/// Creates (or replaces) `path` with `text` and permission bits `mode`.
fn write_file(path: &Path, text: &str, mode: u32) {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|error| panic!("creating {}: {error}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
}

/// What a team file says; [`TeamDir::write`] turns it into TOML.
#[derive(Debug, Clone, Default)]
pub(crate) struct TeamSpec {
    /// The `[[member]]` entries; none makes an open team.
    pub(crate) members: Vec<MemberSpec>,
    /// `expiry_secs`, if set.
    pub(crate) expiry_secs: Option<u64>,
    /// `secret_env = "<var>"` instead of `secret_file = "team.secret"`.
    pub(crate) secret_env: Option<String>,
    /// `relay`; `None` writes `"disabled"`.
    pub(crate) relay: Option<String>,
}

impl TeamSpec {
    /// A closed team of `members`, with the test expiry.
    pub(crate) fn closed(members: impl IntoIterator<Item = MemberSpec>) -> Self {
        Self {
            members: members.into_iter().collect(),
            expiry_secs: Some(EXPIRY_SECS),
            secret_env: None,
            relay: None,
        }
    }

    /// An open team (anyone with the secret), with the test expiry.
    pub(crate) fn open() -> Self {
        Self::closed([])
    }

    /// The team file's text: relays disabled unless [`Self::relay`] says otherwise, the
    /// secret in `team.secret` beside it (or in the environment).
    pub(crate) fn to_toml(&self) -> String {
        let mut text = String::from("[mesh]\n");
        match &self.secret_env {
            Some(var) => text.push_str(&format!("secret_env = {}\n", toml_string(var))),
            None => text.push_str(&format!("secret_file = {}\n", toml_string(SECRET_FILE))),
        }
        let relay = self.relay.as_deref().unwrap_or("disabled");
        text.push_str(&format!("relay = {}\n", toml_string(relay)));
        if let Some(secs) = self.expiry_secs {
            text.push_str(&format!("expiry_secs = {secs}\n"));
        }
        for member in &self.members {
            text.push_str(&format!(
                "\n[[member]]\nname = {}\nid = {}\npush = {}\npull = {}\n",
                toml_string(&member.name),
                toml_string(&member.id),
                member.push,
                member.pull
            ));
            if let Some(addr) = member.addr {
                text.push_str(&format!("addrs = [{}]\n", toml_string(&addr.to_string())));
            }
        }
        text
    }
}

/// `text` as a quoted TOML string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// One `[[member]]` of a [`TeamSpec`].
#[derive(Debug, Clone)]
pub(crate) struct MemberSpec {
    /// `name`.
    pub(crate) name: String,
    /// `id`, as `n2p id` prints it.
    pub(crate) id: String,
    /// `push`.
    pub(crate) push: bool,
    /// `pull`.
    pub(crate) pull: bool,
    /// The one entry of `addrs`, if any.
    pub(crate) addr: Option<SocketAddr>,
}

/// One mesh node's identity and surroundings: a home with its key, a fixed loopback port
/// (kept across restarts, and listed in closed team files), and a nix-daemon of its own when
/// made with [`Self::with_daemon`]. Runs `n2p mesh join` through [`Self::join`].
pub(crate) struct MeshPeer {
    /// The node's name: its team file entry and `--name`.
    pub(crate) name: String,
    /// Its endpoint id, as `n2p id` prints it.
    pub(crate) id: String,
    /// Its `--bind` address.
    pub(crate) bind: SocketAddr,
    /// Its binary cache's `--cache` address (a free loopback TCP port: nodes on one
    /// machine cannot share the default).
    pub(crate) cache: SocketAddr,
    /// Its home (`N2P_HOME`).
    pub(crate) home: TempHome,
    daemon: Option<NixDaemon>,
}

impl MeshPeer {
    /// A node without a nix-daemon (its `--daemon-socket` leads nowhere), homed in the
    /// system's temp dir.
    pub(crate) fn new(name: &str) -> Self {
        Self::build(name, TempHome::new(N2P), None)
    }

    /// Like [`Self::new`], with the home inside `parent`.
    pub(crate) fn new_in(parent: &Path, name: &str) -> Self {
        Self::build(name, TempHome::new_in(N2P, parent), None)
    }

    /// A node sharing a nix-daemon of its own (needs Nix: see `require_nix`).
    pub(crate) fn with_daemon(name: &str) -> Self {
        Self::build(name, TempHome::new(N2P), Some(NixDaemon::start()))
    }

    fn build(name: &str, home: TempHome, daemon: Option<NixDaemon>) -> Self {
        // `n2p id` creates the key, before any `mesh join` could race to do the same.
        let id = home.id();
        Self {
            name: name.to_owned(),
            id,
            bind: free_loopback_addr(),
            cache: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            home,
            daemon,
        }
    }

    /// This node as a pushing member with its fixed address.
    pub(crate) fn member(&self) -> MemberSpec {
        MemberSpec {
            name: self.name.clone(),
            id: self.id.clone(),
            push: true,
            pull: true,
            addr: Some(self.bind),
        }
    }

    /// The short form of the id that n2p logs and uses in name suffixes (iroh's
    /// `fmt_short`: the first 10 hex digits).
    pub(crate) fn short_id(&self) -> &str {
        &self.id[..10]
    }

    /// The node's nix-daemon; panics if it has none.
    pub(crate) fn daemon(&self) -> &NixDaemon {
        self.daemon
            .as_ref()
            .unwrap_or_else(|| panic!("{} was made without a nix-daemon", self.name))
    }

    /// The `--daemon-socket` to give: the daemon's, or a path where nothing listens.
    pub(crate) fn daemon_socket(&self) -> PathBuf {
        match &self.daemon {
            Some(daemon) => daemon.socket_path().to_owned(),
            None => self.home.path().join("no-daemon.sock"),
        }
    }

    /// `<home>/peers`.
    pub(crate) fn peers_dir(&self) -> PathBuf {
        self.home.home().peers_dir()
    }

    /// `<home>/peers/<name>.sock`.
    pub(crate) fn socket(&self, name: &str) -> PathBuf {
        self.peers_dir().join(format!("{name}.sock"))
    }

    /// The store URL of [`Self::socket`], for nix.
    pub(crate) fn socket_url(&self, name: &str) -> String {
        socket_store_url(&self.socket(name))
    }

    /// `n2p mesh join` for this node in `team`, relays disabled, on its fixed port, with its
    /// daemon socket; no `--name`. Tests add arguments or environment and [`Self::spawn`] it.
    pub(crate) fn join_command(&self, team: &Path) -> Command {
        let bind = self.bind.to_string();
        let cache = self.cache.to_string();
        let mut command = self.home.command();
        command
            .args(["mesh", "join", TOPIC, "--team"])
            .arg(team)
            .args(["--relay", "disabled", "--bind", &bind, "--cache", &cache])
            .arg("--daemon-socket")
            .arg(self.daemon_socket());
        command
    }

    /// Starts `command` (from [`Self::join_command`]) as this node; does not wait.
    pub(crate) fn spawn(&self, mut command: Command) -> MeshProcess<'_> {
        MeshProcess {
            process: Process::spawn(self.name.clone(), &mut command),
            _peer: self,
        }
    }

    /// Starts `n2p mesh join` with `--name <name>` and `extra` arguments; does not wait.
    pub(crate) fn join(&self, team: &Path, extra: &[&str]) -> MeshProcess<'_> {
        let mut command = self.join_command(team);
        command.args(["--name", &self.name]).args(extra);
        self.spawn(command)
    }

    /// The names in the peers directory now.
    pub(crate) fn peer_entries(&self) -> BTreeSet<String> {
        dir_names(&self.peers_dir())
    }

    /// Ok if the peers directory holds exactly one socket per name in `names` and nothing
    /// else; otherwise Err with what it holds.
    pub(crate) fn check_sockets(&self, names: &[&str]) -> Result<(), String> {
        let expected: BTreeSet<String> = names.iter().map(|name| format!("{name}.sock")).collect();
        let found = self.peer_entries();
        if found != expected {
            return Err(format!(
                "{}'s peers dir holds {found:?}, not {expected:?}",
                self.name
            ));
        }
        for name in names {
            let path = self.socket(name);
            let is_socket = fs::symlink_metadata(&path)
                .map(|meta| meta.file_type().is_socket())
                .unwrap_or(false);
            if !is_socket {
                return Err(format!("{} is not a socket", path.display()));
            }
        }
        Ok(())
    }

    /// Waits (bounded) until [`Self::check_sockets`] holds; returns how long that took.
    pub(crate) fn wait_for_sockets(&self, names: &[&str], timeout: Duration) -> Duration {
        wait_until(
            &format!("{} has exactly the sockets {names:?}", self.name),
            timeout,
            || self.check_sockets(names),
        )
    }

    /// `n2p status --json`, from the running node.
    pub(crate) fn status_json(&self) -> serde_json::Value {
        let stdout = expect_success(
            &self.home.run(&["status", "--json"]),
            &format!("n2p status --json for {}", self.name),
        );
        serde_json::from_str(&stdout).unwrap_or_else(|error| {
            panic!("n2p status --json printed invalid JSON ({error}): {stdout}")
        })
    }

    /// `n2p mesh peers --json`, from the running node: one object per live peer.
    pub(crate) fn peers_json(&self) -> Vec<serde_json::Value> {
        let stdout = expect_success(
            &self.home.run(&["mesh", "peers", "--json"]),
            &format!("n2p mesh peers --json for {}", self.name),
        );
        let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|error| {
            panic!("n2p mesh peers --json printed invalid JSON ({error}): {stdout}")
        });
        match json {
            serde_json::Value::Array(peers) => peers,
            other => panic!("n2p mesh peers --json should print a list, printed {other}"),
        }
    }

    /// `n2p mesh invite <topic>`: a ticket to bootstrap from this running node.
    pub(crate) fn invite(&self) -> String {
        let stdout = expect_success(
            &self.home.run(&["mesh", "invite", TOPIC]),
            &format!("n2p mesh invite for {}", self.name),
        );
        let ticket = stdout.trim().to_owned();
        assert!(
            !ticket.is_empty() && !ticket.contains(char::is_whitespace),
            "n2p mesh invite should print one ticket, printed {stdout:?}"
        );
        ticket
    }
}

/// The entry for `id` in `n2p mesh peers --json` output, if listed.
pub(crate) fn peer_by_id<'a>(
    peers: &'a [serde_json::Value],
    id: &str,
) -> Option<&'a serde_json::Value> {
    peers.iter().find(|peer| peer["id"] == id)
}

/// A running `n2p mesh join`; killed on drop. Borrows its [`MeshPeer`], which must outlive
/// it (the home and the daemon go with the peer).
pub(crate) struct MeshProcess<'peer> {
    /// The process.
    pub(crate) process: Process,
    _peer: &'peer MeshPeer,
}

impl MeshProcess<'_> {
    /// Waits until the node has joined and serves its control socket (its "peer sockets
    /// appear in" line comes after both).
    pub(crate) fn wait_until_joined(&self) {
        self.process
            .wait_for_line("peer sockets appear in", STARTUP_TIMEOUT);
    }
}

/// Waits, up to five idle periods, until `connections` counts none open at `a` and none at
/// `b` (the two ends of one connection), then asserts that the close came no sooner than the
/// idle period after `since`, the last use: a dialer looks every tenth of the period, so
/// the last look that saw the use may be that much before its end (and the test's own
/// look lags as much again).
pub(crate) fn wait_for_idle_close(
    what: &str,
    [a, b]: [&MeshPeer; 2],
    connections: impl Fn(&MeshPeer) -> Option<u64>,
    idle: Duration,
    since: Instant,
) {
    wait_until(
        &format!("{what} closes after the idle period"),
        idle * 5,
        || match (connections(a), connections(b)) {
            (Some(0), Some(0)) => Ok(()),
            counts => Err(format!(
                "{what}: open at ({}, {}): {counts:?}",
                a.name, b.name
            )),
        },
    );
    let closed_after = since.elapsed();
    assert!(
        closed_after >= idle - idle / 5,
        "{what} closed {closed_after:?} after its last use, before the idle period of {idle:?}"
    );
}
