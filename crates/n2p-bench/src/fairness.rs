//! `n2p-bench fairness`: an n2p stream and a plain TCP stream share the emulated bottleneck
//! at the same time; each one's goodput over the overlap shows whether either starves the
//! other (issue 10: each should keep at least a third of the link rate).
//!
//! The n2p flow is the real forwarding path: `n2p client` in the client namespace, `n2p
//! server` in the server namespace, and in place of the nix-daemon a unix socket that
//! counts the bytes arriving (the server passes a stream's bytes through unchanged); the
//! bench writes into the client's socket as fast as it takes them. The TCP flow is one
//! in-process socket per namespace, its controller set with `TCP_CONGESTION`. Both start
//! together; the first `--warmup-secs` are left out of the goodput. Needs root and `ip`.

use std::{
    fmt::Write as _,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use n2p_testkit::netns;
use serde::Serialize;

use crate::{
    forwarders::{Forwarder, Tools, Variant},
    link::{
        Link, Shape,
        check::{connect, socket_with_cc},
    },
    quic_stats::{QuicSample, Watch},
};

/// Options of `fairness`.
#[derive(Debug, Args)]
pub(crate) struct FairArgs {
    /// The n2p binary (a release build).
    #[arg(long, default_value = "target/release/n2p")]
    n2p: PathBuf,
    /// Links as RTT_MS/RATE_MBIT[/LOSS_PERCENT].
    #[arg(long, value_delimiter = ',', default_value = "30/100,120/20")]
    links: Vec<String>,
    /// n2p's congestion controllers to try (N2P_CONGESTION).
    #[arg(long, value_delimiter = ',', default_value = "cubic,bbr")]
    n2p_cc: Vec<String>,
    /// TCP's congestion controllers to try (TCP_CONGESTION).
    #[arg(long, value_delimiter = ',', default_value = "cubic,bbr")]
    tcp_cc: Vec<String>,
    /// Seconds both flows run.
    #[arg(long, default_value_t = 30.0)]
    secs: f64,
    /// Seconds at the start left out of the goodput.
    #[arg(long, default_value_t = 5.0)]
    warmup_secs: f64,
    /// Rounds of every combination.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// A control: the first flow is a second TCP stream with the controllers of `--n2p-cc`
    /// instead of n2p (two TCP flows sharing the link).
    #[arg(long)]
    control_tcp: bool,
    /// Scratch directory [default: /dev/shm/n2p-fair-<pid>].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where to write fairness.md and fairness.json [default: print only].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One measured pair of flows.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FairRow {
    /// RTT, ms.
    rtt_ms: u32,
    /// Link rate, Mbit/s.
    rate_mbit: u32,
    /// Random loss, percent.
    loss_percent: f64,
    /// The first flow: `n2p`, or `tcp` in a control run.
    first: String,
    /// n2p's controller.
    n2p_cc: String,
    /// TCP's controller.
    tcp_cc: String,
    /// Round.
    round: usize,
    /// n2p goodput over the window, Mbit/s.
    n2p_mbit: f64,
    /// TCP goodput over the window, Mbit/s.
    tcp_mbit: f64,
    /// The window, s after the start.
    window_s: (f64, f64),
    /// What n2p's QUIC connection counted over the whole run.
    quic: Option<QuicSample>,
    /// 1-minute load average at the start.
    load: f64,
}

impl FairRow {
    fn verdict(&self) -> &'static str {
        if each_keeps_a_third(self.n2p_mbit, self.tcp_mbit, self.rate_mbit) {
            "yes"
        } else {
            "no"
        }
    }
}

/// Whether both flows got at least a third of the link rate.
pub(crate) fn each_keeps_a_third(a_mbit: f64, b_mbit: f64, rate_mbit: u32) -> bool {
    let third = f64::from(rate_mbit) / 3.0;
    a_mbit >= third && b_mbit >= third
}

/// Goodput in Mbit/s between the samples nearest to `from` and `to` (seconds) of a series
/// of (seconds, cumulative bytes).
pub(crate) fn window_mbit(samples: &[(f64, u64)], from: f64, to: f64) -> Option<f64> {
    let at = |t: f64| {
        samples
            .iter()
            .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
            .copied()
    };
    let (t0, b0) = at(from)?;
    let (t1, b1) = at(to)?;
    (t1 > t0).then(|| b1.saturating_sub(b0) as f64 * 8.0 / (t1 - t0) / 1e6)
}

/// Parses `RTT/RATE[/LOSS]`.
fn parse_link(text: &str) -> Result<Shape> {
    let parts: Vec<&str> = text.split('/').collect();
    let bad = || anyhow::anyhow!("bad link {text:?}: use RTT_MS/RATE_MBIT[/LOSS_PERCENT]");
    if !(2..=3).contains(&parts.len()) {
        return Err(bad());
    }
    let mut shape = Shape::new(
        parts[0].parse().map_err(|_| bad())?,
        parts[1].parse().map_err(|_| bad())?,
    );
    if let Some(loss) = parts.get(2) {
        shape.loss_percent = loss.parse().map_err(|_| bad())?;
    }
    Ok(shape)
}

/// Runs every combination and prints (and writes) the table.
pub(crate) fn run(args: FairArgs) -> Result<()> {
    let n2p = std::fs::canonicalize(&args.n2p)
        .with_context(|| format!("no n2p at {}", args.n2p.display()))?;
    let shapes = args
        .links
        .iter()
        .map(|l| parse_link(l))
        .collect::<Result<Vec<_>>>()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/n2p-fair-{}", std::process::id())));
    let mut rows = Vec::new();
    let mut n = 0;
    for shape in &shapes {
        for round in 0..args.reps {
            for n2p_cc in &args.n2p_cc {
                for tcp_cc in &args.tcp_cc {
                    n += 1;
                    eprintln!(
                        "{} ms, {} Mbit/s, {} % loss: n2p {n2p_cc} against TCP {tcp_cc}, round {}",
                        shape.rtt_ms,
                        shape.rate_mbit,
                        shape.loss_percent,
                        round + 1
                    );
                    let dir = work.join(format!("cell-{n}"));
                    let row = measure(&n2p, *shape, n2p_cc, tcp_cc, &args, &dir, round);
                    n2p_testkit::dir::remove_tree(&dir);
                    match row {
                        Ok(row) => {
                            eprintln!(
                                "  n2p {:.1} Mbit/s, TCP {:.1} Mbit/s",
                                row.n2p_mbit, row.tcp_mbit
                            );
                            rows.push(row);
                        }
                        Err(e) => eprintln!("  FAILED: {e:#}"),
                    }
                }
            }
        }
    }
    n2p_testkit::dir::remove_tree(&work);
    let text = table(&rows, &args);
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("fairness.md"), &text)?;
        std::fs::write(
            out.join("fairness.json"),
            serde_json::to_string_pretty(&rows)? + "\n",
        )?;
        eprintln!("wrote {}", out.join("fairness.md").display());
    }
    Ok(())
}

/// One TCP stream from the client namespace `cns` to `addr` in the server namespace `sns`
/// with controller `cc`, counting what arrives into `count` until `stop`: the receiving
/// and the sending thread.
#[allow(clippy::type_complexity)]
fn tcp_flow(
    sns: &Path,
    cns: &Path,
    addr: SocketAddr,
    cc: &str,
    count: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
    start: Instant,
) -> Result<(JoinHandle<()>, JoinHandle<Result<()>>)> {
    let listener = netns::in_netns(sns, move || {
        TcpListener::bind(addr).map_err(|e| n2p_testkit::Failure::new(format!("{addr}: {e}")))
    })?;
    listener.set_nonblocking(true)?;
    let (count, receiver_stop) = (Arc::clone(count), Arc::clone(stop));
    let receiver = std::thread::spawn(move || {
        let Some(s) = accept_until(|| listener.accept().map(|(s, _)| s), &receiver_stop) else {
            return;
        };
        s.set_nonblocking(false).ok();
        s.set_read_timeout(Some(IO_TIMEOUT)).ok();
        count_reads(s, count, receiver_stop).join().ok();
    });
    let (cc, sender_stop) = (cc.to_owned(), Arc::clone(stop));
    let sender = netns::spawn_in_netns(cns, move || -> Result<()> {
        let s = connect(socket_with_cc(&cc)?, addr)?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        write_until(&s, &sender_stop)
            .with_context(|| format!("after {:.1} s", start.elapsed().as_secs_f64()))
    })?;
    Ok((receiver, sender))
}

/// A thread reading a stream until EOF, an error or `stop`, adding what it reads to `count`.
fn count_reads<R: Read + Send + 'static>(
    mut r: R,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 17];
        while !stop.load(Ordering::Relaxed) {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
    })
}

/// Accepts one connection from a non-blocking `accept`, giving up at `stop`.
fn accept_until<S>(mut accept: impl FnMut() -> std::io::Result<S>, stop: &AtomicBool) -> Option<S> {
    while !stop.load(Ordering::Relaxed) {
        match accept() {
            Ok(s) => return Some(s),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => return None,
        }
    }
    None
}

/// Writes into `w` as fast as it takes bytes until `stop` (writes time out to look at it).
fn write_until<W: Write>(mut w: W, stop: &AtomicBool) -> Result<()> {
    let buf = vec![0x5au8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        match w.write(&buf) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // The receivers stop at the same time: a reset then is the end, not a failure.
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

const IO_TIMEOUT: Duration = Duration::from_millis(200);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

fn measure(
    n2p: &Path,
    shape: Shape,
    n2p_cc: &str,
    tcp_cc: &str,
    args: &FairArgs,
    dir: &Path,
    round: usize,
) -> Result<FairRow> {
    std::fs::create_dir_all(dir)?;
    let load = crate::pull::load_average();
    let link = Link::create(shape)?;
    let net = link.net();
    let stop = Arc::new(AtomicBool::new(false));
    let n2p_bytes = Arc::new(AtomicU64::new(0));
    let tcp_bytes = Arc::new(AtomicU64::new(0));
    let ns_path = |ns: &Option<String>| -> Result<PathBuf> {
        Ok(PathBuf::from(format!(
            "/run/netns/{}",
            ns.as_deref().context("no namespace")?
        )))
    };
    let (sns, cns) = (ns_path(&net.server_ns)?, ns_path(&net.client_ns)?);
    let addr = SocketAddr::new(net.server_ip, 5301);
    let start = Instant::now();

    // The first flow: n2p (client -> server -> a counting sink where the daemon would be),
    // or in a control run a second TCP stream.
    let mut n2p_parts = None;
    let (first_receiver, first_sender) = if args.control_tcp {
        let addr = SocketAddr::new(net.server_ip, 5302);
        tcp_flow(&sns, &cns, addr, n2p_cc, &n2p_bytes, &stop, start)?
    } else {
        let tools = Tools {
            n2p: n2p.to_owned(),
            n2p_alt: None,
            congestion: [Some(n2p_cc.to_owned()), None],
            dumbpipe: None,
            socat: None,
        };
        let mut fwd = Forwarder::start(Variant::N2p, dir, &tools, &net)?;
        let inv = fwd.invocation()?;
        let sink = UnixListener::bind(fwd.slot())?;
        sink.set_nonblocking(true)?;
        let (count, sink_stop) = (Arc::clone(&n2p_bytes), Arc::clone(&stop));
        let receiver = std::thread::spawn(move || {
            let Some(s) = accept_until(|| sink.accept().map(|(s, _)| s), &sink_stop) else {
                return;
            };
            s.set_nonblocking(false).ok();
            s.set_read_timeout(Some(IO_TIMEOUT)).ok();
            count_reads(s, count, sink_stop).join().ok();
        });
        let watch = inv.quic_log.clone();
        let (front, writer_stop) = (inv.socket.clone(), Arc::clone(&stop));
        let sender = std::thread::spawn(move || -> Result<()> {
            let s = UnixStream::connect(&front)?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            write_until(&s, &writer_stop)
                .with_context(|| format!("after {:.1} s", start.elapsed().as_secs_f64()))
        });
        n2p_parts = Some((fwd, inv, watch));
        (receiver, sender)
    };
    // The TCP flow, started right after the first one's writer; the samples' clock starts
    // here (the n2p forwarder took its time to start above).
    let start = Instant::now();
    let (tcp_receiver, tcp_sender) = tcp_flow(&sns, &cns, addr, tcp_cc, &tcp_bytes, &stop, start)?;
    let watch = n2p_parts
        .as_ref()
        .and_then(|(_, _, log)| log.as_deref().map(Watch::start));

    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let total = Duration::from_secs_f64(args.secs);
    while start.elapsed() < total {
        std::thread::sleep(SAMPLE_EVERY);
        samples.push((
            start.elapsed().as_secs_f64(),
            n2p_bytes.load(Ordering::Relaxed),
            tcp_bytes.load(Ordering::Relaxed),
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let sender_result = tcp_sender.join();
    let writer_result = first_sender.join();
    first_receiver.join().ok();
    tcp_receiver.join().ok();
    let quic = watch.and_then(Watch::finish);
    let logs = || {
        ["server.log", "client.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                n2p_testkit::proc::tail(&text, 800).to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    drop(n2p_parts);
    drop(link);
    match sender_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("TCP flow: {e:#}"),
        Err(_) => bail!("TCP sender panicked"),
    }
    match writer_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("first flow: {e:#}; logs:\n{}", logs()),
        Err(_) => bail!("n2p writer panicked"),
    }
    let from = args.warmup_secs.min(args.secs / 2.0);
    let series = |f: fn(&(f64, u64, u64)) -> u64| -> Vec<(f64, u64)> {
        samples.iter().map(|s| (s.0, f(s))).collect()
    };
    let n2p_mbit =
        window_mbit(&series(|s| s.1), from, args.secs).context("no samples of the n2p flow")?;
    let tcp_mbit =
        window_mbit(&series(|s| s.2), from, args.secs).context("no samples of the TCP flow")?;
    Ok(FairRow {
        rtt_ms: shape.rtt_ms,
        rate_mbit: shape.rate_mbit,
        loss_percent: shape.loss_percent,
        first: if args.control_tcp { "tcp" } else { "n2p" }.to_owned(),
        n2p_cc: n2p_cc.to_owned(),
        tcp_cc: tcp_cc.to_owned(),
        round,
        n2p_mbit,
        tcp_mbit,
        window_s: (from, args.secs),
        quic,
        load,
    })
}

fn table(rows: &[FairRow], args: &FairArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Both flows start together and run {} s; goodput over {}–{} s. Bar: each at least a third of the link rate.\n",
        args.secs,
        args.warmup_secs.min(args.secs / 2.0),
        args.secs
    );
    let _ = writeln!(
        out,
        "| link (RTT ms / Mbit/s / loss %) | n2p cc | TCP cc | round | n2p Mbit/s (share of rate) | TCP Mbit/s (share) | sum | each ≥ 1/3 | n2p lost % | n2p congestion events | n2p cwnd median KB | load |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let rate = f64::from(r.rate_mbit);
        let q = r.quic.as_ref();
        let _ = writeln!(
            out,
            "| {} / {} / {} | {} | {} | {} | {:.1} ({:.0} %) | {:.1} ({:.0} %) | {:.1} | {} | {} | {} | {} | {:.1} |",
            r.rtt_ms,
            r.rate_mbit,
            r.loss_percent,
            if r.first == "n2p" {
                r.n2p_cc.clone()
            } else {
                format!("(TCP) {}", r.n2p_cc)
            },
            r.tcp_cc,
            r.round + 1,
            r.n2p_mbit,
            r.n2p_mbit * 100.0 / rate,
            r.tcp_mbit,
            r.tcp_mbit * 100.0 / rate,
            r.n2p_mbit + r.tcp_mbit,
            r.verdict(),
            q.map_or("–".to_owned(), |q| format!("{:.2}", q.loss_percent)),
            q.map_or("–".to_owned(), |q| q.congestion_events.to_string()),
            q.map_or("–".to_owned(), |q| (q.cwnd_median / 1000).to_string()),
            r.load
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_goodput_between_the_nearest_samples() {
        let s = [
            (0.1, 0),
            (1.0, 1_000_000),
            (2.0, 3_500_000),
            (3.0, 6_000_000),
        ];
        // 5 MB in 2 s = 20 Mbit/s.
        let mbit = window_mbit(&s, 1.02, 2.97).expect("a rate");
        assert!((mbit - 20.0).abs() < 1e-9, "{mbit}");
        assert_eq!(window_mbit(&s, 3.0, 3.0), None);
        assert_eq!(window_mbit(&[], 0.0, 1.0), None);
    }

    #[test]
    fn a_third_each() {
        assert!(each_keeps_a_third(40.0, 50.0, 100));
        assert!(!each_keeps_a_third(30.0, 65.0, 100));
        assert!(!each_keeps_a_third(90.0, 2.0, 100));
    }

    #[test]
    fn links_parse() {
        let s = parse_link("30/100/0.5").expect("a link");
        assert_eq!((s.rtt_ms, s.rate_mbit, s.loss_percent), (30, 100, 0.5));
        assert_eq!(parse_link("120/20").expect("a link").loss_percent, 0.0);
        assert!(parse_link("30").is_err());
        assert!(parse_link("a/b").is_err());
    }
}
