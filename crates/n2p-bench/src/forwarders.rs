//! The ways to reach a nix-daemon that the benchmark compares, each set up once and kept
//! running across rounds: the daemon socket itself, `n2p client` -> `n2p server`, a mesh
//! peer socket, dumbpipe and socat; on the emulated link also `ssh-ng://` to OpenSSH.
//!
//! Every forwarder points at a fixed daemon socket path (its "slot"); each round starts a
//! fresh nix-daemon on that path, so the forwarders stay warm while the store is new.
//!
//! ```ignore
//! let mut fwd = Forwarder::start(Variant::N2p, &dir, &tools, &Net::loopback())?;
//! let daemon = NixDaemon::try_start_at(fwd.slot(), &store_dir)?;
//! let inv = fwd.invocation()?;          // dumbpipe starts its connector here
//! run nix with inv.url, measure CPU of inv.pids
//! ```

use std::{
    fmt, fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use n2p_testkit::{
    n2p::{last_word, plain_logs},
    net::free_tcp_port,
    netns::command_in,
    nix::{NIX_CONFIG, socket_store_url},
    proc::{Process, find_on_path},
    wait::{MEASURING_POLL_INTERVAL, time_until},
};
use serde::Serialize;

use crate::{mesh::Team, quic_stats, sshd::Sshd};

/// How long a forwarder may take to become ready (dumbpipe waits about 5 s for a relay).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One way of reaching the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Variant {
    /// (a) the daemon socket itself.
    Direct,
    /// (b) `n2p client` -> `n2p server` on loopback, relays disabled.
    N2p,
    /// (b) again with another n2p binary (`--n2p-alt`), for A/B comparisons of a change.
    #[value(name = "n2p-alt")]
    #[serde(rename = "n2p-alt")]
    N2pAlt,
    /// (c) a peer socket of `n2p mesh join` (two nodes, closed team, relays disabled).
    Mesh,
    /// (d) dumbpipe `connect-unix` -> `listen-unix`, one connector per nix invocation.
    Dumbpipe,
    /// (e) socat unix -> TCP (TCP_NODELAY) -> unix, forking per connection.
    Socat,
    /// `ssh-ng://` to OpenSSH in the server namespace, the remote `nix-daemon --stdio`
    /// opening the round's chroot store (emulated link only).
    #[value(name = "ssh-ng")]
    #[serde(rename = "ssh-ng")]
    SshNg,
}

impl Variant {
    /// All variants, in report order.
    pub(crate) const ALL: [Variant; 7] = [
        Variant::Direct,
        Variant::N2p,
        Variant::N2pAlt,
        Variant::Mesh,
        Variant::Dumbpipe,
        Variant::Socat,
        Variant::SshNg,
    ];

    /// Short name (JSON keys, directory names).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::N2p => "n2p",
            Variant::N2pAlt => "n2p-alt",
            Variant::Mesh => "mesh",
            Variant::Dumbpipe => "dumbpipe",
            Variant::Socat => "socat",
            Variant::SshNg => "ssh-ng",
        }
    }

    /// Whether the variant runs n2p processes (whose RSS the targets bound).
    pub(crate) fn is_n2p(self) -> bool {
        matches!(self, Variant::N2p | Variant::N2pAlt | Variant::Mesh)
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The programs the forwarders run.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    /// The n2p binary under test.
    pub(crate) n2p: PathBuf,
    /// Another n2p binary for the `n2p-alt` variant.
    pub(crate) n2p_alt: Option<PathBuf>,
    /// `N2P_CONGESTION` of the `n2p` and `n2p-alt` variants (None: n2p's default).
    pub(crate) congestion: [Option<String>; 2],
    /// dumbpipe, when available.
    pub(crate) dumbpipe: Option<PathBuf>,
    /// socat, when installed.
    pub(crate) socat: Option<PathBuf>,
}

/// Where the two ends of a forwarder run: loopback by default, or two network namespaces.
#[derive(Debug, Clone)]
pub(crate) struct Net {
    /// Namespace of the end that nix talks to (None: this one).
    pub(crate) client_ns: Option<String>,
    /// Namespace of the end next to the daemon.
    pub(crate) server_ns: Option<String>,
    /// The client end's IP address.
    pub(crate) client_ip: IpAddr,
    /// The server end's IP address.
    pub(crate) server_ip: IpAddr,
    /// Whether n2p logs its connection stats ([`crate::quic_stats`]).
    pub(crate) quic_stats: bool,
    /// TCP congestion control set on socat's sockets (None: the namespace's default).
    pub(crate) socat_cc: Option<String>,
}

impl Net {
    /// Both ends on 127.0.0.1 in this namespace.
    pub(crate) fn loopback() -> Self {
        Self {
            client_ns: None,
            server_ns: None,
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            server_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            quic_stats: false,
            socat_cc: None,
        }
    }

    fn is_loopback(&self) -> bool {
        self.client_ns.is_none() && self.server_ns.is_none()
    }
}

/// An n2p command for the home `home`: `N2P_HOME` set, default log level, no colours.
pub(crate) fn n2p_command(ns: Option<&str>, n2p: &Path, home: &Path) -> Command {
    let mut command = command_in(ns, n2p);
    plain_logs(&mut command).env("N2P_HOME", home);
    command
}

/// One forwarder, set up and warm.
pub(crate) struct Forwarder {
    variant: Variant,
    dir: PathBuf,
    slot: PathBuf,
    front: PathBuf,
    services: Vec<Process>,
    /// dumbpipe's binary, ticket and where its connector runs.
    dumbpipe: Option<(PathBuf, String)>,
    net: Net,
    invocations: usize,
    n2p_address: Option<String>,
    /// Kept for the mesh variant: its homes and team file live there.
    _team: Option<Team>,
    /// The n2p client's log with its connection stats, when logged.
    quic_log: Option<PathBuf>,
    /// ssh-ng's server and the wrapper that runs the remote nix-daemon.
    sshd: Option<(Sshd, PathBuf)>,
    /// The chroot store of the current round (ssh-ng opens it itself).
    round_store: Option<PathBuf>,
}

/// What one nix invocation uses: its store URL and the forwarding processes to account.
pub(crate) struct Invocation {
    /// The `unix://` URL nix uses.
    pub(crate) url: String,
    /// The socket behind the URL.
    pub(crate) socket: PathBuf,
    /// The forwarding processes (for CPU and memory).
    pub(crate) pids: Vec<u32>,
    /// Environment nix needs (ssh-ng: `NIX_SSHOPTS`).
    pub(crate) env: Vec<(String, String)>,
    /// The namespace nix runs in (ssh-ng: the client's; None: this one).
    pub(crate) ns: Option<String>,
    /// The n2p client's log with its connection stats, when logged.
    pub(crate) quic_log: Option<PathBuf>,
    /// dumbpipe's connector for this invocation; killed on drop.
    _connector: Option<Process>,
}

impl Forwarder {
    /// Sets up `variant` with its files in `dir` (created).
    pub(crate) fn start(variant: Variant, dir: &Path, tools: &Tools, net: &Net) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let slot = dir.join("daemon.sock");
        let mut fwd = Self {
            variant,
            dir: dir.to_owned(),
            slot: slot.clone(),
            front: slot,
            services: Vec::new(),
            dumbpipe: None,
            net: net.clone(),
            invocations: 0,
            n2p_address: None,
            _team: None,
            quic_log: None,
            sshd: None,
            round_store: None,
        };
        match variant {
            Variant::Direct => {}
            Variant::N2p => fwd.start_n2p(&tools.n2p, tools.congestion[0].as_deref())?,
            Variant::N2pAlt => {
                let alt = tools.n2p_alt.clone().context("no --n2p-alt binary given")?;
                fwd.start_n2p(&alt, tools.congestion[1].as_deref())?;
            }
            Variant::Mesh => fwd.start_mesh(&tools.n2p)?,
            Variant::Dumbpipe => {
                let bin = tools
                    .dumbpipe
                    .clone()
                    .context("dumbpipe is not available")?;
                fwd.start_dumbpipe(&bin)?;
            }
            Variant::Socat => {
                let bin = tools.socat.clone().context("socat is not installed")?;
                fwd.start_socat(&bin)?;
            }
            Variant::SshNg => fwd.start_sshd()?,
        }
        Ok(fwd)
    }

    /// The variant.
    pub(crate) fn variant(&self) -> Variant {
        self.variant
    }

    /// Where this forwarder expects the daemon's socket.
    pub(crate) fn slot(&self) -> &Path {
        &self.slot
    }

    /// The long-running forwarding processes (not per-invocation ones).
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.services.iter().map(Process::pid).collect();
        pids.extend(self.sshd.as_ref().map(|(s, _)| s.pid()));
        pids
    }

    /// A round starts with a fresh daemon whose files are in `dir` (ssh-ng opens its store).
    pub(crate) fn round_started(&mut self, dir: &Path) {
        self.round_store = Some(dir.join("store"));
    }

    /// Names of the forwarding processes, in the order of [`Invocation::pids`].
    pub(crate) fn process_labels(&self) -> Vec<String> {
        let labels: &[&str] = match self.variant {
            Variant::Direct => &[],
            Variant::N2p | Variant::N2pAlt => &["server", "client"],
            Variant::Mesh => &["pushing node", "sharing node"],
            Variant::Dumbpipe => &["listener", "connector"],
            Variant::Socat => &["tcp side", "unix side"],
            Variant::SshNg => &["sshd"],
        };
        labels.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The long address of the n2p server (n2p variant only).
    pub(crate) fn n2p_address(&self) -> Option<&str> {
        self.n2p_address.as_deref()
    }

    /// Gets ready for one nix invocation (dumbpipe: starts a connector and waits for its
    /// socket, outside any timing).
    pub(crate) fn invocation(&mut self) -> Result<Invocation> {
        self.invocations += 1;
        let mut pids = self.pids();
        if let Some((sshd, wrapper)) = &self.sshd {
            let store = self
                .round_store
                .as_ref()
                .context("ssh-ng: no round store yet")?;
            return Ok(Invocation {
                url: format!(
                    "{}&remote-program={}",
                    sshd.store_url(&format!("local?root={}", store.display())),
                    wrapper.display()
                ),
                socket: self.slot.clone(),
                pids,
                env: vec![("NIX_SSHOPTS".to_owned(), sshd.nix_sshopts())],
                ns: self.net.client_ns.clone(),
                quic_log: None,
                _connector: None,
            });
        }
        let Some((bin, ticket)) = &self.dumbpipe else {
            return Ok(Invocation {
                url: socket_store_url(&self.front),
                socket: self.front.clone(),
                pids,
                env: Vec::new(),
                ns: None,
                quic_log: self.quic_log.clone(),
                _connector: None,
            });
        };
        let socket = self.dir.join(format!("c{}.sock", self.invocations));
        let bind = SocketAddr::new(self.net.client_ip, 0);
        let mut command = command_in(self.net.client_ns.as_deref(), bin);
        command
            .args(["connect-unix", "--socket-path"])
            .arg(&socket)
            .args(["--ipv4-addr", &bind.to_string(), ticket]);
        let log = self.dir.join("connector.log");
        let mut connector = Process::try_spawn_logged("dumbpipe connect-unix", &mut command, &log)?;
        connector.try_wait_for_path(&socket, READY_TIMEOUT)?;
        pids.push(connector.pid());
        Ok(Invocation {
            url: socket_store_url(&socket),
            socket,
            pids,
            env: Vec::new(),
            ns: None,
            quic_log: None,
            _connector: Some(connector),
        })
    }

    fn start_n2p(&mut self, n2p: &Path, congestion: Option<&str>) -> Result<()> {
        let (server, address) =
            start_n2p_server(n2p, &self.dir, &self.slot, &self.net, congestion)?;
        self.services.push(server);
        let front = self.dir.join("client.sock");
        let log = self.dir.join("client.log");
        let client = start_n2p_client(
            n2p,
            &self.dir.join("client-home"),
            &address,
            &front,
            &self.net,
            &log,
            &[],
            congestion,
        )?;
        self.services.push(client);
        self.quic_log = self.net.quic_stats.then_some(log);
        self.front = front;
        self.n2p_address = Some(address);
        Ok(())
    }

    fn start_mesh(&mut self, n2p: &Path) -> Result<()> {
        // `a` pushes from nix's side of the link, `b` shares the daemon on the far side.
        let mut team = Team::create_placed(
            n2p,
            &self.dir.join("team"),
            &[
                ("a", self.net.client_ip, self.net.client_ns.clone()),
                ("b", self.net.server_ip, self.net.server_ns.clone()),
            ],
        )?;
        if self.net.quic_stats {
            team.set_rust_log(&quic_stats::rust_log());
            // The pushing node's dialled connection is the sender's side.
            self.quic_log = Some(team.log_path(0));
        }
        let pusher = team.spawn(0, None)?;
        let sharer = team.spawn(1, Some(&self.slot))?;
        self.services.push(pusher);
        self.services.push(sharer);
        let front = team.peer_socket(0, 1);
        if time_until(READY_TIMEOUT, MEASURING_POLL_INTERVAL, || front.exists()).is_none() {
            bail!(
                "the mesh peer socket {} did not appear; node logs:\n{}\n{}",
                front.display(),
                self.services[0].log_text(),
                self.services[1].log_text()
            );
        }
        self.front = front;
        self._team = Some(team);
        Ok(())
    }

    fn start_dumbpipe(&mut self, bin: &Path) -> Result<()> {
        let bind = SocketAddr::new(self.net.server_ip, 0);
        let mut command = command_in(self.net.server_ns.as_deref(), bin);
        command
            .args(["listen-unix", "--socket-path"])
            .arg(&self.slot)
            .args(["--ipv4-addr", &bind.to_string()]);
        let listener = Process::try_spawn_logged(
            "dumbpipe listen-unix",
            &mut command,
            &self.dir.join("listener.log"),
        )?;
        let ticket =
            last_word(&listener.try_wait_for_line("dumbpipe connect-unix", READY_TIMEOUT)?);
        self.services.push(listener);
        self.dumbpipe = Some((bin.to_owned(), ticket));
        Ok(())
    }

    fn start_socat(&mut self, bin: &Path) -> Result<()> {
        let port = free_tcp_port();
        // TCP_CONGESTION (IPPROTO_TCP 6, option 13) on both TCP sockets.
        let cc = self
            .net
            .socat_cc
            .as_ref()
            .map(|cc| format!(",setsockopt-string=6:13:{cc}"))
            .unwrap_or_default();
        let mut command = command_in(self.net.server_ns.as_deref(), bin);
        command
            .arg(format!(
                "TCP-LISTEN:{port},bind={},reuseaddr,fork,nodelay{cc}",
                self.net.server_ip
            ))
            .arg(format!("UNIX-CONNECT:{}", self.slot.display()));
        let tcp_side =
            Process::try_spawn_logged("socat (tcp side)", &mut command, &self.dir.join("tcp.log"))?;
        self.services.push(tcp_side);
        let front = self.dir.join("front.sock");
        let mut command = command_in(self.net.client_ns.as_deref(), bin);
        command
            .arg(format!("UNIX-LISTEN:{},fork,unlink-early", front.display()))
            .arg(format!("TCP:{}:{port},nodelay{cc}", self.net.server_ip));
        let mut unix_side = Process::try_spawn_logged(
            "socat (unix side)",
            &mut command,
            &self.dir.join("unix.log"),
        )?;
        unix_side.try_wait_for_path(&front, READY_TIMEOUT)?;
        self.services.push(unix_side);
        self.front = front;
        Ok(())
    }
}

impl Forwarder {
    /// sshd in the server namespace and the wrapper it runs as the remote nix-daemon
    /// (`nix-daemon` with the settings of the benchmark's own daemons, which a fresh ssh
    /// session would not have).
    fn start_sshd(&mut self) -> Result<()> {
        if self.net.is_loopback() {
            bail!("the ssh-ng variant runs on the emulated link only");
        }
        let sshd = Sshd::start_at(
            &self.dir.join("sshd"),
            self.net.server_ns.as_deref(),
            self.net.server_ip,
        )?;
        let wrapper = self.dir.join("remote-nix-daemon");
        let daemon = find_on_path("nix-daemon").context("nix-daemon not found")?;
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexport NIX_CONFIG='{NIX_CONFIG}'\nexec {} \"$@\"\n",
                daemon.display()
            ),
        )?;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
        self.sshd = Some((sshd, wrapper));
        Ok(())
    }
}

/// Starts `n2p server --daemon-socket <daemon_socket>` (relays disabled, bound at the server
/// end of `net`) with its home and log in `dir`, with `N2P_CONGESTION=congestion` when
/// given; returns it and the long address it logged.
pub(crate) fn start_n2p_server(
    n2p: &Path,
    dir: &Path,
    daemon_socket: &Path,
    net: &Net,
    congestion: Option<&str>,
) -> Result<(Process, String)> {
    // Port 0: the kernel picks a port free where the server runs (the far namespace, on the
    // emulated link); a port found free on the host's loopback may be taken there (seen:
    // the n2p-alt server could not bind). The long address carries the port it got.
    let bind = SocketAddr::new(net.server_ip, 0);
    let mut command = n2p_command(net.server_ns.as_deref(), n2p, &dir.join("server-home"));
    if net.quic_stats {
        command.env("RUST_LOG", quic_stats::rust_log());
    }
    if let Some(cc) = congestion {
        command.env("N2P_CONGESTION", cc);
    }
    command
        .args(["--relay", "disabled", "--bind", &bind.to_string()])
        .args(["server", "--daemon-socket"])
        .arg(daemon_socket);
    let server = Process::try_spawn_logged("n2p server", &mut command, &dir.join("server.log"))?;
    let address = last_word(&server.try_wait_for_line("long address:", READY_TIMEOUT)?);
    Ok((server, address))
}

/// Starts `n2p client <address> --socket <socket> <extra>` (relays disabled, bound next to
/// the client end of `net`), with `N2P_CONGESTION=congestion` when given, and waits for its
/// socket.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_n2p_client(
    n2p: &Path,
    home: &Path,
    address: &str,
    socket: &Path,
    net: &Net,
    log: &Path,
    extra: &[&str],
    congestion: Option<&str>,
) -> Result<Process> {
    // Port 0, as for the server: free where the client runs.
    let bind = SocketAddr::new(net.client_ip, 0);
    let mut command = n2p_command(net.client_ns.as_deref(), n2p, home);
    if net.quic_stats {
        command.env("RUST_LOG", quic_stats::rust_log());
    }
    if let Some(cc) = congestion {
        command.env("N2P_CONGESTION", cc);
    }
    command
        .args(["client", address, "--socket"])
        .arg(socket)
        .args(["--relay", "disabled", "--bind", &bind.to_string()])
        .args(extra);
    let mut client = Process::try_spawn_logged("n2p client", &mut command, log)?;
    client.try_wait_for_path(socket, READY_TIMEOUT)?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_word_of_a_log_line() {
        assert_eq!(last_word("2025 INFO n2p: long address: abc"), "abc");
        assert_eq!(last_word(""), "");
    }
}
