//! `n2p-bench link-check`: how close the emulated link comes to its shape. For each link it
//! measures ICMP ping RTT (`ping` in the client namespace), the goodput of one plain TCP
//! stream from client to server, and the loss of a paced UDP stream, and prints a Markdown
//! table. Needs root, `ip` and `ping`.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use n2p_testkit::netns;

use super::{Link, Shape, StatsSnapshot};

/// [`netns::in_netns`] for closures that fail with `anyhow`.
fn in_netns<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    netns::in_netns(std::path::Path::new(path), f)
}

/// [`netns::spawn_in_netns`] for closures that fail with `anyhow`.
fn spawn_in_netns<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    Ok(netns::spawn_in_netns(std::path::Path::new(path), f)?)
}

/// Options of `link-check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// RTT to check, ms (with --rate-mbit; without both, the five standard links).
    #[arg(long, requires = "rate_mbit")]
    rtt_ms: Option<u32>,
    /// Rate to check, Mbit/s.
    #[arg(long, requires = "rtt_ms")]
    rate_mbit: Option<u32>,
    /// Loss to check, percent in each direction (with --rtt-ms; the standard links have their
    /// own).
    #[arg(long, default_value_t = 0.0, requires = "rtt_ms")]
    loss: f64,
    /// Drop-tail queue, bytes [default: one bandwidth-delay product, at least 32 packets].
    #[arg(long)]
    queue_bytes: Option<u64>,
    /// Seconds of the TCP stream.
    #[arg(long, default_value_t = 8.0)]
    tcp_secs: f64,
    /// Seconds at the start of the TCP stream left out of its steady-state goodput.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Forward at normal priority instead of SCHED_FIFO.
    #[arg(long)]
    no_realtime: bool,
    /// TCP congestion control of the stream [default: the system's].
    #[arg(long)]
    cc: Option<String>,
    /// Seed of the loss generator.
    #[arg(long, default_value_t = 0x6e32_706c_696e_6b00)]
    seed: u64,
}

/// One link's measurements.
struct Row {
    name: String,
    shape: Shape,
    ping: Option<(f64, f64, f64)>,
    ping_error: Option<String>,
    tcp_mbit: f64,
    tcp_steady_mbit: f64,
    tcp_wire_mbit: f64,
    tcp_link: StatsSnapshot,
    udp_sent: u64,
    udp_received: u64,
    udp_link: StatsSnapshot,
    cc: String,
    realtime: bool,
    load: String,
}

/// Runs the check and prints the table.
pub(crate) fn run(args: CheckArgs) -> Result<()> {
    let links: Vec<(String, Shape)> = match (args.rtt_ms, args.rate_mbit) {
        (Some(rtt), Some(rate)) => vec![("custom".to_owned(), Shape::new(rtt, rate))],
        _ => vec![
            ("LAN".to_owned(), Shape::new(1, 1000)),
            ("WAN".to_owned(), Shape::new(30, 100)),
            ("far".to_owned(), Shape::new(120, 20)),
            ("WAN 0.5 % loss".to_owned(), lossy(30, 100, 0.5)),
            ("WAN 2 % loss".to_owned(), lossy(30, 100, 2.0)),
        ],
    };
    let mut rows = Vec::new();
    for (name, mut shape) in links {
        if args.rtt_ms.is_some() {
            shape.loss_percent = args.loss;
        }
        shape.queue_bytes = args.queue_bytes;
        shape.seed = args.seed;
        shape.realtime = !args.no_realtime;
        eprintln!(
            "link {name}: {} ms, {} Mbit/s, {} % loss, queue {} bytes …",
            shape.rtt_ms,
            shape.rate_mbit,
            shape.loss_percent,
            shape.queue()
        );
        let row = measure(&name, shape, &args)?;
        eprintln!("{}", table(std::slice::from_ref(&row)));
        rows.push(row);
    }
    println!("{}", table(&rows));
    Ok(())
}

fn lossy(rtt: u32, rate: u32, loss: f64) -> Shape {
    Shape {
        loss_percent: loss,
        ..Shape::new(rtt, rate)
    }
}

fn measure(name: &str, shape: Shape, args: &CheckArgs) -> Result<Row> {
    let link = Link::create(shape)?;
    let net = link.net();
    let (cns, sns) = (
        format!("/run/netns/{}", net.client_ns.clone().expect("set")),
        format!("/run/netns/{}", net.server_ns.clone().expect("set")),
    );
    let server_ip = net.server_ip;
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");

    // Ping: 20 probes 50 ms apart, after one to warm up.
    let client_ns = net.client_ns.clone().expect("set");
    let ping_run = |count: &str| {
        Command::new("ip")
            .args(["netns", "exec", &client_ns, "ping", "-n", "-q", "-c", count])
            .args(["-i", "0.05", "-W", "2", &server_ip.to_string()])
            .output()
    };
    ping_run("1").ok();
    let (ping, ping_error) = match ping_run("20") {
        Ok(o) => match parse_ping(&String::from_utf8_lossy(&o.stdout)) {
            Some(p) => (Some(p), None),
            None => (
                None,
                Some(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
            ),
        },
        Err(e) => (None, Some(format!("ping: {e}"))),
    };

    // One TCP stream, client to server.
    let addr = SocketAddr::new(server_ip, 5201);
    let listener = in_netns(&sns, move || Ok(TcpListener::bind(addr)?))?;
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let receiver = std::thread::spawn(move || -> Result<(u64, Duration, u64, Duration)> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 17];
        let (mut total, mut start, mut mark) = (0u64, None, None);
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let t0 = *start.get_or_insert_with(Instant::now);
            total += n as u64;
            if mark.is_none() && t0.elapsed() >= warmup {
                mark = Some((total, t0.elapsed()));
            }
        }
        let t0 = start.context("no TCP data arrived")?;
        let (mb, mt) = mark.unwrap_or((0, Duration::ZERO));
        Ok((total, t0.elapsed(), mb, mt))
    });
    let before = link.stats()[0];
    let secs = Duration::from_secs_f64(args.tcp_secs);
    let cc = match &args.cc {
        Some(cc) => cc.clone(),
        None => in_netns(&cns, || {
            Ok(std::fs::read_to_string(
                "/proc/sys/net/ipv4/tcp_congestion_control",
            )?)
        })?
        .trim()
        .to_owned(),
    };
    let cc2 = cc.clone();
    let sender = spawn_in_netns(&cns, move || {
        let socket = socket_with_cc(&cc2)?;
        let mut s = connect(socket, addr)?;
        let buf = vec![0x5au8; 1 << 16];
        let t = Instant::now();
        while t.elapsed() < secs {
            s.write_all(&buf)?;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    })?;
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("TCP sender panicked"))??;
    let (total, elapsed, mark_bytes, mark_t) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("TCP receiver panicked"))??;
    let tcp_link = link.stats()[0].since(&before);
    let mbit = |bytes: u64, d: Duration| bytes as f64 * 8.0 / d.as_secs_f64() / 1e6;
    let tcp_mbit = mbit(total, elapsed);
    let tcp_steady_mbit = if mark_t.is_zero() {
        f64::NAN
    } else {
        mbit(total - mark_bytes, elapsed.saturating_sub(mark_t))
    };
    let tcp_wire_mbit = mbit(tcp_link.delivered_bytes, elapsed);

    // Paced UDP, client to server, at half the rate or less for about 2 s (at most 20 000
    // datagrams).
    const SIZE: usize = 1200;
    let rate_bytes = f64::from(shape.rate_mbit) * 1e6 / 8.0 / 2.0;
    let count = ((rate_bytes * 2.0 / (SIZE + 28) as f64) as u64).clamp(1000, 20_000);
    let interval = Duration::from_secs_f64((SIZE + 28) as f64 / rate_bytes);
    let uaddr = SocketAddr::new(server_ip, 5202);
    let usock = in_netns(&sns, move || Ok(UdpSocket::bind(uaddr)?))?;
    set_rcvbuf(&usock, 8 << 20);
    usock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let drain = Duration::from_millis(u64::from(shape.rtt_ms) + 500);
    let ureceiver = std::thread::spawn(move || {
        let mut seen = vec![false; count as usize];
        let mut buf = [0u8; 2048];
        let mut quiet_since = None;
        loop {
            match usock.recv(&mut buf) {
                Ok(n) if n >= 8 => {
                    let i = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                    if let Some(s) = seen.get_mut(i as usize) {
                        *s = true;
                    }
                    quiet_since = None;
                }
                Ok(_) => {}
                Err(_) => {
                    if done2.load(Ordering::Relaxed) {
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if q.elapsed() >= drain {
                            break;
                        }
                    }
                }
            }
        }
        seen.iter().filter(|s| **s).count() as u64
    });
    let before = link.stats()[0];
    let usender = spawn_in_netns(&cns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        let mut buf = [0u8; SIZE];
        // Evenly spaced; a sender that fell behind (descheduled) goes on from now rather than
        // catching up with a burst, which the link's queue would rightly drop.
        let mut due = Instant::now();
        for i in 0..count {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            buf[..8].copy_from_slice(&i.to_be_bytes());
            s.send_to(&buf, uaddr)?;
            due = due.max(now) + interval;
        }
        Ok(())
    })?;
    usender
        .join()
        .map_err(|_| anyhow::anyhow!("UDP sender panicked"))??;
    done.store(true, Ordering::Relaxed);
    let udp_received = ureceiver
        .join()
        .map_err(|_| anyhow::anyhow!("UDP receiver panicked"))?;
    let udp_link = link.stats()[0].since(&before);
    drop(link);
    if udp_received == 0 {
        bail!("no UDP datagram arrived");
    }
    Ok(Row {
        name: name.to_owned(),
        shape,
        ping,
        ping_error,
        tcp_mbit,
        tcp_steady_mbit,
        tcp_wire_mbit,
        tcp_link,
        udp_sent: count,
        udp_received,
        udp_link,
        cc,
        realtime: shape.realtime,
        load,
    })
}

/// A TCP socket (in this thread's namespace) using congestion control `cc`.
pub(crate) fn socket_with_cc(cc: &str) -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TCP_CONGESTION reads cc.len() bytes of the name.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            cc.as_ptr().cast(),
            cc.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("TCP_CONGESTION {cc}: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Connects `fd` to the IPv4 address `addr` (blocking).
pub(crate) fn connect(fd: OwnedFd, addr: SocketAddr) -> Result<TcpStream> {
    let SocketAddr::V4(v4) = addr else {
        bail!("{addr}: IPv4 only");
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect(2) with a sockaddr_in of its own size.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("connecting to {addr}: {}", std::io::Error::last_os_error());
    }
    Ok(TcpStream::from(fd))
}

/// Asks for a receive buffer of `bytes` (root may exceed rmem_max); best effort.
fn set_rcvbuf(s: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: SO_RCVBUFFORCE reads one c_int.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// min/avg/max from ping's summary line `rtt min/avg/max/mdev = a/b/c/d ms`.
fn parse_ping(out: &str) -> Option<(f64, f64, f64)> {
    let line = out.lines().find(|l| l.contains("min/avg/max"))?;
    let nums: Vec<f64> = line
        .split('=')
        .nth(1)?
        .trim()
        .split(&['/', ' '][..])
        .filter_map(|s| s.parse().ok())
        .collect();
    (nums.len() >= 3).then(|| (nums[0], nums[1], nums[2]))
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| link | set RTT ms | ping RTT min/avg/max ms | set rate Mbit/s | queue KB | TCP goodput Mbit/s: (cc) all / after warm-up | link rate during TCP Mbit/s | TCP packets lost / queue-dropped | set loss % | UDP loss % (n sent) | UDP dropped: random / queue / before the link | late delivery: mean µs / share > 1 ms / max ms | priority | load avg |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let ping = match (r.ping, &r.ping_error) {
            (Some((a, b, c)), _) => format!("{a:.2} / {b:.2} / {c:.2}"),
            (None, e) => format!("n/a ({})", e.as_deref().unwrap_or("")),
        };
        let udp_loss = 100.0 * (1.0 - r.udp_received as f64 / r.udp_sent as f64);
        let delivered = r.tcp_link.delivered + r.udp_link.delivered;
        let late_mean = if delivered == 0 {
            0.0
        } else {
            (r.tcp_link.late_ns_sum + r.udp_link.late_ns_sum) as f64 / delivered as f64 / 1e3
        };
        let late_max = r.tcp_link.late_ns_max.max(r.udp_link.late_ns_max) as f64 / 1e6;
        let late_share = 100.0 * (r.tcp_link.late_over_1ms + r.udp_link.late_over_1ms) as f64
            / delivered.max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {ping} | {} | {} | ({}) {:.1} / {:.1} | {:.1} | {} / {} | {} | {udp_loss:.2} ({}) | {} / {} / {} | {late_mean:.0} / {late_share:.2} % / {late_max:.1} | {} | {} |",
            r.name,
            r.shape.rtt_ms,
            r.shape.rate_mbit,
            r.shape.queue() / 1000,
            r.cc,
            r.tcp_mbit,
            r.tcp_steady_mbit,
            r.tcp_wire_mbit,
            r.tcp_link.lost,
            r.tcp_link.queue_full,
            r.shape.loss_percent,
            r.udp_sent,
            r.udp_link.lost,
            r.udp_link.queue_full,
            r.udp_sent.saturating_sub(r.udp_link.offered),
            if r.realtime { "FIFO" } else { "normal" },
            r.load,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ping_summary() {
        let out = "--- 10.231.0.2 ping statistics ---\n20 packets transmitted, 20 received, 0% packet loss, time 960ms\nrtt min/avg/max/mdev = 30.101/30.254/30.612/0.100 ms\n";
        assert_eq!(super::parse_ping(out), Some((30.101, 30.254, 30.612)));
    }
}
