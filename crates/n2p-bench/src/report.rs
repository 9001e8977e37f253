//! The benchmark's output: one JSON document with every sample, and a Markdown rendering of
//! it with the targets of issue 4 marked met or not met.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    connect::{ConnectResults, StartupResult},
    forwarders::Variant,
    link::Shape,
    mesh::MeshResult,
    nix::Sizes,
    pull::{PullResults, Source},
    stats::{Summary, round_differences, round_ratios},
    transfer::{JobResult, TransferResults, added_ms_per_path},
};

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// Online CPUs.
    pub(crate) nproc: usize,
    /// `model name` of /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// Kernel release.
    pub(crate) kernel: String,
    /// Total memory, GiB.
    pub(crate) mem_gib: f64,
}

/// Versions of what was measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Versions {
    /// The n2p binary and the commit it was built from.
    pub(crate) n2p: String,
    /// The `n2p-alt` binary, when given.
    pub(crate) n2p_alt: Option<String>,
    /// `nix --version`.
    pub(crate) nix: String,
    /// `dumbpipe --version`, when available.
    pub(crate) dumbpipe: Option<String>,
    /// `socat -V` first line, when installed.
    pub(crate) socat: Option<String>,
}

/// Resident memory of one forwarding process at one moment.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RssSample {
    /// The variant.
    pub(crate) variant: Variant,
    /// Which of its processes.
    pub(crate) process: String,
    /// `after start` (warm, idle) or `after transfers` (idle again).
    pub(crate) when: String,
    /// VmRSS, bytes.
    pub(crate) bytes: u64,
    /// RssAnon (heap, stacks), bytes; the rest of VmRSS is mapped files (the binary).
    pub(crate) anon_bytes: Option<u64>,
}

/// The WAN-link section.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NetemResults {
    /// The link.
    pub(crate) shape: Shape,
    /// Bytes of W1 on this link.
    pub(crate) w1_bytes: u64,
    /// Seconds W1's bytes take at the link's rate alone.
    pub(crate) w1_line_rate_s: f64,
    /// TCP congestion control of the namespaces (ssh-ng's).
    pub(crate) tcp_cc: String,
    /// TCP congestion control of socat's sockets.
    pub(crate) socat_cc: String,
    /// `N2P_CONGESTION` of n2p and n2p-alt (None: n2p's default).
    pub(crate) n2p_congestion: [Option<String>; 2],
    /// NAR bytes each copying workload moves (for its share of the link rate).
    pub(crate) nar_bytes: BTreeMap<String, u64>,
    /// The rounds (ratios against socat, the plain TCP relay).
    pub(crate) transfers: TransferResults,
    /// A fresh client process to its first answer over the link.
    pub(crate) startup: Vec<StartupResult>,
    /// Pulls P1..P3 over the link (ratios against ssh-ng), when selected.
    pub(crate) pulls: Option<PullResults>,
    /// Targets of issue 10 on this link, evaluated.
    pub(crate) targets: Vec<Target>,
}

impl NetemResults {
    /// `job`'s NAR bytes over `variant`'s median time, as a share of the link rate.
    fn link_share<V: Copy + PartialEq>(&self, job: &JobResult<V>, variant: V) -> Option<f64> {
        let bytes = *self.nar_bytes.get(&job.workload)?;
        let secs = job.of(variant)?.time?.median;
        Some(bytes as f64 * 8.0 / secs / (f64::from(self.shape.rate_mbit) * 1e6))
    }
}

/// Median of the per-round ratios of `variant`'s time to `ssh`'s in `job`.
fn ratio_to<V: Copy + PartialEq>(job: &JobResult<V>, variant: V, ssh: V) -> Option<Summary> {
    let ssh = job.of(ssh)?;
    Summary::of(&round_ratios(&job.of(variant)?.times_s, &ssh.times_s))
}

/// One target of issue 4 point 4.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    /// What is measured.
    pub(crate) name: String,
    /// The goal.
    pub(crate) goal: String,
    /// The measured figure.
    pub(crate) measured: String,
    /// Met, not met, or not measured (None).
    pub(crate) met: Option<bool>,
}

/// Everything one run produced.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// UTC date and time of the start.
    pub(crate) date: String,
    /// The command line.
    pub(crate) command: String,
    /// Wall time of the whole run, seconds.
    pub(crate) duration_s: f64,
    /// The machine.
    pub(crate) machine: Machine,
    /// Versions.
    pub(crate) versions: Versions,
    /// A smoke run with small sizes.
    pub(crate) quick: bool,
    /// Rounds of the transfer benchmark.
    pub(crate) reps: usize,
    /// Workload sizes.
    pub(crate) sizes: Sizes,
    /// Where the stores lived, and whether that is tmpfs.
    pub(crate) work_dir: String,
    /// Whether the work dir is on tmpfs.
    pub(crate) work_dir_is_tmpfs: bool,
    /// Variants or sections not measured, and why.
    pub(crate) unavailable: Vec<String>,
    /// Transfers W1..W5.
    pub(crate) transfers: Option<TransferResults>,
    /// Idle memory of the forwarders.
    pub(crate) idle_rss: Vec<RssSample>,
    /// New connections on a warm tunnel.
    pub(crate) connect: Option<ConnectResults>,
    /// Client start-up.
    pub(crate) startup: Vec<StartupResult>,
    /// Mesh convergence and expiry.
    pub(crate) mesh: Vec<MeshResult>,
    /// The mesh team's `expiry_secs` (None: n2p's default).
    pub(crate) mesh_expiry_secs: Option<u64>,
    /// The emulated WAN link.
    pub(crate) netem: Option<NetemResults>,
    /// Targets of issue 4, evaluated.
    pub(crate) targets: Vec<Target>,
    /// Pulls P1..P3 and the facade's narinfo latency.
    pub(crate) pulls: Option<PullResults>,
    /// Targets of issue 7 (pulls), evaluated.
    pub(crate) pull_targets: Vec<Target>,
}

const MB: f64 = 1e6;

fn secs(s: &Summary) -> String {
    format!(
        "{} [{}–{}]",
        fmt_secs(s.median),
        fmt_secs(s.min),
        fmt_secs(s.max)
    )
}

fn fmt_secs(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.1}")
    }
}

fn ratio(s: &Summary) -> String {
    format!("{:.2}× [{:.2}–{:.2}]", s.median, s.min, s.max)
}

fn ms(s: &Summary) -> String {
    format!("{:.2} [{:.2}–{:.2}]", s.median, s.min, s.max)
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / MB)
}

fn opt<T>(x: Option<T>, f: impl Fn(T) -> String) -> String {
    x.map(f).unwrap_or_else(|| "–".to_owned())
}

/// Evaluates the targets of issue 4 point 4 against `r`.
pub(crate) fn evaluate_targets(r: &Report) -> Vec<Target> {
    let mut targets = Vec::new();
    let mut push = |name: &str, goal: &str, measured: String, met: Option<bool>| {
        targets.push(Target {
            name: name.to_owned(),
            goal: goal.to_owned(),
            measured,
            met,
        });
    };
    let t = r.transfers.as_ref();
    let ratio_of = |w: &str, v: Variant| {
        t.and_then(|t| t.job(w))
            .and_then(|j| j.of(v))
            .and_then(|x| x.ratio)
            .map(|s| s.median)
    };
    for (w, limit, what) in [
        ("W1", 1.6, "W1 (256 MiB file) time vs direct"),
        ("W2", 1.15, "W2 (5,000 small files) time vs direct"),
        ("W3", 1.1, "W3 (200 paths, one copy) time vs direct"),
        ("W4", 1.4, "W4 (200 round trips) time vs direct"),
        ("W5", 1.5, "W5 (machine closure) time vs direct"),
    ] {
        let n2p = ratio_of(w, Variant::N2p);
        let mesh = ratio_of(w, Variant::Mesh);
        push(
            what,
            &format!("≤ {limit}×"),
            format!(
                "n2p {} (mesh {})",
                opt(n2p, |x| format!("{x:.2}×")),
                opt(mesh, |x| format!("{x:.2}×"))
            ),
            n2p.map(|x| x <= limit),
        );
    }
    let w4_added = t
        .and_then(|t| t.job("W4"))
        .and_then(|j| added_ms_per_path(j, Variant::N2p, Variant::Direct));
    push(
        "W4 time added per round trip",
        "≤ 0.15 ms",
        opt(w4_added, |x| format!("n2p {x:.3} ms")),
        w4_added.map(|x| x <= 0.15),
    );
    let w1_cpu = t
        .and_then(|t| t.job("W1"))
        .and_then(|j| j.of(Variant::N2p))
        .and_then(|x| x.cpu)
        .map(|s| s.median * (256u64 << 20) as f64 / r.sizes.w1_bytes as f64);
    push(
        "W1 forwarder CPU (n2p client + server, user+sys) per 256 MiB",
        "≤ 1.5 s",
        opt(w1_cpu, |x| format!("{x:.2} s")),
        w1_cpu.map(|x| x <= 1.5),
    );
    let startup = r
        .startup
        .iter()
        .find(|s| s.tool == "n2p client")
        .and_then(|s| s.first_op_s);
    push(
        "`n2p client` start → first successful `nix path-info`",
        "≤ 0.2 s",
        opt(startup, |s| format!("{:.3} s", s.median)),
        startup.map(|s| s.median <= 0.2),
    );
    let conn = r.connect.as_ref();
    let raw = |v| conn.and_then(|c| c.of(v)).and_then(|c| c.raw_ms);
    let n2p_raw = raw(Variant::N2p);
    push(
        "new daemon connection on a warm tunnel (connect + handshake + 1 query)",
        "≤ 10 ms",
        format!(
            "n2p {} ms (direct {} ms, mesh {} ms)",
            opt(n2p_raw, |s| format!("{:.2}", s.median)),
            opt(raw(Variant::Direct), |s| format!("{:.2}", s.median)),
            opt(raw(Variant::Mesh), |s| format!("{:.2}", s.median)),
        ),
        n2p_raw.map(|s| s.median <= 10.0),
    );
    for (when, what) in [
        (
            "after start",
            "idle RSS of n2p processes (server, client, 2-node mesh), warm, before any transfer",
        ),
        (
            "after transfers",
            "idle RSS of the same processes, idle again after the transfers",
        ),
    ] {
        let worst = r
            .idle_rss
            .iter()
            .filter(|s| s.variant.is_n2p() && s.when == when)
            .map(|s| s.bytes)
            .max();
        push(
            what,
            "≤ 20 MB",
            opt(worst, |b| format!("max {}", mb(b as f64))),
            worst.map(|b| b as f64 <= 20.0 * MB),
        );
    }
    for m in &r.mesh {
        let worst = m.idle_rss_bytes.map(|s| s.max);
        push(
            &format!("idle RSS per node in the {}-node mesh", m.n),
            "≤ 20 MB",
            opt(m.idle_rss_bytes, |s| {
                format!("median {}, max {}", mb(s.median), mb(s.max))
            }),
            worst.map(|b| b <= 20.0 * MB),
        );
    }
    let peak = t.and_then(|t| {
        t.w1_peak_rss
            .iter()
            .filter(|p| p.variant.is_n2p())
            .flat_map(|p| p.bytes.iter().copied())
            .max()
    });
    push(
        "peak RSS of an n2p process during W1",
        "≤ 64 MB",
        opt(peak, |b| format!("max {}", mb(b as f64))),
        peak.map(|b| b as f64 <= 64.0 * MB),
    );
    let mesh32 = r.mesh.iter().find(|m| m.n == 32);
    let conv = mesh32.and_then(|m| m.converge_s);
    push(
        "mesh: 32 nodes on loopback all see each other's sockets (from the first start)",
        "≤ 2 s",
        opt(conv, |s| format!("{:.2} s", s.median)),
        conv.map(|s| s.median <= 2.0),
    );
    let gone = r
        .mesh
        .iter()
        .max_by_key(|m| m.n)
        .and_then(|m| m.killed_all_gone_s.map(|s| (m.n, s)));
    push(
        "mesh: a SIGKILLed node's socket gone on all others",
        "≤ 8 s",
        opt(gone, |(n, s)| format!("{:.2} s (N = {n})", s.median)),
        gone.map(|(_, s)| s.median <= 8.0),
    );
    targets
}

/// Evaluates the targets of issue 10 on one link: n2p faster than ssh-ng in every workload
/// (pushes, `ping`, pulls), W1 at ≥ 90 % of the link rate without loss and ≥ 80 % with
/// 0.5 % loss, and a warm `nix store ping` within 1.5 RTT above the same command on the
/// daemon's own socket (with `direct` measured; else its wall time).
pub(crate) fn evaluate_link_targets(n: &NetemResults) -> Vec<Target> {
    let mut targets = Vec::new();
    let faster = |job: String, r: Option<Summary>| Target {
        name: format!("{job}: n2p time / ssh-ng time"),
        goal: "< 1.00×".to_owned(),
        measured: opt(r, |s| ratio(&s)),
        met: r.map(|s| s.median < 1.0),
    };
    for j in &n.transfers.jobs {
        targets.push(faster(
            j.workload.clone(),
            ratio_to(j, Variant::N2p, Variant::SshNg),
        ));
    }
    for j in n.pulls.iter().flat_map(|p| &p.jobs) {
        targets.push(faster(
            j.workload.clone(),
            ratio_to(j, Source::N2p, Source::SshNg),
        ));
    }
    let loss = n.shape.loss_percent;
    let goal = if loss == 0.0 {
        Some(0.9)
    } else if loss == 0.5 {
        Some(0.8)
    } else {
        None
    };
    if let (Some(goal), Some(w1)) = (goal, n.transfers.job("W1")) {
        let share = n.link_share(w1, Variant::N2p);
        targets.push(Target {
            name: format!(
                "W1 ({} MiB) through n2p: NAR bytes / time, share of the link rate",
                n.w1_bytes >> 20
            ),
            goal: format!("≥ {:.0} %", goal * 100.0),
            measured: opt(share, |x| format!("{:.0} %", x * 100.0)),
            met: share.map(|x| x >= goal),
        });
    }
    let rtt_s = f64::from(n.shape.rtt_ms) / 1000.0;
    let ping = n.transfers.job("ping");
    let over_local = ping.and_then(|j| {
        let local = j.of(Variant::Direct)?;
        Summary::of(&round_differences(
            &j.of(Variant::N2p)?.times_s,
            &local.times_s,
        ))
    });
    targets.push(match over_local {
        // The nix command's own cost (start-up, store open) is the same on a local daemon
        // socket: what the link and n2p add is the time above it.
        Some(added) => Target {
            name: "warm `nix store ping` through n2p, time above the same command on the daemon's own socket".to_owned(),
            goal: format!("≤ 1.5 RTT = {:.3} s", 1.5 * rtt_s),
            measured: format!("{:.3} s ({:.1} RTT)", added.median, added.median / rtt_s),
            met: Some(added.median <= 1.5 * rtt_s),
        },
        None => {
            let wall = ping.and_then(|j| j.of(Variant::N2p)).and_then(|v| v.time);
            Target {
                name: "warm `nix store ping` through n2p (wall time of the nix command; `direct` not measured)".to_owned(),
                goal: format!("≤ 1.5 RTT = {:.3} s", 1.5 * rtt_s),
                measured: opt(wall, |s| format!("{:.3} s", s.median)),
                met: wall.map(|s| s.median <= 1.5 * rtt_s),
            }
        }
    });
    targets
}

/// Evaluates the pull targets of issue 7 point 6 against `p`.
pub(crate) fn evaluate_pull_targets(p: &PullResults) -> Vec<Target> {
    let mut targets = Vec::new();
    let ssh_measured = p
        .jobs
        .first()
        .is_some_and(|j| j.of(Source::SshNg).is_some());
    for job in &p.jobs {
        let vs_ssh = p.round_ratio(&job.workload, Source::N2p, Source::SshNg);
        targets.push(Target {
            name: format!(
                "{} ({}): n2p facade vs ssh-ng",
                job.workload, job.description
            ),
            goal: "faster (< 1×)".to_owned(),
            measured: if ssh_measured {
                opt(vs_ssh, |x| format!("{x:.2}× ssh-ng's time"))
            } else {
                "SKIPPED (no OpenSSH)".to_owned()
            },
            met: vs_ssh.map(|x| x < 1.0),
        });
    }
    let p1_file = p
        .job("P1")
        .and_then(|j| j.of(Source::N2p))
        .and_then(|v| v.ratio)
        .map(|s| s.median);
    targets.push(Target {
        name: "P1 through the facade vs the file:// cache".to_owned(),
        goal: "≤ 1.5×".to_owned(),
        measured: opt(p1_file, |x| format!("{x:.2}×")),
        met: p1_file.map(|x| x <= 1.5),
    });
    let narinfo = p.narinfo.as_ref();
    for (what, summary) in [
        (
            "narinfo hit through the facade",
            narinfo.and_then(|n| n.hit_ms),
        ),
        (
            "narinfo miss through the facade (the peer live)",
            narinfo.and_then(|n| n.miss_ms),
        ),
    ] {
        targets.push(Target {
            name: format!(
                "{what}, median of {} requests",
                narinfo.map_or(0, |n| n.requests)
            ),
            goal: "≤ 5 ms".to_owned(),
            measured: opt(summary, |s| format!("{:.2} ms", s.median)),
            met: summary.map(|s| s.median <= 5.0),
        });
    }
    let facade_peak = p
        .p1_peak_rss
        .iter()
        .find(|x| x.process.contains("facade"))
        .and_then(|x| x.bytes.iter().max().copied());
    targets.push(Target {
        name: "facade process (n2p client --cache) peak RSS during P1".to_owned(),
        goal: "≤ 64 MB".to_owned(),
        measured: opt(facade_peak, |b| format!("max {}", mb(b as f64))),
        met: facade_peak.map(|b| b as f64 <= 64.0 * MB),
    });
    targets
}

fn targets_table(out: &mut String, title: &str, targets: &[Target]) {
    let _ = writeln!(out, "### {title}\n");
    let _ = writeln!(out, "| target | goal | measured | |");
    let _ = writeln!(out, "|---|---|---|---|");
    for t in targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            t.name,
            t.goal,
            t.measured,
            match t.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            }
        );
    }
    out.push('\n');
}

/// The pull tables of `p` under the heading `title`, `sources` saying what was measured.
fn pull_markdown(out: &mut String, p: &PullResults, title: &str, sources: &str) {
    let _ = writeln!(out, "### {title}\n");
    let _ = writeln!(
        out,
        "{sources} Load average (1 min) at the start of each round and at the end: {}.\n",
        p.load
            .iter()
            .map(|l| format!("{l:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    job_tables(
        out,
        &p.jobs,
        p.reps,
        p.baseline.name(),
        "CPU of the serving processes (n2p: server + client + source daemon; ssh-ng: sshd, its sessions and the remote nix-daemon; http: the Python server), user+sys",
        |s| matches!(s, Source::File | Source::Local),
    );
    let _ = writeln!(
        out,
        "n2p time / ssh-ng time, median of the per-round ratios: {}.\n",
        p.jobs
            .iter()
            .map(|j| format!(
                "{} {}",
                j.workload,
                opt(
                    p.round_ratio(&j.workload, Source::N2p, Source::SshNg),
                    |x| { format!("{x:.2}×") }
                )
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let (Some(http_file), Some(n2p_http)) = (
        p.round_ratio("P1", Source::Http, Source::File),
        p.round_ratio("P1", Source::N2p, Source::Http),
    ) {
        let _ = writeln!(
            out,
            "For scale, P1 from a stock static HTTP server (`python3 -m http.server` on the \
             file:// cache's directory) took {http_file:.2}× the file:// time; n2p took \
             {n2p_http:.2}× the static server's (medians of the per-round ratios).\n"
        );
    }
    if let Some(n) = &p.narinfo {
        let _ = writeln!(
            out,
            "Facade latency (new TCP connection per request, ms: median [min–max], {} \
             requests each, interleaved): narinfo hit {}, narinfo miss {}; for comparison \
             `/nix-cache-info` (HTTP only, no peer asked) {} and a new connection to the \
             source's nix-daemon + handshake + one query, made directly {}. {} answers with an \
             unexpected status.\n",
            n.requests,
            opt(n.hit_ms, |s| ms(&s)),
            opt(n.miss_ms, |s| ms(&s)),
            opt(n.cache_info_ms, |s| ms(&s)),
            opt(n.daemon_connection_ms, |s| ms(&s)),
            n.wrong_status
        );
    }
    if let Some(c) = &p.cold {
        let _ = writeln!(
            out,
            "First lookup through a facade that has just started (a fresh `n2p client \
             --cache` per run; the lookup dials its store connection), ms: {} over {} runs; \
             {} not answered 200{}.\n",
            opt(c.ms, |s| ms(&s)),
            c.runs,
            c.not_answered_ms.len(),
            if c.not_answered_ms.is_empty() {
                String::new()
            } else {
                format!(
                    " (after {} ms)",
                    c.not_answered_ms
                        .iter()
                        .map(|t| format!("{t:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    if let Some(c) = p.cold.as_ref().filter(|c| c.reconnect_ms.is_some()) {
        let _ = writeln!(
            out,
            "Second lookup through each of those facades, on its store connection made again \
             after an idle close (the session resumed), ms: {} over {} runs; {} not answered \
             200.\n",
            opt(c.reconnect_ms, |s| ms(&s)),
            c.runs,
            c.reconnect_not_answered_ms.len(),
        );
    }
    for peak in &p.p1_peak_rss {
        let _ = writeln!(
            out,
            "- peak RSS (VmHWM) of the {} during P1: {}",
            peak.process,
            peak.bytes
                .iter()
                .map(|b| mb(*b as f64))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out.push('\n');
    for e in &p.errors {
        let _ = writeln!(out, "- failure: {}", e.replace('\n', " "));
    }
}

/// Renders `r` as Markdown.
pub(crate) fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(out, "## Results of {}\n", r.date);
    let _ = writeln!(
        out,
        "- Machine: {} CPUs ({}), kernel {}, {:.0} GiB RAM",
        m.nproc, m.cpu_model, m.kernel, m.mem_gib
    );
    let _ = writeln!(out, "- Command: `{}`", r.command);
    let _ = writeln!(
        out,
        "- {} rounds{}, whole run {:.0} s; stores in {} ({})",
        r.pulls
            .as_ref()
            .filter(|_| r.transfers.is_none())
            .map_or(r.reps, |p| p.reps),
        if r.quick {
            ", QUICK (small sizes: indicative only)"
        } else {
            ""
        },
        r.duration_s,
        r.work_dir,
        if r.work_dir_is_tmpfs {
            "tmpfs"
        } else {
            "NOT tmpfs"
        }
    );
    let v = &r.versions;
    if let Some(alt) = &v.n2p_alt {
        let _ = writeln!(out, "- n2p-alt: {alt}");
    }
    let _ = writeln!(
        out,
        "- n2p {}; {}; dumbpipe {}; socat {}",
        v.n2p,
        v.nix,
        v.dumbpipe.as_deref().unwrap_or("unavailable"),
        v.socat.as_deref().unwrap_or("unavailable")
    );
    for note in &r.unavailable {
        let _ = writeln!(out, "- Not measured: {note}");
    }
    out.push('\n');

    if let Some(t) = &r.transfers {
        transfer_tables(&mut out, t, "direct");
        if let Some(w4) = t.job("W4") {
            let added: Vec<String> = w4
                .variants
                .iter()
                .filter(|v| v.variant != Variant::Direct)
                .filter_map(|v| {
                    added_ms_per_path(w4, v.variant, Variant::Direct)
                        .map(|ms| format!("{} {ms:.3} ms", v.variant))
                })
                .collect();
            let _ = writeln!(
                out,
                "W4 time added per round trip (median over rounds): {}.\n",
                added.join(", ")
            );
        }
        if !t.w1_peak_rss.is_empty() {
            let _ = writeln!(out, "### Memory of the forwarding processes\n");
            let _ = writeln!(
                out,
                "| variant | process | idle after start | peak during W1 (max over rounds) | idle after transfers |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|");
            for p in &t.w1_peak_rss {
                let idle = |when: &str| {
                    r.idle_rss
                        .iter()
                        .find(|s| {
                            s.variant == p.variant && s.process == p.process && s.when == when
                        })
                        .map(|s| match s.anon_bytes {
                            Some(anon) => {
                                format!("{} (anon {})", mb(s.bytes as f64), mb(anon as f64))
                            }
                            None => mb(s.bytes as f64),
                        })
                        .unwrap_or_else(|| "–".to_owned())
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    p.variant,
                    p.process,
                    idle("after start"),
                    opt(p.bytes.iter().max(), |b| mb(*b as f64)),
                    idle("after transfers"),
                );
            }
            out.push('\n');
        }
        if !t.errors.is_empty() {
            let _ = writeln!(out, "Failures during the transfers:\n");
            for e in &t.errors {
                let _ = writeln!(out, "- {}", e.replace('\n', " "));
            }
            out.push('\n');
        }
    }

    if let Some(c) = &r.connect {
        let _ = writeln!(
            out,
            "### New daemon connection on a warm tunnel ({} connections each, interleaved)\n",
            c.calls
        );
        let _ = writeln!(
            out,
            "Raw: connect + worker-protocol handshake + one QueryValidPaths, timed in the runner. \
             nix: one whole `nix path-info` process (start-up included).\n"
        );
        let _ = writeln!(
            out,
            "| variant | raw, ms: median [min–max] | raw added vs direct | `nix path-info`, ms: median [min–max] | nix added vs direct |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        let direct = c.of(Variant::Direct);
        for v in &c.variants {
            let added = |x: Option<Summary>, d: Option<Summary>| match (x, d) {
                (Some(x), Some(d)) => format!("{:+.2} ms", x.median - d.median),
                _ => "–".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                v.variant,
                opt(v.raw_ms, |s| ms(&s)),
                added(v.raw_ms, direct.and_then(|d| d.raw_ms)),
                opt(v.nix_ms, |s| ms(&s)),
                added(v.nix_ms, direct.and_then(|d| d.nix_ms)),
            );
        }
        let _ = writeln!(
            out,
            "\ndumbpipe: not measured (its connector carries one connection per process).\n"
        );
        for e in &c.errors {
            let _ = writeln!(out, "- failure: {}", e.replace('\n', " "));
        }
    }

    startup_table(
        &mut out,
        "Client start → first successful `nix path-info`",
        &r.startup,
    );

    if !r.mesh.is_empty() {
        let expiry = r.mesh_expiry_secs.map_or_else(
            || "default expiry".to_owned(),
            |secs| format!("expiry_secs = {secs}: an announcement every {} s", secs / 3),
        );
        let _ = writeln!(out, "### Mesh on loopback (relays disabled, {expiry})\n");
        let _ = writeln!(
            out,
            "| nodes | all see all N−1 sockets, from first start, s | from last start, s | SIGKILLed node's socket gone everywhere, s | idle RSS per node: median / max (anon median) | RSS {} s later: median / max | idle CPU per node, % of a core: median / max | open connections per node: median / max (gossip median) | rounds |",
            crate::mesh::IDLE_CPU_WINDOW.as_secs()
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for mr in &r.mesh {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                mr.n,
                opt(mr.converge_s, |s| secs(&s)),
                opt(mr.converge_after_last_start_s, |s| secs(&s)),
                opt(mr.killed_all_gone_s, |s| secs(&s)),
                opt(mr.idle_rss_bytes, |s| format!(
                    "{} / {} ({})",
                    mb(s.median),
                    mb(s.max),
                    opt(mr.idle_rss_anon_bytes, |a| mb(a.median))
                )),
                opt(mr.idle_rss_late_bytes, |s| format!(
                    "{} / {}",
                    mb(s.median),
                    mb(s.max)
                )),
                opt(mr.idle_cpu_percent, |s| format!(
                    "{:.2} / {:.2}",
                    s.median, s.max
                )),
                opt(mr.connections, |s| format!(
                    "{:.0} / {:.0} ({})",
                    s.median,
                    s.max,
                    opt(mr.gossip_connections, |g| format!("{:.0}", g.median))
                )),
                mr.rounds.len()
            );
        }
        out.push('\n');
    }

    if let Some(n) = &r.netem {
        let _ = writeln!(
            out,
            "### Emulated WAN link: {} ms RTT, {} Mbit/s, {} % random loss (two network namespaces joined by n2p-bench's link emulator)\n",
            n.shape.rtt_ms, n.shape.rate_mbit, n.shape.loss_percent
        );
        let _ = writeln!(
            out,
            "W1 here is {} MiB: {:.2} s at line rate alone. Ratios are against socat (plain TCP).\n",
            n.w1_bytes >> 20,
            n.w1_line_rate_s
        );
        let cc = |c: &Option<String>| c.clone().unwrap_or_else(|| "n2p's default".to_owned());
        let _ = writeln!(
            out,
            "Congestion control: n2p {}, n2p-alt {}; TCP in the namespaces (ssh-ng) {}, socat's sockets {}.\n",
            cc(&n.n2p_congestion[0]),
            cc(&n.n2p_congestion[1]),
            n.tcp_cc,
            n.socat_cc
        );
        transfer_tables(&mut out, &n.transfers, "socat");
        link_table(&mut out, n, &n.transfers.jobs, Variant::SshNg);
        startup_table(
            &mut out,
            "A fresh client process → first successful `nix path-info` over the link",
            &n.startup,
        );
        quic_table(&mut out, &n.transfers.quic);
        for e in &n.transfers.errors {
            let _ = writeln!(out, "- failure: {}", e.replace('\n', " "));
        }
        if let Some(p) = &n.pulls {
            pull_markdown(
                &mut out,
                p,
                "Pulls over the link: `nix copy --from <source> --to <fresh daemon>`",
                "Sources: `n2p` = `http://` facade of `n2p client --cache` (the `n2p` variant's \
                 binary and congestion control) in the near namespace → `n2p server` across the link → nix-daemon on the source store; \
                 `ssh-ng` = OpenSSH in the far namespace, `remote-store=local?root=`. nix runs \
                 in the near namespace; destination: a fresh nix-daemon on a fresh chroot store \
                 per round and source.",
            );
            link_table(&mut out, n, &p.jobs, Source::SshNg);
        }
        targets_table(&mut out, "Targets on this link (issue 10)", &n.targets);
    }

    if let Some(p) = &r.pulls {
        pull_markdown(
            &mut out,
            p,
            "Pulls: `nix copy --from <source> --to <fresh daemon>`",
            "Sources: `n2p` = `http://` facade of `n2p client --cache` → `n2p server` → \
             nix-daemon on the source store; `file` = `file://` binary cache, compression=none; \
             `http` = that cache's directory served by `python3 -m http.server`; \
             `ssh-ng` = OpenSSH on loopback, `remote-store=local?root=`; `local` = `local?root=` \
             of the source store. Destination: a fresh nix-daemon on a fresh chroot store per \
             round and source.",
        );
    }

    let issue4_measured =
        r.transfers.is_some() || r.connect.is_some() || !r.startup.is_empty() || !r.mesh.is_empty();
    if issue4_measured && !r.targets.is_empty() {
        targets_table(&mut out, "Targets (issue 4, point 4)", &r.targets);
    }
    if !r.pull_targets.is_empty() {
        targets_table(&mut out, "Pull targets (issue 7, point 6)", &r.pull_targets);
    }
    out
}

/// The start-up rows `rows` under the heading `title` (nothing when empty).
fn startup_table(out: &mut String, title: &str, rows: &[StartupResult]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "### {title}\n");
    let _ = writeln!(
        out,
        "| client | socket ready, s | first nix operation done, s | runs |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for s in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            s.tool,
            opt(s.socket_ready_s, |x| secs(&x)),
            opt(s.first_op_s, |x| secs(&x)),
            s.first_op_s.map(|x| x.n).unwrap_or(0)
        );
        for e in &s.errors {
            let _ = writeln!(out, "\n- {} failure: {}", s.tool, e.replace('\n', " "));
        }
    }
    out.push('\n');
}

/// Per workload and variant (or source) of `jobs` on the emulated link: the ratio to `ssh`
/// (ssh-ng) and the NAR bytes moved per second as a share of the link rate.
fn link_table<V: Copy + PartialEq + std::fmt::Display>(
    out: &mut String,
    n: &NetemResults,
    jobs: &[JobResult<V>],
    ssh: V,
) {
    let Some(first) = jobs.first() else {
        return;
    };
    let variants: Vec<V> = first.variants.iter().map(|v| v.variant).collect();
    let _ = writeln!(
        out,
        "### Against ssh-ng and the link rate: time / ssh-ng's time (median [min–max] of the \
         per-round ratios) · NAR bytes / median time as a share of {} Mbit/s (IP packets, \
         headers included, count against the rate)\n",
        n.shape.rate_mbit
    );
    let _ = write!(out, "| workload |");
    for v in &variants {
        let _ = write!(out, " {v} |");
    }
    let _ = writeln!(out, "\n|---|{}", "---|".repeat(variants.len()));
    for j in jobs {
        let _ = write!(out, "| {} |", j.workload);
        for v in &variants {
            let share = n
                .link_share(j, *v)
                .map(|x| format!(" · {:.0} %", x * 100.0))
                .unwrap_or_default();
            let _ = write!(
                out,
                " {}{share} |",
                opt(ratio_to(j, *v, ssh), |s| ratio(&s))
            );
        }
        out.push('\n');
    }
    out.push('\n');
}

/// The n2p clients' QUIC counters per workload and variant: medians over rounds.
fn quic_table(out: &mut String, rows: &[crate::transfer::QuicRow]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### QUIC connection of the n2p client (the sender), median over rounds [min–max]\n"
    );
    let _ = writeln!(
        out,
        "| workload | variant | rounds | packets sent | lost packets | lost % | congestion events | spurious | cwnd min / median / max KB | RTT max ms | MTU | black holes |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let col = |f: fn(&crate::quic_stats::QuicSample) -> f64, digits: usize| {
            let v: Vec<f64> = r.rounds.iter().map(|(_, q)| f(q)).collect();
            opt(Summary::of(&v), |s| {
                format!("{:.d$} [{:.d$}–{:.d$}]", s.median, s.min, s.max, d = digits)
            })
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} |",
            r.workload,
            r.variant,
            r.rounds.len(),
            col(|q| q.sent_packets as f64, 0),
            col(|q| q.lost_packets as f64, 0),
            col(|q| q.loss_percent, 2),
            col(|q| q.congestion_events as f64, 0),
            col(|q| q.spurious_congestion_events as f64, 0),
            col(|q| q.cwnd_min as f64 / 1e3, 0),
            col(|q| q.cwnd_median as f64 / 1e3, 0),
            col(|q| q.cwnd_max as f64 / 1e3, 0),
            col(|q| q.rtt_ms_max, 1),
            col(|q| q.mtu as f64, 0),
            col(|q| q.black_holes as f64, 0),
        );
    }
    out.push('\n');
}

fn transfer_tables(out: &mut String, t: &TransferResults, baseline: &str) {
    job_tables(
        out,
        &t.jobs,
        t.reps,
        baseline,
        "CPU of the forwarding processes (user+sys)",
        |v| v == Variant::Direct,
    );
}

/// The time, ratio and CPU tables of `jobs` (one column per variant); `no_cpu` marks the
/// variants without processes of their own, whose CPU cell stays empty.
fn job_tables<V: Copy + PartialEq + std::fmt::Display>(
    out: &mut String,
    jobs: &[JobResult<V>],
    reps: usize,
    baseline: &str,
    cpu_title: &str,
    no_cpu: impl Fn(V) -> bool,
) {
    let variants: Vec<V> = jobs
        .first()
        .map(|j| j.variants.iter().map(|v| v.variant).collect())
        .unwrap_or_default();
    let header = |out: &mut String, first: &str| {
        let _ = write!(out, "| {first} |");
        for v in &variants {
            let _ = write!(out, " {v} |");
        }
        let _ = write!(out, "\n|---|");
        for _ in &variants {
            let _ = write!(out, "---|");
        }
        out.push('\n');
    };
    let _ = writeln!(
        out,
        "### Wall time of the nix command, s: median [min–max] over {reps} rounds\n"
    );
    header(out, "workload");
    for j in jobs {
        let _ = write!(out, "| {}: {} |", j.workload, j.description);
        for v in &j.variants {
            let _ = write!(out, " {} |", opt(v.time, |s| secs(&s)));
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\n### Ratio to {baseline}: median [min–max] of the per-round ratios\n"
    );
    header(out, "workload");
    for j in jobs {
        let _ = write!(out, "| {} |", j.workload);
        for v in &j.variants {
            let _ = write!(out, " {} |", opt(v.ratio, |s| ratio(&s)));
        }
        out.push('\n');
    }
    let _ = writeln!(out, "\n### {cpu_title}, s: median [min–max]\n");
    header(out, "workload");
    for j in jobs {
        let _ = write!(out, "| {} |", j.workload);
        for v in &j.variants {
            let cell = if no_cpu(v.variant) {
                "–".to_owned()
            } else {
                opt(v.cpu, |s| secs(&s))
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_compact() {
        let s = Summary::of(&[1.0, 1.5, 2.0]).expect("samples");
        assert_eq!(secs(&s), "1.500 [1.000–2.000]");
        assert_eq!(ratio(&s), "1.50× [1.00–2.00]");
        assert_eq!(fmt_secs(12.345), "12.3");
        assert_eq!(mb(20e6), "20.0 MB");
        assert_eq!(opt(None::<f64>, |x| x.to_string()), "–");
    }

    /// One job with two rounds of n2p and ssh-ng times.
    fn job(name: &str, n2p: [f64; 2], ssh: [f64; 2]) -> JobResult {
        let row = |variant, t: [f64; 2]| crate::transfer::VariantResult {
            variant,
            times_s: t.iter().copied().map(Some).collect(),
            cpu_s: Vec::new(),
            time: Summary::of(&t),
            ratio: None,
            cpu: None,
        };
        JobResult {
            workload: name.to_owned(),
            description: String::new(),
            paths: 1,
            variants: vec![row(Variant::N2p, n2p), row(Variant::SshNg, ssh)],
        }
    }

    #[test]
    fn link_targets_take_ratios_per_round_and_the_rate_share_of_w1() {
        let shape = Shape::new(30, 100);
        let mut n = NetemResults {
            shape,
            w1_bytes: 64 << 20,
            w1_line_rate_s: 0.0,
            tcp_cc: String::new(),
            socat_cc: String::new(),
            n2p_congestion: [None, None],
            // 100 Mbit/s for 8 s: 100 MB.
            nar_bytes: [("W1".to_owned(), 90_000_000)].into_iter().collect(),
            transfers: TransferResults {
                baseline: Variant::SshNg,
                reps: 2,
                orders: Vec::new(),
                jobs: vec![
                    job("W1", [8.0, 8.0], [10.0, 7.0]),
                    job("ping", [0.04, 0.044], [0.8, 0.9]),
                ],
                quic: Vec::new(),
                w1_peak_rss: Vec::new(),
                errors: Vec::new(),
            },
            startup: Vec::new(),
            pulls: None,
            targets: Vec::new(),
        };
        let t = evaluate_link_targets(&n);
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        // Per-round ratios 0.8 and 1.14: median 0.97, faster.
        assert_eq!(t[0].met, Some(true), "{:?}", t[0]);
        assert_eq!(t[1].met, Some(true));
        // 90 MB in 8 s at 100 Mbit/s: 90 % of the rate.
        assert_eq!(t[2].measured, "90 %");
        assert_eq!(t[2].met, Some(true));
        // 1.5 RTT = 45 ms; the median ping took 42 ms (no `direct`: wall time).
        assert_eq!(t[3].met, Some(true), "{:?}", t[3]);
        // With the same command on the daemon's own socket: 90 ms and 100 ms over 40 ms
        // and 44 ms locally are 50 and 56 ms above it, more than 1.5 RTT; 70 ms is 30 ms.
        let ping = |n2p: [f64; 2]| {
            let mut j = job("ping", n2p, [0.8, 0.9]);
            let mut direct = j.variants[0].clone();
            direct.variant = Variant::Direct;
            direct.times_s = vec![Some(0.04), Some(0.044)];
            j.variants.push(direct);
            j
        };
        n.transfers.jobs[1] = ping([0.09, 0.1]);
        let slow = &evaluate_link_targets(&n)[3];
        assert_eq!(slow.met, Some(false), "{slow:?}");
        assert!(slow.measured.starts_with("0.053 s"), "{slow:?}");
        n.transfers.jobs[1] = ping([0.07, 0.074]);
        assert_eq!(evaluate_link_targets(&n)[3].met, Some(true));
        n.shape.loss_percent = 2.0;
        assert_eq!(
            evaluate_link_targets(&n).len(),
            3,
            "no rate goal at 2 % loss"
        );
    }
}
