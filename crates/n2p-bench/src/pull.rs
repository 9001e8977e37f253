//! Pulls (issue 7, point 6): P1 (one large file), P2 (one directory of small files) and P3
//! (many small paths) — the W1..W3 store paths — copied by `nix copy --from <source>` into
//! a fresh chroot store behind its own nix-daemon, from four sources holding the same
//! source store:
//!
//! - `n2p`: the binary-cache facade of `n2p client <addr> --cache ADDR`, whose `n2p server`
//!   reads a nix-daemon on the source store (`http://ADDR`);
//! - `file`: a `file://` binary cache with `compression=none`, written once beforehand (the
//!   limit for any binary cache);
//! - `http`: the same cache directory served over HTTP by Python's stock static-file server
//!   (`python3 -m http.server`): what any HTTP binary cache costs Nix on top of `file`, since
//!   Nix then reads the NAR through its HTTP client;
//! - `ssh-ng`: Debian's OpenSSH server on loopback, the remote `nix-daemon --stdio` opening
//!   the source store (`?remote-store=local?root=…`) — what a user would pick instead;
//! - `local`: the source store opened directly (`local?root=…`).
//!
//! On the emulated link (the WAN section) only `n2p` and `ssh-ng` are measured: the facade
//! and the pulling `nix` run in the near namespace, `n2p server` and sshd in the far one.
//!
//! Rounds are interleaved like the transfers ([`crate::transfer`]); then the facade's
//! narinfo latency is measured with bare HTTP requests (hits and misses, the server live).

use std::{
    collections::BTreeMap,
    fmt, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use n2p_testkit::{
    http,
    net::free_tcp_port,
    netns::in_netns,
    nix::{NIX_CONFIG, NixDaemon, nix_command},
    proc::{Process, try_run_timed},
    rand::XorShift64,
    wait::{POLL_INTERVAL, poll_until},
};
use serde::Serialize;

use crate::{
    forwarders::{Net, READY_TIMEOUT, start_n2p_client, start_n2p_server},
    nix::{NIX_TIMEOUT, Workloads},
    procfs::tree_cpu_seconds,
    sshd::Sshd,
    stats::{Summary, rotated, round_ratios},
    transfer::{Job, JobResult, Recorder, Sample, standard_jobs, summarize, timed_sample},
    worker::connect_and_query,
};

/// A new, empty `XDG_CACHE_HOME` for one measured pull: Nix keeps narinfo answers in
/// `$XDG_CACHE_HOME/nix` for a month, so without this a round would reuse an earlier
/// round's; with it every pull is a first pull, with Nix's default TTLs (a TTL of 0 would
/// instead make Nix ask again for every narinfo it already fetched in the same command).
fn fresh_nix_cache_home(scratch: &Path, job: &Job, source: Source) -> Result<PathBuf> {
    let dir = scratch.join(format!("xdg-cache-{}-{source}", job.name));
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Longest one bare HTTP request to the facade may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a pull comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Source {
    /// n2p's binary-cache facade (`n2p client --cache` → `n2p server` → daemon).
    N2p,
    /// A `file://` binary cache, `compression=none`.
    File,
    /// The `file://` cache's directory served by `python3 -m http.server`.
    Http,
    /// `ssh-ng://` to OpenSSH on loopback.
    SshNg,
    /// The source store itself, `local?root=`.
    Local,
}

impl Source {
    /// All sources, in report order.
    pub(crate) const ALL: [Source; 5] = [
        Source::N2p,
        Source::File,
        Source::Http,
        Source::SshNg,
        Source::Local,
    ];

    /// Short name (JSON keys, directory names, table columns).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Source::N2p => "n2p",
            Source::File => "file",
            Source::Http => "http",
            Source::SshNg => "ssh-ng",
            Source::Local => "local",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Starts `python3 -m http.server` on `dir` (the `file://` cache) on a free loopback port and
/// waits until it serves `/nix-cache-info`.
fn start_static_http(dir: &Path, log: &Path) -> Result<(Process, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let mut command = std::process::Command::new("python3");
    command
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(dir)
        .arg(addr.port().to_string());
    let server = Process::try_spawn_logged("python3 -m http.server", &mut command, log)
        .map_err(|f| anyhow::anyhow!("{f}"))?;
    serves_cache_info(addr).context("python3 -m http.server")?;
    Ok((server, addr))
}

/// Waits until the binary cache at `addr` answers `/nix-cache-info` with 200.
fn serves_cache_info(addr: SocketAddr) -> Result<()> {
    poll_until(READY_TIMEOUT, POLL_INTERVAL, || {
        match http::request("GET", addr, "/nix-cache-info", HTTP_TIMEOUT) {
            Ok(reply) if reply.status == 200 => Ok(()),
            Ok(reply) => Err(anyhow::anyhow!("status {}", reply.status)),
            Err(e) => Err(e.into()),
        }
    })
    .map_err(|e| anyhow::anyhow!("/nix-cache-info not served within {READY_TIMEOUT:?}: {e}"))
}

/// The pull jobs P1..P3: the transfer jobs W1..W3 (same paths, same descriptions).
pub(crate) fn pull_jobs(w: &Workloads, p1_bytes: u64) -> Vec<Job> {
    standard_jobs(w, p1_bytes)
        .into_iter()
        .filter_map(|job| {
            let name = match job.name {
                "W1" => "P1",
                "W2" => "P2",
                "W3" => "P3",
                _ => return None,
            };
            Some(Job { name, ..job })
        })
        .collect()
}

/// The four sources, set up once and kept running across rounds.
pub(crate) struct Sources {
    /// The source store's `local?root=` URL.
    local_url: String,
    /// The `file://` cache's URL (on loopback only: it does not cross a link).
    file_url: Option<String>,
    /// Python's static-file server on the `file://` cache's directory, and its address.
    http: Option<(Process, SocketAddr)>,
    /// The namespace that the pulling `nix` and the facade run in (None: this one).
    client_ns: Option<String>,
    /// The facade's address.
    cache_addr: SocketAddr,
    /// `n2p server`, `n2p client --cache`: killed on drop.
    server: Process,
    client: Process,
    /// How a fresh `n2p client --cache` is started ([`Sources::cold_lookups`]).
    fresh_client: FreshClient,
    /// The nix-daemon on the source store that `n2p server` reads.
    source_daemon: NixDaemon,
    /// OpenSSH, when installed.
    sshd: Option<Sshd>,
}

/// What starting one more `n2p client --cache` against the sources' server takes.
struct FreshClient {
    n2p: PathBuf,
    congestion: Option<String>,
    /// The server's long address.
    address: String,
    net: Net,
    /// Where the clients of [`Sources::cold_lookups`] keep their home and logs.
    dir: PathBuf,
}

impl FreshClient {
    /// Starts `n2p client --cache` with its home, socket and log named `name` under `dir`,
    /// the facade on a free port at the client end of the link; returns once the facade is
    /// listening.
    fn start(&self, dir: &Path, name: &str, extra: &[&str]) -> Result<(Process, SocketAddr)> {
        let cache = SocketAddr::new(self.net.client_ip, free_tcp_port());
        let client = start_n2p_client(
            &self.n2p,
            &dir.join(format!("{name}-home")),
            &self.address,
            &dir.join(format!("{name}.sock")),
            &self.net,
            &dir.join(format!("{name}.log")),
            &[&["--cache", &cache.to_string()], extra].concat(),
            self.congestion.as_deref(),
        )?;
        client.try_wait_for_line("binary cache for Nix at", READY_TIMEOUT)?;
        Ok((client, cache))
    }
}

impl Sources {
    /// Starts the sources for `workloads` under `dir`: a daemon on the source store, the
    /// n2p server/client pair with the facade, sshd (skipped with a note in `unavailable`
    /// when absent), and, on loopback, writes the `file://` cache of `paths`. On an emulated
    /// link (`net` with namespaces) the server side (n2p server, sshd) runs in the server
    /// namespace and the facade, like the pulling `nix`, in the client namespace; `file` and
    /// `local` are then left out. Both n2p processes get `N2P_CONGESTION=congestion` when
    /// given.
    pub(crate) fn start(
        n2p: &Path,
        congestion: Option<&str>,
        dir: &Path,
        workloads: &Workloads,
        paths: &[String],
        net: &Net,
        unavailable: &mut Vec<String>,
    ) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let local_url = workloads.source_url.clone();
        let store_root = local_url
            .strip_prefix("local?root=")
            .context("the source store is not a local?root= store")?;
        // The daemon's directory is the source store's parent, so it serves that store.
        let source_dir = Path::new(store_root)
            .parent()
            .context("the source store has no parent directory")?;
        let source_daemon = NixDaemon::try_start_at(&dir.join("source-daemon.sock"), source_dir)?;

        let loopback = net.client_ns.is_none() && net.server_ns.is_none();
        let file_dir = dir.join("file-cache");
        let file_url = if loopback {
            let file_url = format!("file://{}?compression=none", file_dir.display());
            eprintln!("writing the file:// binary cache …");
            let mut command = nix_command("nix");
            command
                .args(["copy", "--from", &local_url, "--to", &file_url])
                .args(paths);
            try_run_timed(&mut command, None, &dir.join("file-cache.err"), NIX_TIMEOUT)?
                .check("nix copy --to the file:// cache")?;
            Some(file_url)
        } else {
            None
        };

        let http = if loopback {
            match start_static_http(&file_dir, &dir.join("http.log")) {
                Ok(http) => Some(http),
                Err(e) => {
                    eprintln!("SKIPPED: http pulls: {e:#}");
                    unavailable.push(format!("http pulls SKIPPED: {e:#}"));
                    None
                }
            }
        } else {
            None
        };

        let n2p_dir = dir.join("n2p");
        fs::create_dir_all(&n2p_dir)?;
        let (server, address) =
            start_n2p_server(n2p, &n2p_dir, source_daemon.socket_path(), net, congestion)?;
        let fresh_client = FreshClient {
            n2p: n2p.to_owned(),
            congestion: congestion.map(str::to_owned),
            address,
            net: net.clone(),
            dir: n2p_dir.join("fresh"),
        };
        let (client, cache_addr) = fresh_client.start(&n2p_dir, "client", &[])?;
        in_ns(net.client_ns.as_deref(), move || {
            serves_cache_info(cache_addr).context("the facade")
        })?;

        let sshd = match Sshd::start_at(&dir.join("sshd"), net.server_ns.as_deref(), net.server_ip)
        {
            Ok(sshd) => Some(sshd),
            Err(e) => {
                eprintln!("SKIPPED: ssh-ng pulls: {e:#}");
                unavailable.push(format!("ssh-ng pulls SKIPPED: {e:#}"));
                None
            }
        };
        Ok(Self {
            local_url,
            file_url,
            http,
            client_ns: net.client_ns.clone(),
            cache_addr,
            server,
            client,
            fresh_client,
            source_daemon,
            sshd,
        })
    }

    /// `runs` first lookups through a facade that has just started: each run a fresh
    /// `n2p client --cache`, then one `GET` of the narinfo of `path` (which the source has)
    /// from the moment the facade is ready. That lookup dials the facade's store connection
    /// to the server, so it is what the first substitution after a start (or after a peer
    /// arrives) waits for; a 404 there is a path Nix then believes absent for an hour.
    ///
    /// With `again` (another path the source has), each facade then waits until its store
    /// connection was closed as idle (the facade runs with a [`RECONNECT_IDLE_MS`] idle
    /// close) and looks `again` up: a lookup on a reconnection, which resumes the session.
    pub(crate) fn cold_lookups(
        &self,
        path: &str,
        again: Option<&str>,
        runs: usize,
    ) -> Result<ColdLookups> {
        let url = format!("/{}.narinfo", hash_part(path)?);
        let again = again.map(hash_part).transpose()?;
        let idle_close = RECONNECT_IDLE_MS.to_string();
        let extra: &[&str] = match again {
            Some(_) => &["--peer-idle-close-ms", &idle_close],
            None => &[],
        };
        fs::create_dir_all(&self.fresh_client.dir)?;
        let mut first = Lookups::default();
        let mut reconnect = Lookups::default();
        for run in 0..runs {
            let (mut client, cache) =
                self.fresh_client
                    .start(&self.fresh_client.dir, &format!("cold-{run}"), extra)?;
            let url = url.clone();
            let again = again.map(|h| format!("/{h}.narinfo"));
            let replies = in_ns(self.client_ns.as_deref(), move || {
                let first = http::request("GET", cache, &url, HTTP_TIMEOUT)?;
                let again = match again {
                    Some(url) => {
                        thread::sleep(Duration::from_millis(RECONNECT_IDLE_MS * 4));
                        Some(http::request("GET", cache, &url, HTTP_TIMEOUT)?)
                    }
                    None => None,
                };
                Ok((first, again))
            });
            client.stop(Duration::from_secs(5));
            let (reply, again) = replies.with_context(|| format!("cold lookup {run}"))?;
            first.add(&reply);
            if let Some(reply) = again {
                reconnect.add(&reply);
            }
        }
        Ok(ColdLookups {
            runs,
            ms: Summary::of(&first.ms),
            not_answered_ms: first.not_answered_ms,
            reconnect_ms: Summary::of(&reconnect.ms),
            reconnect_not_answered_ms: reconnect.not_answered_ms,
        })
    }

    /// The sources that can be measured.
    pub(crate) fn available(&self) -> Vec<Source> {
        Source::ALL
            .into_iter()
            .filter(|s| self.url(*s).is_some())
            .collect()
    }

    /// The `--from` URL of `source` (None: not available here).
    fn url(&self, source: Source) -> Option<String> {
        Some(match source {
            Source::N2p => format!("http://{}", self.cache_addr),
            Source::File => self.file_url.clone()?,
            Source::Http => format!("http://{}", self.http.as_ref()?.1),
            Source::SshNg => self.sshd.as_ref()?.store_url(&self.local_url),
            // The source store is no further away than this machine, link or not.
            Source::Local if self.client_ns.is_none() => self.local_url.clone(),
            Source::Local => return None,
        })
    }

    /// The serving processes of `source` whose CPU (with their descendants) is accounted:
    /// for n2p the server, the client (facade) and the source daemon; for ssh-ng sshd (its
    /// sessions and the remote `nix-daemon --stdio`); for http the Python server. The others
    /// run inside `nix`.
    fn serving_pids(&self, source: Source) -> Vec<u32> {
        match source {
            Source::N2p => vec![
                self.server.pid(),
                self.client.pid(),
                self.source_daemon.pid(),
            ],
            Source::SshNg => self.sshd.iter().map(Sshd::pid).collect(),
            Source::Http => self.http.iter().map(|(p, _)| p.pid()).collect(),
            Source::File | Source::Local => Vec::new(),
        }
    }

    /// The n2p processes whose peak memory P1 records: (label, pid).
    fn n2p_processes(&self) -> [(&'static str, u32); 2] {
        [
            ("n2p client (facade)", self.client.pid()),
            ("n2p server", self.server.pid()),
        ]
    }
}

/// Peak resident memory of one process during P1.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcessPeak {
    /// Which process.
    pub(crate) process: String,
    /// VmHWM after P1 (reset before it), bytes, per round.
    pub(crate) bytes: Vec<u64>,
}

/// The facade's narinfo latency.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NarinfoLatency {
    /// Requests of each kind.
    pub(crate) requests: usize,
    /// Hits (200), ms: each a different valid path.
    pub(crate) hit_ms: Option<Summary>,
    /// Misses (404) with the server live, ms: each a different random hash.
    pub(crate) miss_ms: Option<Summary>,
    /// `/nix-cache-info`, ms: the facade's HTTP alone, no peer asked.
    pub(crate) cache_info_ms: Option<Summary>,
    /// A new connection to the source's nix-daemon + handshake + one QueryValidPaths, made by
    /// the runner itself, ms: what the server pays per request before its two queries.
    pub(crate) daemon_connection_ms: Option<Summary>,
    /// Answers with another status than expected.
    pub(crate) wrong_status: usize,
}

/// The idle close the facades of [`Sources::cold_lookups`] run with when they also time a
/// lookup on a reconnection, ms.
const RECONNECT_IDLE_MS: u64 = 500;

/// Timed lookups, and those not answered 200.
#[derive(Debug, Default)]
struct Lookups {
    ms: Vec<f64>,
    not_answered_ms: Vec<f64>,
}

impl Lookups {
    fn add(&mut self, reply: &http::Reply) {
        let took = reply.elapsed.as_secs_f64() * 1000.0;
        self.ms.push(took);
        if reply.status != 200 {
            self.not_answered_ms.push(took);
        }
    }
}

/// The facade's probes after the pulls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probes {
    /// Narinfo hits and misses each, through the running facade.
    pub(crate) narinfo_requests: usize,
    /// Fresh facades, one first lookup each ([`Sources::cold_lookups`]).
    pub(crate) cold_lookups: usize,
}

/// First narinfo lookups through a facade that has just started ([`Sources::cold_lookups`]).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ColdLookups {
    /// Fresh facades, one lookup each.
    pub(crate) runs: usize,
    /// Time to the answer, ms.
    pub(crate) ms: Option<Summary>,
    /// The lookups answered with another status than 200 (a 404: the facade's deadline
    /// passed), their times in ms.
    pub(crate) not_answered_ms: Vec<f64>,
    /// The time to the answer of the second lookup of each facade, on its store connection
    /// made again after an idle close, ms (none when there was no second path to ask).
    pub(crate) reconnect_ms: Option<Summary>,
    /// Those of them not answered 200, their times in ms.
    pub(crate) reconnect_not_answered_ms: Vec<f64>,
}

/// Everything the pull section measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PullResults {
    /// Rounds run.
    pub(crate) reps: usize,
    /// The source order of each round.
    pub(crate) orders: Vec<Vec<Source>>,
    /// 1-minute load average at the start of each round, and after the last.
    pub(crate) load: Vec<f64>,
    /// The source the ratios are taken against.
    pub(crate) baseline: Source,
    /// Per job.
    pub(crate) jobs: Vec<JobResult<Source>>,
    /// Peak memory of the n2p processes during P1.
    pub(crate) p1_peak_rss: Vec<ProcessPeak>,
    /// The facade's narinfo latency.
    pub(crate) narinfo: Option<NarinfoLatency>,
    /// First lookups through fresh facades.
    pub(crate) cold: Option<ColdLookups>,
    /// Failures (the measurement is then missing from its round).
    pub(crate) errors: Vec<String>,
}

impl PullResults {
    /// The result of `job`, if run.
    pub(crate) fn job(&self, name: &str) -> Option<&JobResult<Source>> {
        self.jobs.iter().find(|j| j.workload == name)
    }

    /// Median over rounds of `source`'s time divided by `other`'s in the same round.
    pub(crate) fn round_ratio(&self, name: &str, source: Source, other: Source) -> Option<f64> {
        let job = self.job(name)?;
        let ratios = round_ratios(&job.of(source)?.times_s, &job.of(other)?.times_s);
        Summary::of(&ratios).map(|s| s.median)
    }
}

/// Runs `reps` interleaved rounds of `jobs` from every available source, then
/// the facade probes of `probes`; ratios against `baseline`. Destination
/// daemons live under `dest_dir`.
pub(crate) fn run(
    sources: &Sources,
    jobs: &[Job],
    workloads: &Workloads,
    reps: usize,
    probes: Probes,
    baseline: Source,
    dest_dir: &Path,
) -> PullResults {
    let available = sources.available();
    let mut rec = Recorder::new(jobs.len());
    let mut orders = Vec::new();
    let mut load = Vec::new();
    let all_paths: Vec<String> = jobs.iter().flat_map(|j| j.paths().to_vec()).collect();

    for rep in 0..reps {
        let order = rotated(&available, rep);
        load.push(load_average());
        eprintln!(
            "pull round {}/{reps}: order {:?}, load {:.2}",
            rep + 1,
            order.iter().map(|s| s.name()).collect::<Vec<_>>(),
            load[rep]
        );
        orders.push(order.clone());
        let mut daemons: BTreeMap<Source, NixDaemon> = BTreeMap::new();
        for source in &order {
            let dir = dest_dir.join(format!("r{rep}-{source}"));
            match NixDaemon::try_start_at(&dir.join("daemon.sock"), &dir) {
                Ok(d) => {
                    daemons.insert(*source, d);
                }
                Err(e) => rec
                    .errors
                    .push(format!("round {rep}: {source}: daemon: {e:#}")),
            }
        }
        for (j, job) in jobs.iter().enumerate() {
            for source in &order {
                let sample = match daemons.get(source) {
                    Some(daemon) => measure(sources, *source, job, daemon, j == 0, dest_dir),
                    None => Err(anyhow::anyhow!("no daemon")),
                };
                rec.record(rep, j, job, *source, sample);
            }
        }
        for (source, daemon) in daemons {
            if let Err(e) = workloads.verify_paths(daemon.socket_path(), &all_paths) {
                rec.errors
                    .push(format!("round {rep}: {source}: verification: {e:#}"));
                eprintln!("  {source} verification FAILED: {e:#}");
            }
            daemon.remove();
        }
    }
    load.push(load_average());

    let narinfo_requests = probes.narinfo_requests;
    eprintln!("narinfo latency: {narinfo_requests} hits and misses");
    let (cache, daemon, paths) = (
        sources.cache_addr,
        sources.source_daemon.socket_path().to_owned(),
        all_paths.clone(),
    );
    let narinfo = match in_ns(sources.client_ns.as_deref(), move || {
        narinfo_latency(cache, &daemon, &paths, narinfo_requests)
    }) {
        Ok(n) => Some(n),
        Err(e) => {
            rec.errors.push(format!("narinfo latency: {e:#}"));
            None
        }
    };
    eprintln!(
        "first lookups through {} fresh facades",
        probes.cold_lookups
    );
    let cold = match all_paths.first() {
        Some(path) if probes.cold_lookups > 0 => sources
            .cold_lookups(
                path,
                all_paths.get(1).map(String::as_str),
                probes.cold_lookups,
            )
            .map_err(|e| rec.errors.push(format!("first lookups: {e:#}")))
            .ok(),
        _ => None,
    };
    PullResults {
        reps,
        orders,
        load,
        baseline,
        jobs: summarize(jobs, &available, &rec.times, &rec.cpus, baseline),
        p1_peak_rss: rec
            .peaks
            .into_iter()
            .map(|((_, process), bytes)| ProcessPeak { process, bytes })
            .collect(),
        narinfo,
        cold,
        errors: rec.errors,
    }
}

fn measure(
    sources: &Sources,
    source: Source,
    job: &Job,
    daemon: &NixDaemon,
    track_peak: bool,
    scratch: &Path,
) -> Result<Sample> {
    let from = sources
        .url(source)
        .with_context(|| format!("{source} is not available"))?;
    let tracked: Vec<(String, u32)> = if track_peak && source == Source::N2p {
        sources
            .n2p_processes()
            .map(|(label, pid)| (label.to_owned(), pid))
            .to_vec()
    } else {
        Vec::new()
    };
    let pids = sources.serving_pids(source);
    let mut command = job.command_in(sources.client_ns.as_deref(), &from, &daemon.store_url());
    command.env("NIX_CONFIG", NIX_CONFIG);
    command.env(
        "XDG_CACHE_HOME",
        fresh_nix_cache_home(scratch, job, source)?,
    );
    if let (Source::SshNg, Some(sshd)) = (source, &sources.sshd) {
        command.env("NIX_SSHOPTS", sshd.nix_sshopts());
    }
    timed_sample(
        &mut command,
        &format!("{} from {source}", job.name),
        scratch,
        &tracked,
        || pids.iter().map(|p| tree_cpu_seconds(*p)).sum(),
    )
}

/// `f()` in the network namespace `ns` (None: here, on this thread).
fn in_ns<T: Send + 'static>(
    ns: Option<&str>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match ns {
        Some(ns) => in_netns(&Path::new("/run/netns").join(ns), f),
        None => f(),
    }
}

/// `requests` narinfo hits (cycling through `paths`) and as many misses (fresh random
/// hashes), alternating with `/nix-cache-info` and a direct connection to the daemon at
/// `daemon_socket` for comparison; each HTTP request on a new connection.
fn narinfo_latency(
    cache: SocketAddr,
    daemon_socket: &Path,
    paths: &[String],
    requests: usize,
) -> Result<NarinfoLatency> {
    if paths.is_empty() {
        bail!("no paths to ask for");
    }
    let mut rng = XorShift64::new(0x6e61_7269);
    let mut hits = Vec::with_capacity(requests);
    let mut misses = Vec::with_capacity(requests);
    let mut infos = Vec::with_capacity(requests);
    let mut daemon = Vec::with_capacity(requests);
    let mut wrong_status = 0;
    for i in 0..requests {
        let path = &paths[i % paths.len()];
        let hit = format!("/{}.narinfo", hash_part(path)?);
        let miss = format!("/{}.narinfo", random_hash_part(&mut rng));
        let info = "/nix-cache-info".to_owned();
        for (url, want, out) in [
            (hit, 200, &mut hits),
            (miss, 404, &mut misses),
            (info, 200, &mut infos),
        ] {
            let reply = http::request("GET", cache, &url, HTTP_TIMEOUT)?;
            if reply.status != want {
                wrong_status += 1;
            }
            out.push(reply.elapsed.as_secs_f64() * 1000.0);
        }
        let (took, valid) = connect_and_query(daemon_socket, path)
            .with_context(|| format!("asking the daemon at {}", daemon_socket.display()))?;
        if !valid {
            bail!("{path} is not valid in the source daemon's store");
        }
        daemon.push(took.as_secs_f64() * 1000.0);
    }
    Ok(NarinfoLatency {
        requests,
        hit_ms: Summary::of(&hits),
        miss_ms: Summary::of(&misses),
        cache_info_ms: Summary::of(&infos),
        daemon_connection_ms: Summary::of(&daemon),
        wrong_status,
    })
}

/// The 32-character hash part of a store path.
fn hash_part(path: &str) -> Result<&str> {
    path.strip_prefix("/nix/store/")
        .and_then(|rest| rest.get(..32))
        .with_context(|| format!("{path} is not a store path"))
}

/// 32 random characters of Nix's base32 alphabet: a hash part no store has.
fn random_hash_part(rng: &mut XorShift64) -> String {
    const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    (0..32)
        .map(|_| NIX32[rng.below(NIX32.len() as u64) as usize] as char)
        .collect()
}

/// The 1-minute load average (NaN when unreadable).
pub(crate) fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_parts_of_store_paths() {
        assert_eq!(
            hash_part("/nix/store/g1nbmnqnx4gpnv32yprf4ql87ccg5035-f1").expect("a store path"),
            "g1nbmnqnx4gpnv32yprf4ql87ccg5035"
        );
        assert!(hash_part("/tmp/x").is_err());
        assert!(hash_part("/nix/store/short").is_err());
    }

    #[test]
    fn random_hash_parts_are_nix32() {
        let mut rng = XorShift64::new(1);
        let a = random_hash_part(&mut rng);
        let b = random_hash_part(&mut rng);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| !b"eotu".contains(&c)), "{a}");
    }
}
