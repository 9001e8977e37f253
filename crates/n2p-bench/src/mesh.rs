//! Mesh teams on loopback: a closed team file with fixed addresses and relays disabled, one
//! home per node, and the mesh measurements (how long N nodes take to see each other's
//! sockets, how long a SIGKILLed node's socket survives on the others).
//!
//! ```ignore
//! let team = Team::create(&n2p, &dir, &["a", "b"])?;
//! let a = team.spawn(0, None)?;                   // does not share
//! let b = team.spawn(1, Some(&daemon_socket))?;   // shares its daemon
//! // a's socket for b: team.peer_socket(0, 1)
//! ```

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use n2p_testkit::{
    net::free_udp_port,
    proc::{Process, Signal, signal, tail},
    wait::time_until,
};
use serde::Serialize;

use crate::{
    forwarders::n2p_command,
    procfs::{cpu_seconds, output_of, status_bytes},
    stats::Summary,
};

/// The gossip topic the benchmark's nodes join.
const TOPIC: &str = "bench";

/// How often the mesh measurements look at the peers directories (N of them).
const MESH_POLL: Duration = Duration::from_millis(10);

/// Longest the mesh may take to converge or to drop a killed node, at any size; larger
/// meshes get [`MESH_TIMEOUT_PER_NODE`] more per node (100 processes starting on two cores
/// take a while before they even announce).
const MESH_TIMEOUT: Duration = Duration::from_secs(60);

/// Added to [`MESH_TIMEOUT`] per node.
const MESH_TIMEOUT_PER_NODE: Duration = Duration::from_millis(500);

/// How long the converged mesh is left alone while each node's CPU time is counted.
pub(crate) const IDLE_CPU_WINDOW: Duration = Duration::from_secs(10);

struct Node {
    name: String,
    home: PathBuf,
    ip: IpAddr,
    port: u16,
    /// The network namespace it runs in (None: this one).
    ns: Option<String>,
}

/// A closed team of n2p nodes with fixed addresses: on loopback, or across the emulated link.
pub(crate) struct Team {
    n2p: PathBuf,
    dir: PathBuf,
    file: PathBuf,
    nodes: Vec<Node>,
    /// `RUST_LOG` of the nodes (None: n2p's default).
    rust_log: Option<String>,
}

impl Team {
    /// Creates a home and identity per name and the team file, in `dir`; every node on
    /// 127.0.0.1.
    pub(crate) fn create(n2p: &Path, dir: &Path, names: &[&str]) -> Result<Self> {
        let placed: Vec<_> = names
            .iter()
            .map(|name| (*name, IpAddr::V4(Ipv4Addr::LOCALHOST), None))
            .collect();
        Self::create_placed(n2p, dir, &placed)
    }

    /// Like [`Team::create`], each node at its own address, in its own namespace (None:
    /// this one).
    pub(crate) fn create_placed(
        n2p: &Path,
        dir: &Path,
        nodes: &[(&str, IpAddr, Option<String>)],
    ) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let secret = dir.join("team.secret");
        let mut random = [0u8; 16];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .context("reading /dev/urandom")?;
        let hex: String = random.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        fs::write(&secret, format!("bench-team-secret-{hex}\n"))?;
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))?;

        let mut text =
            String::from("[mesh]\nsecret_file = \"team.secret\"\nrelay = \"disabled\"\n");
        let placed = nodes;
        let mut nodes = Vec::new();
        let mut ports = LoopbackPorts::starting_at(20_000 + u16::from(random[0]) * 40);
        for (name, ip, ns) in placed {
            let home = dir.join(format!("home-{name}"));
            let id = output_of(n2p_command(None, n2p, &home).arg("id"))
                .with_context(|| format!("`n2p id` failed for {}", home.display()))?;
            let port = if ip.is_loopback() {
                ports.next_free()
            } else {
                free_udp_port()
            };
            let _ = write!(
                text,
                "\n[[member]]\nname = \"{name}\"\nid = \"{id}\"\naddrs = [\"{}\"]\n",
                SocketAddr::new(*ip, port)
            );
            nodes.push(Node {
                name: (*name).to_owned(),
                home,
                ip: *ip,
                port,
                ns: ns.clone(),
            });
        }
        let file = dir.join("team.toml");
        fs::write(&file, text)?;
        Ok(Self {
            n2p: n2p.to_owned(),
            dir: dir.to_owned(),
            file,
            nodes,
            rust_log: None,
        })
    }

    /// Sets the team's `expiry_secs` (before any node starts).
    pub(crate) fn set_expiry_secs(&self, secs: u64) -> Result<()> {
        let text = fs::read_to_string(&self.file)?;
        let text = text.replacen("[mesh]\n", &format!("[mesh]\nexpiry_secs = {secs}\n"), 1);
        fs::write(&self.file, text)?;
        Ok(())
    }

    /// Nodes spawned from now on log with `RUST_LOG=filter`.
    pub(crate) fn set_rust_log(&mut self, filter: &str) {
        self.rust_log = Some(filter.to_owned());
    }

    /// Node `i`'s log file.
    pub(crate) fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.nodes[i].name))
    }

    /// How many nodes.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Starts node `i`, sharing the daemon at `share` or not sharing.
    pub(crate) fn spawn(&self, i: usize, share: Option<&Path>) -> Result<Process> {
        let node = &self.nodes[i];
        let mut command = n2p_command(node.ns.as_deref(), &self.n2p, &node.home);
        command
            .args([
                "--relay",
                "disabled",
                "--bind",
                &SocketAddr::new(node.ip, node.port).to_string(),
            ])
            .args(["mesh", "join", TOPIC, "--team"])
            .arg(&self.file)
            // The pushes and the membership runs use no cache, and every node of a team on
            // one machine would try the same default address and warn.
            .arg("--no-cache");
        match share {
            Some(socket) => command.arg("--share").arg("--daemon-socket").arg(socket),
            None => command.arg("--no-share"),
        };
        if let Some(filter) = &self.rust_log {
            command.env("RUST_LOG", filter);
        }
        let log = self.log_path(i);
        Ok(Process::try_spawn_logged(
            format!("mesh node {}", node.name),
            &mut command,
            &log,
        )?)
    }

    /// Node `i`'s socket for node `j`.
    pub(crate) fn peer_socket(&self, i: usize, j: usize) -> PathBuf {
        self.peers_dir(i)
            .join(format!("{}.sock", self.nodes[j].name))
    }

    /// Node `i`'s open connections, as its `n2p status --json` reports them; `None` when it
    /// does not (an older binary) or cannot be asked.
    fn connections(&self, i: usize) -> Option<NodeConnections> {
        let text = output_of(
            n2p_command(None, &self.n2p, &self.nodes[i].home).args(["status", "--json"]),
        )?;
        let status: serde_json::Value = serde_json::from_str(&text).ok()?;
        serde_json::from_value(status.get("connections")?.clone()).ok()
    }

    fn peers_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].home.join("peers")
    }

    /// How many peer sockets node `i` has.
    fn socket_count(&self, i: usize) -> usize {
        fs::read_dir(self.peers_dir(i))
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".sock"))
                    .count()
            })
            .unwrap_or(0)
    }
}

/// One mesh round: N nodes converge, then one is killed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MeshRound {
    /// Nodes.
    pub(crate) n: usize,
    /// Seconds spent starting the N processes.
    pub(crate) spawn_s: f64,
    /// Seconds from the first start until every node had N-1 sockets.
    pub(crate) converge_s: f64,
    /// Seconds from the last start until then.
    pub(crate) converge_after_last_start_s: f64,
    /// Resident memory of each node 1 s after convergence, in bytes.
    pub(crate) idle_rss_bytes: Vec<u64>,
    /// The anonymous part of it (heap, stacks; the rest is the binary's mapped pages).
    pub(crate) idle_rss_anon_bytes: Vec<u64>,
    /// CPU each node used while idle ([`IDLE_CPU_WINDOW`] after the RSS sample), in percent
    /// of one core.
    pub(crate) idle_cpu_percent: Vec<f64>,
    /// Resident memory of each node at the end of that window, in bytes.
    pub(crate) idle_rss_late_bytes: Vec<u64>,
    /// Open iroh connections of each node at the end of that window, as its `n2p status
    /// --json` counts them (empty for binaries that do not report them).
    pub(crate) connections: Vec<NodeConnections>,
    /// Seconds from SIGKILL of one node until the first other node dropped its socket.
    pub(crate) killed_first_gone_s: f64,
    /// Seconds until its socket was gone on every other node.
    pub(crate) killed_all_gone_s: f64,
}

/// One node's open iroh connections by protocol (`connections` in `n2p status --json`).
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub(crate) struct NodeConnections {
    /// Gossip connections.
    pub(crate) gossip: usize,
    /// Daemon connections.
    pub(crate) daemon: usize,
    /// Any other protocol.
    pub(crate) other: usize,
}

impl NodeConnections {
    fn total(&self) -> f64 {
        (self.gossip + self.daemon + self.other) as f64
    }
}

/// Summary of several rounds with the same N.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MeshResult {
    /// Nodes.
    pub(crate) n: usize,
    /// Convergence time from the first start.
    pub(crate) converge_s: Option<Summary>,
    /// Convergence time from the last start.
    pub(crate) converge_after_last_start_s: Option<Summary>,
    /// Time until a killed node's socket is gone everywhere.
    pub(crate) killed_all_gone_s: Option<Summary>,
    /// Idle resident memory per node, bytes (over all nodes and rounds).
    pub(crate) idle_rss_bytes: Option<Summary>,
    /// Its anonymous part.
    pub(crate) idle_rss_anon_bytes: Option<Summary>,
    /// Idle CPU per node, percent of one core.
    pub(crate) idle_cpu_percent: Option<Summary>,
    /// Resident memory per node at the end of the idle window, bytes.
    pub(crate) idle_rss_late_bytes: Option<Summary>,
    /// Open iroh connections per node (all protocols).
    pub(crate) connections: Option<Summary>,
    /// Of them, gossip connections.
    pub(crate) gossip_connections: Option<Summary>,
    /// The rounds.
    pub(crate) rounds: Vec<MeshRound>,
}

impl MeshResult {
    pub(crate) fn of(n: usize, rounds: Vec<MeshRound>) -> Self {
        let pick =
            |f: fn(&MeshRound) -> f64| Summary::of(&rounds.iter().map(f).collect::<Vec<_>>());
        let rss: Vec<f64> = rounds
            .iter()
            .flat_map(|r| r.idle_rss_bytes.iter().map(|b| *b as f64))
            .collect();
        let anon: Vec<f64> = rounds
            .iter()
            .flat_map(|r| r.idle_rss_anon_bytes.iter().map(|b| *b as f64))
            .collect();
        let all = |f: &dyn Fn(&MeshRound) -> Vec<f64>| {
            Summary::of(&rounds.iter().flat_map(f).collect::<Vec<_>>())
        };
        Self {
            n,
            idle_cpu_percent: all(&|r| r.idle_cpu_percent.clone()),
            idle_rss_late_bytes: all(&|r| {
                r.idle_rss_late_bytes.iter().map(|b| *b as f64).collect()
            }),
            connections: all(&|r| r.connections.iter().map(NodeConnections::total).collect()),
            gossip_connections: all(&|r| r.connections.iter().map(|c| c.gossip as f64).collect()),
            converge_s: pick(|r| r.converge_s),
            converge_after_last_start_s: pick(|r| r.converge_after_last_start_s),
            killed_all_gone_s: pick(|r| r.killed_all_gone_s),
            idle_rss_bytes: Summary::of(&rss),
            idle_rss_anon_bytes: Summary::of(&anon),
            rounds,
        }
    }
}

/// Runs one round with `n` sharing nodes (all pointing at one dummy daemon socket; the
/// sockets appear whether or not a daemon runs there), with the team's `expiry_secs` if
/// given.
pub(crate) fn measure_round(
    n2p: &Path,
    dir: &Path,
    n: usize,
    expiry_secs: Option<u64>,
) -> Result<MeshRound> {
    let names: Vec<String> = (0..n).map(|i| format!("n{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let team = Team::create(n2p, dir, &names)?;
    if let Some(secs) = expiry_secs {
        team.set_expiry_secs(secs)?;
    }
    let dummy = dir.join("dummy-daemon.sock");
    let started = Instant::now();
    let mut nodes = Vec::new();
    for i in 0..team.len() {
        nodes.push(team.spawn(i, Some(&dummy))?);
    }
    let spawned = started.elapsed();
    // A killed node is dropped after the expiry: a longer one needs that much more time.
    let timeout = MESH_TIMEOUT
        + MESH_TIMEOUT_PER_NODE * n as u32
        + Duration::from_secs(expiry_secs.unwrap_or(0));
    let result = (|| {
        let converged = poll(timeout, || (0..n).all(|i| team.socket_count(i) == n - 1))
            .with_context(|| {
                let counts: Vec<usize> = (0..n).map(|i| team.socket_count(i)).collect();
                format!(
                    "{n} nodes did not converge within {timeout:?}; sockets per node: {counts:?}"
                )
            })?;
        let converge_s = (spawned + converged).as_secs_f64();
        thread::sleep(Duration::from_secs(1));
        let idle_rss_bytes = nodes
            .iter()
            .filter_map(|node| status_bytes(node.pid(), "VmRSS").ok())
            .collect();
        let idle_rss_anon_bytes = nodes
            .iter()
            .filter_map(|node| status_bytes(node.pid(), "RssAnon").ok())
            .collect();
        let pids: Vec<u32> = nodes.iter().map(Process::pid).collect();
        let cpu_before: Vec<f64> = pids
            .iter()
            .map(|p| cpu_seconds(*p).unwrap_or(0.0))
            .collect();
        let window = Instant::now();
        thread::sleep(IDLE_CPU_WINDOW);
        let window = window.elapsed().as_secs_f64();
        let idle_cpu_percent = pids
            .iter()
            .zip(&cpu_before)
            .filter_map(|(p, before)| Some((cpu_seconds(*p).ok()? - before) / window * 100.0))
            .collect();
        let idle_rss_late_bytes = pids
            .iter()
            .filter_map(|p| status_bytes(*p, "VmRSS").ok())
            .collect();
        let connections = (0..n).filter_map(|i| team.connections(i)).collect();

        let victim = n - 1;
        nodes[victim].kill();
        let killed = Instant::now();
        let others: Vec<usize> = (0..n).filter(|i| *i != victim).collect();
        let mut first_gone = None;
        poll(timeout, || {
            let gone = others
                .iter()
                .filter(|i| !team.peer_socket(**i, victim).exists())
                .count();
            if gone > 0 && first_gone.is_none() {
                first_gone = Some(killed.elapsed());
            }
            gone == others.len()
        })
        .context("the killed node's socket was not removed everywhere in time")?;
        let all_gone = killed.elapsed();
        Ok(MeshRound {
            n,
            spawn_s: spawned.as_secs_f64(),
            converge_s,
            converge_after_last_start_s: converged.as_secs_f64(),
            idle_rss_bytes,
            idle_rss_anon_bytes,
            idle_cpu_percent,
            idle_rss_late_bytes,
            connections,
            killed_first_gone_s: first_gone.unwrap_or(all_gone).as_secs_f64(),
            killed_all_gone_s: all_gone.as_secs_f64(),
        })
    })();
    // On a failure, the nodes that saw the fewest peers are the ones whose logs tell why,
    // and a node that is no longer running is the first thing to know (read before the stop).
    let (laggards, exited) = if result.is_err() {
        let counts: Vec<usize> = (0..nodes.len()).map(|i| team.socket_count(i)).collect();
        let least = counts.iter().copied().min().unwrap_or(0);
        let laggards: Vec<usize> = (0..nodes.len())
            .filter(|i| counts[*i] == least)
            .take(2)
            .collect();
        let exited: Vec<String> = nodes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, node)| (!node.is_running()).then(|| names[i].to_owned()))
            .collect();
        (laggards, exited)
    } else {
        (Vec::new(), Vec::new())
    };
    for node in &nodes {
        let _ = signal(node.pid(), Signal::Term);
    }
    for node in &mut nodes {
        node.stop(Duration::from_secs(5));
    }
    if result.is_err() {
        eprintln!("mesh nodes no longer running before the stop: {exited:?}");
        for i in laggards {
            eprintln!(
                "mesh log of {} (fewest peer sockets):\n{}",
                names[i],
                tail(&nodes[i].log_text(), 4000)
            );
        }
    }
    result
}

/// Polls `done` every [`MESH_POLL`]; the time since the start of polling when it held.
fn poll(timeout: Duration, done: impl FnMut() -> bool) -> Result<Duration> {
    time_until(timeout, MESH_POLL, done).with_context(|| format!("timed out after {timeout:?}"))
}

/// Distinct free UDP ports on loopback for the nodes of one team, counted up from a start
/// below Linux's ephemeral range (32768 and up by default). A port found by binding port 0
/// is an ephemeral one, which another starting node's endpoint can take for one of its own
/// sockets before the node it was meant for binds it: a 100-node round failed that way
/// ("cannot bind the iroh endpoint on 127.0.0.1:40097: ... Address already in use").
struct LoopbackPorts {
    next: u16,
}

impl LoopbackPorts {
    /// The lowest port of the range this picker walks.
    const LOW: u16 = 20_000;
    /// One past the highest.
    const HIGH: u16 = 32_000;

    fn starting_at(port: u16) -> Self {
        Self {
            next: port.clamp(Self::LOW, Self::HIGH - 1),
        }
    }

    /// The next port of the range that nothing holds now (wrapping around once).
    fn next_free(&mut self) -> u16 {
        for _ in Self::LOW..Self::HIGH {
            let port = self.next;
            self.next = if port + 1 >= Self::HIGH {
                Self::LOW
            } else {
                port + 1
            };
            if std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return port;
            }
        }
        free_udp_port()
    }
}
