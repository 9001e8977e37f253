//! `n2p-bench`: measures `nix copy --to` through n2p (client/server and mesh) against the
//! daemon socket itself, dumbpipe and socat, plus n2p's connection costs, memory, start-up
//! and mesh convergence (issue 4), and pulls through n2p's binary-cache facade against a
//! `file://` cache, ssh-ng and a local store (issue 7), and writes a Markdown report and a
//! JSON file.
//!
//! ```text
//! cargo run --release -p n2p-bench -- [--reps 5] [--quick] [--out docs/bench-results]
//! ```
//!
//! It starts real nix-daemons on chroot stores in a tmpfs work directory (a fresh store
//! per round and variant), runs every workload through every variant in turn within each
//! round, and reports medians, min/max and the median of the per-round ratios to direct.
//! It is not part of `cargo test`; only its pure helpers have unit tests.

mod connect;
mod fairness;
mod forwarders;
mod link;
mod mesh;
mod nix;
mod procfs;
mod pull;
mod quic_stats;
mod report;
mod sshd;
mod stats;
mod transfer;
mod worker;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use n2p_testkit::{
    dir::remove_tree,
    nix::NixDaemon,
    proc::{find_on_path, tail},
};

use crate::{
    forwarders::{Forwarder, Net, Tools, Variant},
    nix::{Sizes, Workloads},
    procfs::{output_of, status_bytes},
    report::{Machine, NetemResults, Report, RssSample, Versions},
};

/// Benchmark n2p against a direct nix-daemon socket, dumbpipe and socat.
#[derive(Debug, Parser)]
#[command(name = "n2p-bench")]
struct Args {
    /// Rounds of the transfer benchmark [default: 7, quick: 2].
    #[arg(long)]
    reps: Option<usize>,
    /// Smoke run: small workloads, fewer rounds, only N = 8 for the mesh.
    #[arg(long)]
    quick: bool,
    /// Where to write results.json and results.md.
    #[arg(long, default_value = "docs/bench-results")]
    out: PathBuf,
    /// Scratch directory for stores and sockets; should be tmpfs [default: /dev/shm/n2p-bench-<pid>].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the scratch directory afterwards.
    #[arg(long)]
    keep: bool,
    /// Use this n2p binary instead of building target/release/n2p.
    #[arg(long, value_name = "PATH")]
    n2p: Option<PathBuf>,
    /// A second n2p binary, measured as the `n2p-alt` variant beside `n2p` (A/B of a change).
    #[arg(long, value_name = "PATH")]
    n2p_alt: Option<PathBuf>,
    /// Do not run `cargo build --release -p n2p` first.
    #[arg(long)]
    no_build: bool,
    /// Use this dumbpipe binary instead of installing one with cargo.
    #[arg(long, value_name = "PATH")]
    dumbpipe: Option<PathBuf>,
    /// Leave dumbpipe out.
    #[arg(long)]
    no_dumbpipe: bool,
    /// Variants to measure [default: all available].
    #[arg(long, value_delimiter = ',')]
    variants: Option<Vec<Variant>>,
    /// Workloads of the transfer and WAN sections: W1..W5 (the WAN link runs W1..W4, W4 with
    /// W3) and, on the link, `ping` (`nix store ping` on the warm forwarder) and the pulls
    /// P1..P3 [default: all].
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Sections to run [default: all].
    #[arg(long, value_delimiter = ',')]
    sections: Option<Vec<Section>>,
    /// Mesh sizes [default: 8,32; quick: 8].
    #[arg(long, value_delimiter = ',')]
    mesh_sizes: Option<Vec<usize>>,
    /// Mesh rounds per size [default: 3; quick: 1].
    #[arg(long)]
    mesh_reps: Option<usize>,
    /// The mesh team's `expiry_secs` (nodes announce every third of it) [default: n2p's].
    #[arg(long)]
    mesh_expiry_secs: Option<u64>,
    /// New connections per variant [default: 200; quick: 50].
    #[arg(long)]
    connections: Option<usize>,
    /// Rounds on the emulated WAN link [default: 3; quick: 1].
    #[arg(long)]
    netem_reps: Option<usize>,
    /// MiB of W1 (and of P1) on the emulated WAN link [default: 64; quick: 16].
    #[arg(long)]
    netem_w1_mib: Option<u64>,
    /// Rounds of the pull section [default: 3; quick: 1].
    #[arg(long)]
    pull_reps: Option<usize>,
    /// Narinfo hits and misses each for the facade's latency [default: 200, on the WAN link
    /// 50; quick: 100, on the link 20].
    #[arg(long)]
    narinfo_requests: Option<usize>,
    /// Fresh facades (`n2p client --cache`), each timed to the answer of its first narinfo
    /// lookup, which dials its store connection [default: 20; quick: 5].
    #[arg(long)]
    cold_lookups: Option<usize>,
    /// Round-trip time of the emulated WAN link, in ms.
    #[arg(long, default_value_t = 30)]
    wan_rtt_ms: u32,
    /// Rate of the emulated WAN link, in Mbit/s.
    #[arg(long, default_value_t = 100)]
    wan_rate_mbit: u32,
    /// Random loss of the emulated WAN link, in percent of packets in each direction.
    #[arg(long, default_value_t = 0.0)]
    wan_loss: f64,
    /// Drop-tail queue of each direction of the emulated WAN link, in bytes [default: one
    /// bandwidth-delay product, at least 32 packets].
    #[arg(long)]
    wan_queue_bytes: Option<u64>,
    /// TCP congestion control of the two namespaces of the emulated link (sysctl
    /// net.ipv4.tcp_congestion_control inside them; ssh-ng uses it) [default: inherited].
    #[arg(long, value_name = "NAME")]
    wan_tcp_cc: Option<String>,
    /// TCP congestion control set on socat's sockets (TCP_CONGESTION) [default: the
    /// namespace's].
    #[arg(long, value_name = "NAME")]
    wan_socat_cc: Option<String>,
    /// `N2P_CONGESTION` (tolerant, cubic, new-reno, bbr) of the `n2p` variant [default: n2p's].
    #[arg(long, value_name = "NAME")]
    n2p_congestion: Option<String>,
    /// `N2P_CONGESTION` of the `n2p-alt` variant; without `--n2p-alt`, n2p-alt is the same
    /// binary as n2p with this controller.
    #[arg(long, value_name = "NAME")]
    n2p_alt_congestion: Option<String>,
    /// Something else than the benchmark.
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// Other commands.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Measure the link emulator against its set RTT, rate and loss (root; ip, ping).
    LinkCheck(link::check::CheckArgs),
    /// An n2p stream and a TCP stream sharing the emulated bottleneck: each one's goodput
    /// (root; ip).
    Fairness(fairness::FairArgs),
}

/// Parts of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// W1..W5 through every variant, CPU and memory.
    Transfers,
    /// New daemon connections on a warm tunnel.
    Connect,
    /// Client start-up to the first nix operation.
    Startup,
    /// Mesh convergence and expiry.
    Mesh,
    /// Over an emulated WAN link (network namespaces joined by `link::Link`): W1..W4
    /// pushes, warm `nix store ping`, a fresh client to its first answer, pulls P1..P3.
    #[value(alias = "netem")]
    Wan,
    /// P1..P3 pulled through the facade, a file:// cache, ssh-ng and a local store;
    /// narinfo latency and facade memory.
    Pulls,
}

fn main() {
    let mut args = Args::parse();
    let result = match args.command.take() {
        Some(Cmd::LinkCheck(check)) => link::check::run(check),
        Some(Cmd::Fairness(fair)) => fairness::run(fair),
        None => run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let date = output_of(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_else(|| "unknown date".to_owned());
    let command = format!(
        "cargo run --release -p n2p-bench --{}",
        std::env::args()
            .skip(1)
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    let reps = args.reps.unwrap_or(if args.quick { 2 } else { 7 }).max(1);
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let sections = args.sections.clone().unwrap_or_else(|| {
        vec![
            Section::Transfers,
            Section::Connect,
            Section::Startup,
            Section::Mesh,
            Section::Wan,
            Section::Pulls,
        ]
    });
    // W5 is the transfers' only; leave it out of a run without them.
    let sizes = if sections.contains(&Section::Transfers) {
        sizes
    } else {
        sizes.without_w5()
    };
    for program in ["nix", "nix-daemon", "nix-store"] {
        if find_on_path(program).is_none() {
            bail!("{program} not found: install Nix (on Debian: apt-get install -y nix-bin)");
        }
    }

    let n2p = n2p_binary(&args)?;
    let mut unavailable = Vec::new();
    let forwards = sections.iter().any(|s| {
        matches!(
            s,
            Section::Transfers | Section::Connect | Section::Startup | Section::Wan
        )
    });
    let dumbpipe = if !forwards {
        None
    } else if args.no_dumbpipe {
        unavailable.push("dumbpipe (--no-dumbpipe)".to_owned());
        None
    } else {
        match dumbpipe_binary(&args) {
            Ok(path) => Some(path),
            Err(e) => {
                eprintln!("dumbpipe unavailable: {e:#}");
                unavailable.push(format!("dumbpipe: {e:#}"));
                None
            }
        }
    };
    let socat = find_on_path("socat");
    if socat.is_none() {
        unavailable.push("socat: not installed (apt-get install -y socat)".to_owned());
    }
    let n2p_alt = match &args.n2p_alt {
        Some(p) => Some(fs::canonicalize(p).with_context(|| format!("no n2p at {}", p.display()))?),
        None => args.n2p_alt_congestion.as_ref().map(|_| n2p.clone()),
    };
    let tools = Tools {
        n2p: n2p.clone(),
        n2p_alt,
        congestion: [args.n2p_congestion.clone(), args.n2p_alt_congestion.clone()],
        dumbpipe,
        socat,
    };
    let mut variants: Vec<Variant> = args.variants.clone().unwrap_or(Variant::ALL.to_vec());
    if sections.contains(&Section::Wan)
        && variants.contains(&Variant::SshNg)
        && sshd::Sshd::binary().is_none()
    {
        eprintln!("SKIPPED: ssh-ng on the WAN link: sshd not found");
        unavailable.push(
            "ssh-ng on the WAN link: sshd not found (apt-get install -y openssh-server)".to_owned(),
        );
    }
    variants.retain(|v| match v {
        Variant::Dumbpipe => tools.dumbpipe.is_some(),
        Variant::Socat => tools.socat.is_some(),
        Variant::N2pAlt => tools.n2p_alt.is_some(),
        Variant::SshNg => sshd::Sshd::binary().is_some(),
        _ => true,
    });
    variants.sort();
    variants.dedup();
    if !variants.contains(&Variant::Direct) {
        variants.insert(0, Variant::Direct);
    }

    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/n2p-bench-{}", std::process::id())));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let work = fs::canonicalize(&work)?;
    let is_tmpfs = is_tmpfs(&work);
    if !is_tmpfs {
        eprintln!(
            "warning: {} is not tmpfs; small-file workloads will measure the disk",
            work.display()
        );
    }

    let mut report = Report {
        date,
        command,
        duration_s: 0.0,
        machine: machine(),
        versions: versions(&tools),
        quick: args.quick,
        reps,
        sizes: sizes.clone(),
        work_dir: work.display().to_string(),
        work_dir_is_tmpfs: is_tmpfs,
        unavailable,
        transfers: None,
        idle_rss: Vec::new(),
        connect: None,
        startup: Vec::new(),
        mesh: Vec::new(),
        mesh_expiry_secs: args.mesh_expiry_secs,
        netem: None,
        targets: Vec::new(),
        pulls: None,
        pull_targets: Vec::new(),
    };
    let result = run_sections(
        &args,
        &sections,
        &tools,
        &variants,
        &work,
        &sizes,
        reps,
        &mut report,
    );
    if !args.keep {
        remove_tree(&work);
    }
    result?;
    report.duration_s = started.elapsed().as_secs_f64();
    report.targets = report::evaluate_targets(&report);
    if let Some(p) = &report.pulls {
        report.pull_targets = report::evaluate_pull_targets(p);
    }
    fs::create_dir_all(&args.out)?;
    let json = args.out.join("results.json");
    let md = args.out.join("results.md");
    fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
    let text = report::markdown(&report);
    fs::write(&md, &text)?;
    println!("{text}");
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_sections(
    args: &Args,
    sections: &[Section],
    tools: &Tools,
    variants: &[Variant],
    work: &Path,
    sizes: &Sizes,
    reps: usize,
    report: &mut Report,
) -> Result<()> {
    let netem_w1 = args
        .netem_w1_mib
        .unwrap_or(if args.quick { 16 } else { 64 })
        << 20;
    let wants_netem = sections.contains(&Section::Wan);
    eprintln!("creating the workloads in {} …", work.display());
    let t = Instant::now();
    let workloads = Workloads::create(
        &work.join("source"),
        sizes,
        wants_netem.then_some(netem_w1),
        0x6e32_7062,
    )?;
    eprintln!("workloads ready in {:.1} s", t.elapsed().as_secs_f64());
    let scratch = work.join("scratch");
    fs::create_dir_all(&scratch)?;

    let needs_forwarders = sections
        .iter()
        .any(|s| matches!(s, Section::Transfers | Section::Connect | Section::Startup));
    let mut fwds = Vec::new();
    if needs_forwarders {
        // ssh-ng is measured on the emulated link only.
        for v in variants.iter().filter(|v| **v != Variant::SshNg) {
            match Forwarder::start(*v, &work.join(v.name()), tools, &Net::loopback()) {
                Ok(f) => fwds.push(f),
                Err(e) => {
                    eprintln!("{v} unavailable: {e:#}");
                    report.unavailable.push(format!("{v}: {e:#}"));
                }
            }
        }
        record_idle_rss(&fwds, "after start", &mut report.idle_rss);
    }

    if sections.contains(&Section::Transfers) {
        let jobs = transfer::selected(
            transfer::standard_jobs(&workloads, sizes.w1_bytes),
            args.workloads.as_deref(),
        );
        eprintln!("transfers: {} rounds of {} workloads", reps, jobs.len());
        report.transfers = Some(transfer::run(
            &mut fwds,
            &jobs,
            &workloads,
            reps,
            Variant::Direct,
            &work.join("dest"),
            &scratch,
        ));
        // Let the tunnels go idle again (idle timeouts, buffers returned).
        std::thread::sleep(Duration::from_secs(2));
        record_idle_rss(&fwds, "after transfers", &mut report.idle_rss);
    }

    let probe = workloads.w3[0].clone();
    if sections.contains(&Section::Connect) || sections.contains(&Section::Startup) {
        let mut daemons = Vec::new();
        for fwd in &fwds {
            let daemon =
                NixDaemon::try_start_at(fwd.slot(), &work.join("conn").join(fwd.variant().name()))?;
            connect::seed_path(
                &workloads.source_url,
                daemon.socket_path(),
                &probe,
                &scratch,
            )?;
            daemons.push(daemon);
        }
        if sections.contains(&Section::Connect) {
            let calls = args
                .connections
                .unwrap_or(if args.quick { 50 } else { 200 });
            eprintln!("new connections: {calls} per variant");
            report.connect = Some(connect::measure_connections(
                &mut fwds, &probe, calls, &scratch,
            ));
        }
        if sections.contains(&Section::Startup) {
            let runs = if args.quick { 3 } else { 10 };
            if let Some(address) = fwds.iter().find_map(|f| f.n2p_address().map(str::to_owned)) {
                eprintln!("n2p client start-up: {runs} runs");
                let dir = work.join("startup");
                fs::create_dir_all(&dir)?;
                let setup = connect::ClientSetup {
                    n2p: &tools.n2p,
                    net: &Net::loopback(),
                    congestion: None,
                    tool: "n2p client".to_owned(),
                };
                report.startup.push(connect::n2p_client_startup(
                    &setup, &address, &dir, &probe, runs,
                ));
            }
            if let Some(fwd) = fwds.iter_mut().find(|f| f.variant() == Variant::Dumbpipe) {
                eprintln!("dumbpipe start-up");
                report.startup.push(connect::forwarder_startup(
                    fwd,
                    &scratch,
                    &probe,
                    if args.quick { 1 } else { 2 },
                ));
            }
        }
        for d in daemons {
            d.remove();
        }
    }
    drop(fwds);

    if sections.contains(&Section::Pulls) {
        let reps = args
            .pull_reps
            .unwrap_or(if args.quick { 1 } else { 3 })
            .max(1);
        let requests = args
            .narinfo_requests
            .unwrap_or(if args.quick { 100 } else { 200 });
        let jobs = pull::pull_jobs(&workloads, sizes.w1_bytes);
        let paths: Vec<String> = jobs.iter().flat_map(|j| j.paths().to_vec()).collect();
        match pull::Sources::start(
            &tools.n2p,
            None,
            &work.join("pull-sources"),
            &workloads,
            &paths,
            &Net::loopback(),
            &mut report.unavailable,
        ) {
            Ok(sources) => {
                eprintln!("pulls: {reps} rounds of {} workloads", jobs.len());
                report.pulls = Some(pull::run(
                    &sources,
                    &jobs,
                    &workloads,
                    reps,
                    pull::Probes {
                        narinfo_requests: requests,
                        cold_lookups: cold_lookups(args),
                    },
                    pull::Source::File,
                    &work.join("pull-dest"),
                ));
            }
            Err(e) => {
                eprintln!("pulls unavailable: {e:#}");
                report.unavailable.push(format!("pulls: {e:#}"));
            }
        }
    }

    if sections.contains(&Section::Mesh) {
        let sizes =
            args.mesh_sizes
                .clone()
                .unwrap_or(if args.quick { vec![8] } else { vec![8, 32] });
        let rounds = args.mesh_reps.unwrap_or(if args.quick { 1 } else { 3 });
        for n in sizes {
            let mut results = Vec::new();
            for round in 0..rounds {
                eprintln!("mesh: {n} nodes, round {}/{rounds}", round + 1);
                let dir = work.join(format!("mesh-{n}-{round}"));
                match mesh::measure_round(&tools.n2p, &dir, n, args.mesh_expiry_secs) {
                    Ok(r) => {
                        eprintln!(
                            "  converged in {:.2} s ({:.2} s after the last start); killed node gone in {:.2} s",
                            r.converge_s, r.converge_after_last_start_s, r.killed_all_gone_s
                        );
                        results.push(r);
                    }
                    Err(e) => {
                        eprintln!("  FAILED: {e:#}");
                        report
                            .unavailable
                            .push(format!("mesh N = {n} round {round}: {e:#}"));
                    }
                }
                remove_tree(&dir);
            }
            report.mesh.push(mesh::MeshResult::of(n, results));
        }
    }

    if wants_netem {
        let shape = link::Shape {
            loss_percent: args.wan_loss,
            queue_bytes: args.wan_queue_bytes,
            ..link::Shape::new(args.wan_rtt_ms, args.wan_rate_mbit)
        };
        match run_netem(
            args, tools, variants, work, &workloads, shape, netem_w1, &scratch,
        ) {
            Ok(n) => report.netem = Some(n),
            Err(e) => {
                eprintln!("WAN section unavailable: {e:#}");
                report.unavailable.push(format!("WAN link: {e:#}"));
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_netem(
    args: &Args,
    tools: &Tools,
    variants: &[Variant],
    work: &Path,
    workloads: &Workloads,
    shape: link::Shape,
    w1_bytes: u64,
    scratch: &Path,
) -> Result<NetemResults> {
    let link = link::Link::create(shape)?;
    let mut net = link.net();
    net.socat_cc = args.wan_socat_cc.clone();
    if let Some(cc) = &args.wan_tcp_cc {
        link.set_tcp_congestion(cc)?;
    }
    let tcp_cc = link.tcp_congestion()?;
    eprintln!(
        "WAN link: TCP congestion control {tcp_cc} (socat: {})",
        net.socat_cc.as_deref().unwrap_or(&tcp_cc)
    );
    let mut fwds = Vec::new();
    for v in variants {
        // `direct`: a round daemon's own socket, no link in between: the nix command's own
        // cost, which the ping target subtracts.
        if matches!(
            v,
            Variant::Direct
                | Variant::N2p
                | Variant::N2pAlt
                | Variant::Mesh
                | Variant::Dumbpipe
                | Variant::Socat
                | Variant::SshNg
        ) {
            fwds.push(Forwarder::start(
                *v,
                &work.join(format!("net-{}", v.name())),
                tools,
                &net,
            )?);
        }
    }
    if !fwds.iter().any(|f| f.variant() == Variant::Socat) {
        bail!("the WAN-link comparison needs socat as its baseline");
    }
    let w1 = workloads.w1_net.as_deref().context("no W1 for the link")?;
    let mut jobs = transfer::for_link(
        transfer::standard_jobs(workloads, w1_bytes),
        workloads,
        w1,
        w1_bytes,
    );
    jobs.push(transfer::ping_job());
    let jobs = transfer::selected(jobs, args.workloads.as_deref());
    if jobs.iter().any(|j| j.name == "W4") && !jobs.iter().any(|j| j.name == "W3") {
        bail!("W4 asks the destination about W3's paths: select W3 with it");
    }
    let reps = args.netem_reps.unwrap_or(if args.quick { 1 } else { 3 });
    eprintln!("WAN link: {reps} rounds");
    let mut transfers = transfer::run(
        &mut fwds,
        &jobs,
        workloads,
        reps,
        Variant::Socat,
        &work.join("net-dest"),
        scratch,
    );
    let startup = link_startup(
        &mut fwds,
        tools,
        &net,
        workloads,
        &work.join("net-startup"),
        if args.quick { 3 } else { 10 },
        scratch,
    );
    drop(fwds);
    let pulls =
        link_pulls(args, tools, &net, work, workloads, w1, w1_bytes, reps).unwrap_or_else(|e| {
            eprintln!("WAN link: pulls unavailable: {e:#}");
            transfers.errors.push(format!("pulls: {e:#}"));
            None
        });
    let pull_jobs = pulls
        .as_ref()
        .map(|(j, _)| j.as_slice())
        .unwrap_or_default();
    let nar_bytes = jobs
        .iter()
        .chain(pull_jobs)
        .filter_map(|j| Some((j.name.to_owned(), j.nar_bytes(workloads)?)))
        .collect();
    let pulls = pulls.map(|(_, results)| results);
    drop(link);
    let mut results = NetemResults {
        socat_cc: net.socat_cc.clone().unwrap_or_else(|| tcp_cc.clone()),
        tcp_cc,
        n2p_congestion: tools.congestion.clone(),
        shape,
        w1_bytes,
        w1_line_rate_s: w1_bytes as f64 * 8.0 / (shape.rate_mbit as f64 * 1e6),
        nar_bytes,
        transfers,
        startup,
        pulls,
        targets: Vec::new(),
    };
    results.targets = report::evaluate_link_targets(&results);
    Ok(results)
}

/// Pulls P1..P3 (those `--workloads` selects; P1 is the link's W1 file) over the link in
/// `reps` rounds: the facade (`n2p client --cache` in the client namespace, `n2p server`
/// and the source daemon across the link; the `n2p` variant's binary and controller)
/// against ssh-ng (sshd in the server namespace).
/// None when no pull is selected; failures to start are noted in the results' errors.
#[allow(clippy::too_many_arguments)]
fn link_pulls(
    args: &Args,
    tools: &Tools,
    net: &Net,
    work: &Path,
    workloads: &Workloads,
    w1_net: &str,
    w1_bytes: u64,
    reps: usize,
) -> Result<Option<(Vec<transfer::Job>, pull::PullResults)>> {
    let jobs = transfer::selected(
        transfer::for_link(
            pull::pull_jobs(workloads, w1_bytes),
            workloads,
            w1_net,
            w1_bytes,
        ),
        args.workloads.as_deref(),
    );
    if jobs.is_empty() {
        return Ok(None);
    }
    let paths: Vec<String> = jobs.iter().flat_map(|j| j.paths().to_vec()).collect();
    let mut unavailable = Vec::new();
    let sources = pull::Sources::start(
        &tools.n2p,
        tools.congestion[0].as_deref(),
        &work.join("net-pull-sources"),
        workloads,
        &paths,
        net,
        &mut unavailable,
    )
    .context("starting the pull sources on the link")?;
    let requests = args
        .narinfo_requests
        .unwrap_or(if args.quick { 20 } else { 50 });
    eprintln!("WAN link: {reps} pull rounds of {} workloads", jobs.len());
    let mut results = pull::run(
        &sources,
        &jobs,
        workloads,
        reps,
        pull::Probes {
            narinfo_requests: requests,
            cold_lookups: cold_lookups(args),
        },
        pull::Source::SshNg,
        &work.join("net-pull-dest"),
    );
    results.errors.extend(unavailable);
    Ok(Some((jobs, results)))
}

/// How many fresh facades to time to their first lookup (`--cold-lookups`).
fn cold_lookups(args: &Args) -> usize {
    args.cold_lookups.unwrap_or(if args.quick { 5 } else { 20 })
}

/// A fresh client to its first answer over the link, `runs` times each: a new `n2p client`
/// process of n2p and n2p-alt to its first `nix path-info`, and ssh-ng's `nix path-info`
/// (which starts its own ssh); a daemon holding the probe path behind each, under `dir`.
fn link_startup(
    fwds: &mut [Forwarder],
    tools: &Tools,
    net: &Net,
    workloads: &Workloads,
    dir: &Path,
    runs: usize,
    scratch: &Path,
) -> Vec<connect::StartupResult> {
    let probe = &workloads.w3[0];
    let net = Net {
        quic_stats: false,
        ..net.clone()
    };
    let mut results = Vec::new();
    for fwd in fwds.iter_mut() {
        let variant = fwd.variant();
        let (n2p, congestion) = match variant {
            Variant::N2p => (Some(&tools.n2p), &tools.congestion[0]),
            Variant::N2pAlt => (tools.n2p_alt.as_ref(), &tools.congestion[1]),
            Variant::SshNg => (None, &None),
            _ => continue,
        };
        eprintln!("WAN link: {variant} start → first answer, {runs} runs");
        let dir = dir.join(variant.name());
        let result = NixDaemon::try_start_at(fwd.slot(), &dir)
            .map_err(anyhow::Error::from)
            .and_then(|daemon| {
                fwd.round_started(&dir);
                connect::seed_path(&workloads.source_url, daemon.socket_path(), probe, scratch)?;
                let result = match (n2p, fwd.n2p_address()) {
                    (Some(n2p), Some(address)) => {
                        let setup = connect::ClientSetup {
                            n2p,
                            net: &net,
                            congestion: congestion.as_deref(),
                            tool: format!("{variant} client"),
                        };
                        connect::n2p_client_startup(&setup, address, &dir, probe, runs)
                    }
                    _ => connect::forwarder_startup(fwd, &dir, probe, runs),
                };
                daemon.remove();
                Ok(result)
            });
        match result {
            Ok(r) => results.push(r),
            Err(e) => results.push(connect::StartupResult {
                tool: variant.to_string(),
                socket_ready_s: None,
                first_op_s: None,
                errors: vec![format!("{e:#}")],
            }),
        }
    }
    results
}

/// VmRSS of every long-running forwarding process.
fn record_idle_rss(fwds: &[Forwarder], when: &str, out: &mut Vec<RssSample>) {
    for fwd in fwds {
        for (process, pid) in fwd.process_labels().into_iter().zip(fwd.pids()) {
            if let Ok(bytes) = status_bytes(pid, "VmRSS") {
                out.push(RssSample {
                    variant: fwd.variant(),
                    process,
                    when: when.to_owned(),
                    bytes,
                    anon_bytes: status_bytes(pid, "RssAnon").ok(),
                });
            }
        }
    }
}

/// The n2p binary: `--n2p`, else target/release/n2p next to this binary, built first.
fn n2p_binary(args: &Args) -> Result<PathBuf> {
    if let Some(path) = &args.n2p {
        return fs::canonicalize(path).with_context(|| format!("no n2p at {}", path.display()));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the runner has no directory")?;
    if !args.no_build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        eprintln!("building n2p (cargo build --release -p n2p) …");
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "n2p"])
            .current_dir(&workspace)
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release -p n2p failed");
        }
    }
    let n2p = dir.join("n2p");
    if !n2p.is_file() {
        bail!(
            "{} not found: run `cargo build --release -p n2p` or pass --n2p",
            n2p.display()
        );
    }
    Ok(n2p)
}

/// dumbpipe: `--dumbpipe`, else one installed by `cargo install` into a scratch directory
/// under the target directory (never in the source tree), installing it when missing.
fn dumbpipe_binary(args: &Args) -> Result<PathBuf> {
    if let Some(path) = &args.dumbpipe {
        return fs::canonicalize(path)
            .with_context(|| format!("no dumbpipe at {}", path.display()));
    }
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot find the target directory")?;
    let root = target.join("n2p-bench-tools");
    let bin = root.join("bin/dumbpipe");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "installing dumbpipe into {} (cargo install; a few minutes, once) …",
        root.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The versions dumbpipe was released with first; whatever resolves today if that fails.
    let mut output = Command::new(&cargo)
        .args(["install", "dumbpipe", "--locked", "--root"])
        .arg(&root)
        .output()
        .context("running cargo install dumbpipe")?;
    if !output.status.success() {
        output = Command::new(&cargo)
            .args(["install", "dumbpipe", "--root"])
            .arg(&root)
            .output()
            .context("running cargo install dumbpipe")?;
    }
    if !output.status.success() || !bin.is_file() {
        bail!(
            "cargo install dumbpipe failed: {}",
            tail(&String::from_utf8_lossy(&output.stderr), 600).trim()
        );
    }
    Ok(bin)
}

fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass; the path is a valid C string.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut buf) == 0 && buf.f_type == libc::TMPFS_MAGIC
    }
}

fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = procfs::parse_status_kb(&meminfo, "MemTotal").unwrap_or(0);
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        mem_gib: mem_kb as f64 / (1024.0 * 1024.0),
    }
}

fn versions(tools: &Tools) -> Versions {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let rev = output_of(
        Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .current_dir(&workspace),
    )
    .unwrap_or_else(|| "unknown commit".to_owned());
    Versions {
        n2p: format!("{} ({rev})", tools.n2p.display()),
        n2p_alt: tools.n2p_alt.as_ref().map(|p| p.display().to_string()),
        nix: output_of(Command::new("nix").arg("--version")).unwrap_or_default(),
        dumbpipe: tools
            .dumbpipe
            .as_ref()
            .and_then(|d| output_of(Command::new(d).arg("--version"))),
        socat: tools.socat.as_ref().and_then(|s| {
            output_of(Command::new(s).arg("-V")).and_then(|o| {
                o.lines()
                    .find(|l| l.contains("socat version"))
                    .map(str::to_owned)
            })
        }),
    }
}
