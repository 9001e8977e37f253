//! An emulated link of our own: two network namespaces made by the benchmark, one TUN device
//! in each, and user-space forwarding between them that adds a one-way delay, a rate limit
//! with a drop-tail queue, and random loss, to every IP packet (TCP and UDP alike).
//!
//! Each direction is one thread. It reads every packet that its side's kernel sends into the
//! TUN device and asks [`sched::Scheduler`] whether it is lost at random, dropped because the
//! bottleneck queue is full, or when it arrives: it leaves the bottleneck at
//! `max(now, previous departure) + size × 8 / rate` and arrives RTT / 2 later. The thread
//! writes it into the other TUN device at that time, sleeping with `ppoll` at 1 ns timer
//! slack and spinning the last [`forward::SPIN_NS`], at real-time priority (SCHED_FIFO)
//! unless the shape says otherwise.
//!
//! Nothing outside the two namespaces is touched: the TUN devices are created inside them (by
//! a thread that has joined the namespace), and deleting the namespaces on drop removes
//! everything; so does Ctrl-C (see [`n2p_testkit::netns`]).

pub(crate) mod check;
mod forward;
mod sched;

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use n2p_testkit::netns::{Netns, in_netns, ip};
use serde::Serialize;

use crate::forwarders::Net;
pub(crate) use forward::{DirStats, StatsSnapshot};

/// The link's shape; both directions get the same.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Shape {
    /// Round-trip time added, in milliseconds (half in each direction).
    pub(crate) rtt_ms: u32,
    /// Bottleneck rate of each direction, in Mbit/s (IP packets, headers included).
    pub(crate) rate_mbit: u32,
    /// Probability, in percent, that a packet is lost, in each direction independently.
    pub(crate) loss_percent: f64,
    /// Drop-tail queue of each direction's bottleneck in bytes; `None`: one bandwidth-delay
    /// product (rate × RTT), at least 32 full-size packets.
    pub(crate) queue_bytes: Option<u64>,
    /// Seed of the loss generator (the client-to-server direction uses it, the other
    /// direction its bitwise complement).
    pub(crate) seed: u64,
    /// Run the forwarding threads at real-time priority (SCHED_FIFO 10), so that other load
    /// on the machine delays packets less.
    pub(crate) realtime: bool,
}

impl Shape {
    /// A lossless link with the default queue.
    pub(crate) fn new(rtt_ms: u32, rate_mbit: u32) -> Self {
        Self {
            rtt_ms,
            rate_mbit,
            loss_percent: 0.0,
            queue_bytes: None,
            seed: 0x6e32_706c_696e_6b00,
            realtime: true,
        }
    }

    /// The queue size in force, bytes.
    pub(crate) fn queue(&self) -> u64 {
        self.queue_bytes.unwrap_or_else(|| {
            let bdp = u64::from(self.rate_mbit) * 1_000_000 / 8 * u64::from(self.rtt_ms) / 1000;
            bdp.max(32 * u64::from(MTU))
        })
    }

    fn scheduler(&self, seed: u64) -> sched::Scheduler {
        sched::Scheduler::new(
            u64::from(self.rate_mbit) * 1_000_000,
            u64::from(self.rtt_ms) * 1_000_000 / 2,
            self.queue(),
            self.loss_percent / 100.0,
            seed,
        )
    }
}

/// The MTU of both TUN devices.
pub(crate) const MTU: u32 = 1500;
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
/// The sysctl of a namespace's TCP congestion control.
const TCP_CC: &str = "net/ipv4/tcp_congestion_control";
/// The TUN device's name inside each namespace.
const DEV: &str = "n2pl0";
/// Prefix of the namespaces' names (see [`Netns::create`]).
const PREFIX: &str = "n2pb-";

/// Two namespaces joined by the emulated link; dropping it stops the forwarding and deletes
/// both namespaces.
pub(crate) struct Link {
    // Dropped after the threads stop (see `Drop`), which deletes the namespaces.
    client_ns: Netns,
    server_ns: Netns,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: [Arc<DirStats>; 2],
}

impl Link {
    /// Creates the namespaces and TUN devices and starts forwarding. Namespaces left by
    /// benchmark processes that no longer run are removed first.
    pub(crate) fn create(shape: Shape) -> Result<Self> {
        if shape.rate_mbit == 0 {
            bail!("the link rate must be above 0 Mbit/s");
        }
        if !(0.0..=100.0).contains(&shape.loss_percent) {
            bail!("loss must be within 0..100 %");
        }
        let mut link = Self {
            client_ns: Netns::create(PREFIX, "c")?,
            server_ns: Netns::create(PREFIX, "s")?,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            stats: Default::default(),
        };
        // From here on, drop cleans up whatever exists.
        let client = side(&link.client_ns, CLIENT_IP)?;
        let server = side(&link.server_ns, SERVER_IP)?;
        let (client, server) = (Arc::new(client), Arc::new(server));
        let start = Instant::now();
        for (i, (from, to, seed)) in [
            (&client, &server, shape.seed),
            (&server, &client, !shape.seed),
        ]
        .into_iter()
        .enumerate()
        {
            let (from, to) = (Arc::clone(from), Arc::clone(to));
            let mut sched = shape.scheduler(seed);
            let (stop, stats) = (Arc::clone(&link.stop), Arc::clone(&link.stats[i]));
            let name = ["link c->s", "link s->c"][i];
            link.threads.push(
                std::thread::Builder::new()
                    .name(name.to_owned())
                    .spawn(move || {
                        forward::run(shape.realtime, &from, &to, &mut sched, &stats, &stop, start)
                    })
                    .context("starting a forwarding thread")?,
            );
        }
        Ok(link)
    }

    /// Where the forwarders' two ends run.
    pub(crate) fn net(&self) -> Net {
        Net {
            client_ns: Some(self.client_ns.name().to_owned()),
            server_ns: Some(self.server_ns.name().to_owned()),
            client_ip: IpAddr::V4(CLIENT_IP),
            server_ip: IpAddr::V4(SERVER_IP),
            quic_stats: true,
            socat_cc: None,
        }
    }

    /// Sets the TCP congestion control of both namespaces (new sockets in them use it).
    pub(crate) fn set_tcp_congestion(&self, cc: &str) -> Result<()> {
        for ns in [&self.client_ns, &self.server_ns] {
            ns.sysctl(TCP_CC, cc)
                .with_context(|| format!("TCP congestion control {cc}"))?;
        }
        Ok(())
    }

    /// The TCP congestion control new sockets in the client namespace use.
    pub(crate) fn tcp_congestion(&self) -> Result<String> {
        let file = format!("/proc/sys/{TCP_CC}");
        let cc = in_netns(self.client_ns.path(), move || {
            fs::read_to_string(&file).map_err(|e| n2p_testkit::Failure::new(format!("{file}: {e}")))
        })?;
        Ok(cc.trim().to_owned())
    }

    /// Counters so far: client to server, then server to client.
    pub(crate) fn stats(&self) -> [StatsSnapshot; 2] {
        [self.stats[0].snapshot(), self.stats[1].snapshot()]
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().ok();
        }
        // The TUN fds were closed with the threads' last references; the namespaces, and
        // whatever is left in them, are deleted when the fields drop after this.
    }
}

/// Adds the TUN device at `addr` to the namespace `ns`.
fn side(ns: &Netns, addr: Ipv4Addr) -> Result<OwnedFd> {
    let tun = in_netns(ns.path(), || {
        // No IPv6 on the link: no router solicitations or MLD reports in the numbers.
        fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1").ok();
        fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1").ok();
        open_tun(DEV)
    })?;
    let net = format!("{addr}/24");
    ip(&["-n", ns.name(), "addr", "add", &net, "dev", DEV])?;
    ip(&[
        "-n",
        ns.name(),
        "link",
        "set",
        DEV,
        "mtu",
        &MTU.to_string(),
        "up",
    ])?;
    Ok(tun)
}

/// Opens a new non-blocking TUN device `name` (IP packets, no packet-info header) in this
/// thread's namespace.
fn open_tun(name: &str) -> Result<OwnedFd> {
    // SAFETY: a plain open(2) of a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        bail!("opening /dev/net/tun: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct ifreq: the name, then a union whose first member used here is the flags.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _rest: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _rest: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `req` is laid out as.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}
