//! The interleaved transfer measurements: every round starts a fresh nix-daemon (new store on
//! tmpfs) behind each forwarder, then runs each workload through every variant in turn
//! (the variant order rotating from round to round), timing the nix command and accounting
//! the forwarders' CPU time and, during W1, their peak memory.

use std::{collections::BTreeMap, fmt, path::Path, process::Command, time::Duration};

use anyhow::Result;
use n2p_testkit::{
    netns::command_in,
    nix::{NIX_CONFIG, NixDaemon},
    proc::try_run_timed,
    wait::{MEASURING_POLL_INTERVAL, time_until},
};
use serde::Serialize;

use crate::{
    forwarders::{Forwarder, Variant},
    nix::{NIX_TIMEOUT, Workloads},
    procfs::{cpu_seconds_of, peak_rss_of, reset_peak_rss},
    quic_stats::{QuicSample, Watch},
    stats::{Summary, median, rotated, round_ratios},
};

/// What one measured nix invocation does.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// W1..W5.
    pub(crate) name: &'static str,
    /// What it moves, for the report.
    pub(crate) description: String,
    /// The nix command.
    pub(crate) kind: JobKind,
}

/// The nix command of a [`Job`].
#[derive(Debug, Clone)]
pub(crate) enum JobKind {
    /// `nix copy --from <source> --to <url> <paths>`.
    Copy(Vec<String>),
    /// `nix path-info --store <url> <paths>` (one connection, a round trip per path).
    PathInfo(Vec<String>),
    /// `nix store ping --store <url>`: one connection, its handshake, nothing else.
    Ping,
}

impl Job {
    /// The store paths the job needs in the destination afterwards.
    pub(crate) fn paths(&self) -> &[String] {
        match &self.kind {
            JobKind::Copy(paths) | JobKind::PathInfo(paths) => paths,
            JobKind::Ping => &[],
        }
    }

    /// Bytes of NAR the job moves (None: it moves none, like `nix path-info`).
    pub(crate) fn nar_bytes(&self, w: &Workloads) -> Option<u64> {
        match &self.kind {
            JobKind::Copy(paths) => Some(
                paths
                    .iter()
                    .filter_map(|p| w.nar_infos.get(p))
                    .map(|i| i.nar_size)
                    .sum(),
            ),
            JobKind::PathInfo(_) | JobKind::Ping => None,
        }
    }

    /// The nix command copying from `source_url` to `url` (or asking `url`), run in the
    /// network namespace `ns` (None: this one).
    pub(crate) fn command_in(&self, ns: Option<&str>, source_url: &str, url: &str) -> Command {
        let mut command = command_in(ns, "nix");
        command.env("NIX_CONFIG", NIX_CONFIG);
        match &self.kind {
            JobKind::Copy(paths) => command
                .args(["copy", "--from", source_url, "--to", url])
                .args(paths),
            JobKind::PathInfo(paths) => command.args(["path-info", "--store", url]).args(paths),
            JobKind::Ping => command.args(["store", "ping", "--store", url]),
        };
        command
    }
}

/// The five workloads of issue 4 over `w`.
pub(crate) fn standard_jobs(w: &Workloads, w1_bytes: u64) -> Vec<Job> {
    vec![
        Job {
            name: "W1",
            description: large_file(w1_bytes),
            kind: JobKind::Copy(vec![w.w1.clone()]),
        },
        Job {
            name: "W2",
            description: "one directory of small files (1-8 KiB)".to_owned(),
            kind: JobKind::Copy(vec![w.w2.clone()]),
        },
        Job {
            name: "W3",
            description: format!("{} small store paths in one nix copy", w.w3.len()),
            kind: JobKind::Copy(w.w3.clone()),
        },
        Job {
            name: "W4",
            description: format!(
                "nix path-info over the {} W3 paths (round trips)",
                w.w3.len()
            ),
            kind: JobKind::PathInfo(w.w3.clone()),
        },
        Job {
            name: "W5",
            description: format!(
                "{} store paths of machine files ({} files, {} MiB)",
                w.w5.len(),
                w.w5_files,
                w.w5_file_bytes >> 20
            ),
            kind: JobKind::Copy(w.w5.clone()),
        },
    ]
}

/// `jobs` for the emulated link: the large file replaced by the link's smaller one
/// (`w1_net`, `w1_bytes`) and W5 (the transfers' only) left out.
pub(crate) fn for_link(jobs: Vec<Job>, w: &Workloads, w1_net: &str, w1_bytes: u64) -> Vec<Job> {
    jobs.into_iter()
        .filter(|j| j.name != "W5")
        .map(|mut job| {
            if let JobKind::Copy(paths) = &mut job.kind
                && *paths == [w.w1.clone()]
            {
                *paths = vec![w1_net.to_owned()];
                job.description = large_file(w1_bytes);
            }
            job
        })
        .collect()
}

/// `nix store ping` as a job (on a warm forwarder: the cost of one new daemon connection).
pub(crate) fn ping_job() -> Job {
    Job {
        name: "ping",
        description: "nix store ping (one new daemon connection, handshake only)".to_owned(),
        kind: JobKind::Ping,
    }
}

/// The jobs named in `only` (case-insensitive), or all of them when `only` is None.
pub(crate) fn selected(mut jobs: Vec<Job>, only: Option<&[String]>) -> Vec<Job> {
    if let Some(only) = only {
        jobs.retain(|j| only.iter().any(|w| w.eq_ignore_ascii_case(j.name)));
    }
    jobs
}

fn large_file(bytes: u64) -> String {
    format!("one {} MiB file of random bytes", bytes >> 20)
}

/// One variant's numbers for one job (`V`: a way of reaching the daemon, or a pull source).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VariantResult<V = Variant> {
    /// The variant.
    pub(crate) variant: V,
    /// Wall time of the nix command per round (None: failed).
    pub(crate) times_s: Vec<Option<f64>>,
    /// CPU seconds (user + sys) of the forwarding processes per round.
    pub(crate) cpu_s: Vec<Option<f64>>,
    /// Summary of the times.
    pub(crate) time: Option<Summary>,
    /// Summary of the per-round ratios to the baseline variant.
    pub(crate) ratio: Option<Summary>,
    /// Summary of the forwarders' CPU seconds.
    pub(crate) cpu: Option<Summary>,
}

/// All variants' numbers for one job.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct JobResult<V = Variant> {
    /// W1..W5.
    pub(crate) workload: String,
    /// What it moves.
    pub(crate) description: String,
    /// How many store paths (round trips for W4).
    pub(crate) paths: usize,
    /// Per variant.
    pub(crate) variants: Vec<VariantResult<V>>,
}

impl<V: Copy + PartialEq> JobResult<V> {
    /// The result of `variant`, if measured.
    pub(crate) fn of(&self, variant: V) -> Option<&VariantResult<V>> {
        self.variants.iter().find(|v| v.variant == variant)
    }
}

/// Peak resident memory of one forwarding process during W1.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PeakRss {
    /// The variant.
    pub(crate) variant: Variant,
    /// Which of its processes.
    pub(crate) process: String,
    /// VmHWM after W1, per round (reset before W1), bytes.
    pub(crate) bytes: Vec<u64>,
}

/// Everything the transfer rounds measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TransferResults {
    /// The variant the ratios are taken against.
    pub(crate) baseline: Variant,
    /// Rounds run.
    pub(crate) reps: usize,
    /// The variant order of each round.
    pub(crate) orders: Vec<Vec<Variant>>,
    /// Per job.
    pub(crate) jobs: Vec<JobResult>,
    /// What the n2p clients' QUIC connections counted, per job and variant (emulated link).
    pub(crate) quic: Vec<QuicRow>,
    /// Peak memory during W1.
    pub(crate) w1_peak_rss: Vec<PeakRss>,
    /// Failures (the measurement is then missing from its round).
    pub(crate) errors: Vec<String>,
}

/// The QUIC stats of one job through one variant, one entry per round that logged them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QuicRow {
    /// W1..W5.
    pub(crate) workload: String,
    /// The variant.
    pub(crate) variant: Variant,
    /// (round, what the connection counted).
    pub(crate) rounds: Vec<(usize, QuicSample)>,
}

impl TransferResults {
    /// The result of `job`, if run.
    pub(crate) fn job(&self, name: &str) -> Option<&JobResult> {
        self.jobs.iter().find(|j| j.workload == name)
    }
}

/// Runs `reps` interleaved rounds of `jobs` through `fwds`; ratios against `baseline`.
/// Fresh daemons live under `dest_dir`; `scratch` takes nix's stderr.
pub(crate) fn run(
    fwds: &mut [Forwarder],
    jobs: &[Job],
    workloads: &Workloads,
    reps: usize,
    baseline: Variant,
    dest_dir: &Path,
    scratch: &Path,
) -> TransferResults {
    let variants: Vec<Variant> = fwds.iter().map(Forwarder::variant).collect();
    // times[job][variant] = per-round samples
    let mut rec = Recorder::new(jobs.len());
    let mut orders: Vec<Vec<Variant>> = Vec::new();
    let all_paths: Vec<String> = jobs.iter().flat_map(|j| j.paths().to_vec()).collect();

    for rep in 0..reps {
        let order: Vec<usize> = rotated(&(0..fwds.len()).collect::<Vec<_>>(), rep);
        orders.push(order.iter().map(|i| variants[*i]).collect());
        eprintln!(
            "round {}/{reps}: order {:?}",
            rep + 1,
            orders[rep].iter().map(|v| v.name()).collect::<Vec<_>>()
        );
        let mut daemons: Vec<Option<NixDaemon>> = Vec::new();
        for fwd in fwds.iter_mut() {
            let dir = dest_dir.join(format!("r{rep}-{}", fwd.variant()));
            match NixDaemon::try_start_at(fwd.slot(), &dir) {
                Ok(d) => {
                    fwd.round_started(&dir);
                    daemons.push(Some(d));
                }
                Err(e) => {
                    rec.errors
                        .push(format!("round {rep}: {}: daemon: {e:#}", fwd.variant()));
                    daemons.push(None);
                }
            }
        }
        if rep == 0 {
            warm_up(fwds, scratch, &mut rec.errors);
        }
        for (j, job) in jobs.iter().enumerate() {
            for &i in &order {
                let fwd = &mut fwds[i];
                let variant = fwd.variant();
                let sample = if daemons[i].is_some() {
                    measure(fwd, job, workloads, j == 0, scratch)
                } else {
                    Err(anyhow::anyhow!("no daemon"))
                };
                rec.record(rep, j, job, variant, sample);
            }
        }
        for (fwd, daemon) in fwds.iter().zip(daemons) {
            let Some(daemon) = daemon else { continue };
            if let Err(e) = workloads.verify_paths(daemon.socket_path(), &all_paths) {
                rec.errors.push(format!(
                    "round {rep}: {}: verification: {e:#}",
                    fwd.variant()
                ));
                eprintln!("  {} verification FAILED: {e:#}", fwd.variant());
            }
            daemon.remove();
        }
    }

    TransferResults {
        baseline,
        reps,
        orders,
        jobs: summarize(jobs, &variants, &rec.times, &rec.cpus, baseline),
        quic: rec
            .quic
            .into_iter()
            .map(|((j, variant), rounds)| QuicRow {
                workload: jobs[j].name.to_owned(),
                variant,
                rounds,
            })
            .collect(),
        w1_peak_rss: rec
            .peaks
            .into_iter()
            .map(|((variant, process), bytes)| PeakRss {
                variant,
                process,
                bytes,
            })
            .collect(),
        errors: rec.errors,
    }
}

/// One measured nix command.
pub(crate) struct Sample {
    /// Its wall time, seconds.
    pub(crate) secs: f64,
    /// CPU seconds of the processes serving it (forwarders, sources).
    pub(crate) cpu: f64,
    /// Peak resident memory of tracked processes: (label, bytes).
    pub(crate) peaks: Vec<(String, u64)>,
    /// What the QUIC connection counted, when its stats are logged.
    pub(crate) quic: Option<QuicSample>,
}

/// The samples of interleaved rounds as they come, for [`summarize`].
pub(crate) struct Recorder<V> {
    /// Wall times.
    pub(crate) times: Samples<V>,
    /// CPU seconds.
    pub(crate) cpus: Samples<V>,
    /// Peak memory by (variant, process), one entry per tracked run.
    pub(crate) peaks: BTreeMap<(V, String), Vec<u64>>,
    /// Failures, each naming its round.
    pub(crate) errors: Vec<String>,
    /// QUIC stats by (job, variant): (round, sample).
    pub(crate) quic: BTreeMap<(usize, V), Vec<(usize, QuicSample)>>,
}

impl<V: Copy + Ord + fmt::Display> Recorder<V> {
    /// Empty, for `jobs` jobs.
    pub(crate) fn new(jobs: usize) -> Self {
        Self {
            times: vec![BTreeMap::new(); jobs],
            cpus: vec![BTreeMap::new(); jobs],
            peaks: BTreeMap::new(),
            errors: Vec::new(),
            quic: BTreeMap::new(),
        }
    }

    /// Records (and prints) round `rep`'s outcome of job `j` through `variant`: a missing
    /// sample when it failed.
    pub(crate) fn record(
        &mut self,
        rep: usize,
        j: usize,
        job: &Job,
        variant: V,
        sample: Result<Sample>,
    ) {
        let (time, cpu) = match sample {
            Ok(s) => {
                if let Some(q) = s.quic {
                    eprintln!(
                        "    quic: {} sent, {} lost ({:.2} %), {} congestion events, cwnd max {} KB, rtt max {:.1} ms",
                        q.sent_packets,
                        q.lost_packets,
                        q.loss_percent,
                        q.congestion_events,
                        q.cwnd_max / 1000,
                        q.rtt_ms_max
                    );
                    self.quic.entry((j, variant)).or_default().push((rep, q));
                }
                for (process, bytes) in s.peaks {
                    self.peaks
                        .entry((variant, process))
                        .or_default()
                        .push(bytes);
                }
                eprintln!(
                    "  {} {:<8} {:7.3} s  cpu {:6.3} s",
                    job.name,
                    variant.to_string(),
                    s.secs,
                    s.cpu
                );
                (Some(s.secs), Some(s.cpu))
            }
            Err(e) => {
                eprintln!("  {} {:<8} FAILED: {e:#}", job.name, variant.to_string());
                self.errors
                    .push(format!("round {rep}: {} {variant}: {e:#}", job.name));
                (None, None)
            }
        };
        self.times[j].entry(variant).or_default().push(time);
        self.cpus[j].entry(variant).or_default().push(cpu);
    }
}

/// Per-round samples of one job: `[job][variant] = one Option per round` (None: failed).
pub(crate) type Samples<V> = Vec<BTreeMap<V, Vec<Option<f64>>>>;

/// The results of `jobs` from their per-round `times` and `cpus`, with ratios taken per
/// round against `baseline`.
pub(crate) fn summarize<V: Copy + Ord>(
    jobs: &[Job],
    variants: &[V],
    times: &Samples<V>,
    cpus: &Samples<V>,
    baseline: V,
) -> Vec<JobResult<V>> {
    jobs.iter()
        .enumerate()
        .map(|(j, job)| {
            let base = times[j].get(&baseline).cloned().unwrap_or_default();
            JobResult {
                workload: job.name.to_owned(),
                description: job.description.clone(),
                paths: job.paths().len(),
                variants: variants
                    .iter()
                    .map(|v| {
                        let t = times[j].get(v).cloned().unwrap_or_default();
                        let c = cpus[j].get(v).cloned().unwrap_or_default();
                        VariantResult {
                            variant: *v,
                            time: Summary::of(&t.iter().flatten().copied().collect::<Vec<_>>()),
                            ratio: Summary::of(&round_ratios(&t, &base)),
                            cpu: Summary::of(&c.iter().flatten().copied().collect::<Vec<_>>()),
                            times_s: t,
                            cpu_s: c,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// One nix command through the forwarder, untimed, so connections are up before round 1
/// (dumbpipe has nothing to warm: a new connector per invocation).
fn warm_up(fwds: &mut [Forwarder], scratch: &Path, errors: &mut Vec<String>) {
    for fwd in fwds.iter_mut() {
        if fwd.variant() == Variant::Dumbpipe {
            continue;
        }
        let result = fwd.invocation().and_then(|inv| {
            let mut command = ping_job().command_in(inv.ns.as_deref(), "", &inv.url);
            command.envs(inv.env.iter().map(|(k, v)| (k, v)));
            try_run_timed(&mut command, None, &scratch.join("warm.err"), NIX_TIMEOUT)?
                .check("nix store ping")?;
            Ok(())
        });
        if let Err(e) = result {
            errors.push(format!("warm-up {}: {e:#}", fwd.variant()));
        }
    }
}

fn measure(
    fwd: &mut Forwarder,
    job: &Job,
    workloads: &Workloads,
    track_peak: bool,
    scratch: &Path,
) -> Result<Sample> {
    let inv = fwd.invocation()?;
    let tracked: Vec<(String, u32)> = if track_peak {
        fwd.process_labels()
            .into_iter()
            .zip(inv.pids.iter().copied())
            .collect()
    } else {
        Vec::new()
    };
    let mut command = job.command_in(inv.ns.as_deref(), &workloads.source_url, &inv.url);
    command.envs(inv.env.iter().map(|(k, v)| (k, v)));
    let watch = inv.quic_log.as_deref().map(Watch::start);
    let mut sample = timed_sample(
        &mut command,
        &format!("{} through {}", job.name, fwd.variant()),
        scratch,
        &tracked,
        || cpu_seconds_once_reaped(&inv.pids),
    )?;
    sample.quic = watch.and_then(Watch::finish);
    Ok(sample)
}

/// Runs the nix `command` (`what`, for errors; its stderr goes to `scratch`) timed, with
/// the peak memory of the `tracked` processes reset before and read after, and `cpu` (the
/// CPU seconds of the serving processes so far) read before and after.
pub(crate) fn timed_sample(
    command: &mut Command,
    what: &str,
    scratch: &Path,
    tracked: &[(String, u32)],
    mut cpu: impl FnMut() -> f64,
) -> Result<Sample> {
    for (_, pid) in tracked {
        reset_peak_rss(*pid).ok();
    }
    let cpu_before = cpu();
    let timed = try_run_timed(command, None, &scratch.join("nix.err"), NIX_TIMEOUT)?.check(what)?;
    Ok(Sample {
        secs: timed.elapsed.as_secs_f64(),
        cpu: cpu() - cpu_before,
        peaks: peak_rss_of(tracked.iter().cloned()),
        quic: None,
    })
}

/// [`cpu_seconds_of`] `pids` once their children have been reaped (waiting up to 2 s):
/// forking servers (socat, sshd, nix-daemon) account a connection's work when it ends.
pub(crate) fn cpu_seconds_once_reaped(pids: &[u32]) -> f64 {
    for pid in pids {
        time_until(Duration::from_secs(2), MEASURING_POLL_INTERVAL, || {
            children_of(*pid) == 0
        });
    }
    cpu_seconds_of(pids)
}

/// How many child processes `pid` has (0 when unknown).
fn children_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| s.split_whitespace().count())
        .unwrap_or(0)
}

/// Median of the medians of `variant` minus the baseline, per path, in milliseconds (W4:
/// the time added per round trip).
pub(crate) fn added_ms_per_path(
    job: &JobResult,
    variant: Variant,
    baseline: Variant,
) -> Option<f64> {
    let v = job.of(variant)?;
    let b = job.of(baseline)?;
    let diffs: Vec<f64> = v
        .times_s
        .iter()
        .zip(&b.times_s)
        .filter_map(|pair| match pair {
            (Some(v), Some(b)) => Some((v - b) * 1000.0 / job.paths.max(1) as f64),
            _ => None,
        })
        .collect();
    median(&diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workloads() -> Workloads {
        let p = |n: &str| format!("/nix/store/{n}");
        Workloads {
            source_url: "local?root=/x".to_owned(),
            w1: p("big"),
            w1_net: Some(p("small")),
            w2: p("dir"),
            w3: vec![p("a"), p("b")],
            w5: vec![p("usr")],
            w5_files: 1,
            w5_file_bytes: 1,
            nar_infos: [("a", 10), ("b", 20), ("small", 300)]
                .into_iter()
                .map(|(n, size)| {
                    let info = n2p_testkit::nix::PathInfo {
                        nar_hash: String::new(),
                        nar_size: size,
                    };
                    (p(n), info)
                })
                .collect(),
        }
    }

    #[test]
    fn the_link_moves_its_smaller_file_and_no_w5() {
        let w = workloads();
        let jobs = for_link(standard_jobs(&w, 1 << 30), &w, "/nix/store/small", 4 << 20);
        let names: Vec<&str> = jobs.iter().map(|j| j.name).collect();
        assert_eq!(names, ["W1", "W2", "W3", "W4"]);
        assert_eq!(jobs[0].paths(), ["/nix/store/small"]);
        assert_eq!(jobs[0].description, "one 4 MiB file of random bytes");
        assert_eq!(jobs[0].nar_bytes(&w), Some(300));
        assert_eq!(jobs[2].nar_bytes(&w), Some(30));
        assert_eq!(jobs[3].nar_bytes(&w), None, "path-info moves no NAR");
    }

    #[test]
    fn workloads_are_selected_by_name() {
        let w = workloads();
        let only = ["w2".to_owned(), "W4".to_owned()];
        let jobs = selected(standard_jobs(&w, 1), Some(&only));
        let names: Vec<&str> = jobs.iter().map(|j| j.name).collect();
        assert_eq!(names, ["W2", "W4"]);
        assert_eq!(selected(standard_jobs(&w, 1), None).len(), 5);
    }
}
