//! One direction of the link: read packets from one TUN device, schedule them, write them
//! into the other at their time.

use std::{
    collections::VecDeque,
    os::fd::{AsRawFd, OwnedFd},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Instant,
};

use super::sched::{Scheduler, Verdict};

/// The last stretch before a packet's time is spun rather than slept, ns.
pub(crate) const SPIN_NS: u64 = 20_000;
/// Longest sleep, ns, so that a stop request is seen soon.
const MAX_SLEEP_NS: u64 = 50_000_000;
/// Packets read in one go before delivering due ones again.
const READ_BATCH: usize = 64;
/// Read buffer: the MTU and some.
const BUF: usize = 2048;

/// Counters of one direction.
#[derive(Debug, Default)]
pub(crate) struct DirStats {
    offered: AtomicU64,
    offered_bytes: AtomicU64,
    lost: AtomicU64,
    queue_full: AtomicU64,
    delivered: AtomicU64,
    delivered_bytes: AtomicU64,
    write_errors: AtomicU64,
    late_ns_sum: AtomicU64,
    late_ns_max: AtomicU64,
    late_over_1ms: AtomicU64,
}

/// A copy of one direction's counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StatsSnapshot {
    /// Packets read from the sending side.
    pub(crate) offered: u64,
    /// Their bytes.
    pub(crate) offered_bytes: u64,
    /// Dropped at random.
    pub(crate) lost: u64,
    /// Dropped by the full queue.
    pub(crate) queue_full: u64,
    /// Written into the receiving side.
    pub(crate) delivered: u64,
    /// Their bytes.
    pub(crate) delivered_bytes: u64,
    /// Writes that failed.
    pub(crate) write_errors: u64,
    /// Sum over delivered packets of how late they were written, ns.
    pub(crate) late_ns_sum: u64,
    /// The latest delivery, ns after its time.
    pub(crate) late_ns_max: u64,
    /// Deliveries more than 1 ms late.
    pub(crate) late_over_1ms: u64,
}

impl StatsSnapshot {
    /// Counts between `earlier` and `self` (the maximum lateness is the one so far).
    pub(crate) fn since(&self, earlier: &Self) -> Self {
        Self {
            offered: self.offered - earlier.offered,
            offered_bytes: self.offered_bytes - earlier.offered_bytes,
            lost: self.lost - earlier.lost,
            queue_full: self.queue_full - earlier.queue_full,
            delivered: self.delivered - earlier.delivered,
            delivered_bytes: self.delivered_bytes - earlier.delivered_bytes,
            write_errors: self.write_errors - earlier.write_errors,
            late_ns_sum: self.late_ns_sum - earlier.late_ns_sum,
            late_ns_max: self.late_ns_max,
            late_over_1ms: self.late_over_1ms - earlier.late_over_1ms,
        }
    }
}

impl DirStats {
    /// The counters now.
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            offered: r(&self.offered),
            offered_bytes: r(&self.offered_bytes),
            lost: r(&self.lost),
            queue_full: r(&self.queue_full),
            delivered: r(&self.delivered),
            delivered_bytes: r(&self.delivered_bytes),
            write_errors: r(&self.write_errors),
            late_ns_sum: r(&self.late_ns_sum),
            late_ns_max: r(&self.late_ns_max),
            late_over_1ms: r(&self.late_over_1ms),
        }
    }
}

struct Packet {
    at: u64,
    len: usize,
    buf: Box<[u8]>,
}

/// Forwards from `from` to `to` until `stop` is set. Times count from `start`. With
/// `realtime`, the thread asks for SCHED_FIFO priority 10 first.
pub(crate) fn run(
    realtime: bool,
    from: &OwnedFd,
    to: &OwnedFd,
    sched: &mut Scheduler,
    stats: &DirStats,
    stop: &AtomicBool,
    start: Instant,
) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack (1 ns instead of
    // 50 µs), so that sleeps end on time.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    if realtime {
        let p = libc::sched_param { sched_priority: 10 };
        // SAFETY: pid 0 is this thread; only its scheduling policy changes.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } != 0 {
            eprintln!(
                "link: no real-time priority ({}); other load will delay packets more",
                std::io::Error::last_os_error()
            );
        }
    }
    let now = || start.elapsed().as_nanos() as u64;
    let add = |a: &AtomicU64, v: u64| {
        a.fetch_add(v, Ordering::Relaxed);
    };
    // Buffers are reused: the delay line holds at most the packets in flight, and spares go
    // back to `free`.
    let mut line: VecDeque<Packet> = VecDeque::with_capacity(4096);
    let mut free: Vec<Box<[u8]>> = Vec::with_capacity(4096);
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    while !stop.load(Ordering::Relaxed) {
        // Deliver what is due.
        let mut t = now();
        while line.front().is_some_and(|p| p.at <= t) {
            let p = line.pop_front().expect("checked");
            // SAFETY: writing p.len initialized bytes of p.buf.
            let n = unsafe { libc::write(dst, p.buf.as_ptr().cast(), p.len) };
            t = now();
            if n < 0 {
                add(&stats.write_errors, 1);
            } else {
                add(&stats.delivered, 1);
                add(&stats.delivered_bytes, p.len as u64);
                let late = t.saturating_sub(p.at);
                add(&stats.late_ns_sum, late);
                stats.late_ns_max.fetch_max(late, Ordering::Relaxed);
                if late > 1_000_000 {
                    add(&stats.late_over_1ms, 1);
                }
            }
            free.push(p.buf);
        }
        // Take what has arrived.
        for _ in 0..READ_BATCH {
            let mut buf = free
                .pop()
                .unwrap_or_else(|| vec![0; BUF].into_boxed_slice());
            // SAFETY: reading into a buffer of buf.len() bytes.
            let n = unsafe { libc::read(src, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                free.push(buf);
                break;
            }
            let len = n as usize;
            add(&stats.offered, 1);
            add(&stats.offered_bytes, len as u64);
            match sched.offer(now(), len as u64) {
                Verdict::Lost => {
                    add(&stats.lost, 1);
                    free.push(buf);
                }
                Verdict::QueueFull => {
                    add(&stats.queue_full, 1);
                    free.push(buf);
                }
                Verdict::Deliver { at, .. } => line.push_back(Packet { at, len, buf }),
            }
        }
        // Wait for the next packet's time or for input, whichever comes first.
        let t = now();
        let wait = line
            .front()
            .map_or(MAX_SLEEP_NS, |p| p.at.saturating_sub(t))
            .min(MAX_SLEEP_NS);
        if wait <= SPIN_NS {
            std::hint::spin_loop();
            continue;
        }
        let sleep = wait - SPIN_NS;
        let ts = libc::timespec {
            tv_sec: (sleep / 1_000_000_000) as libc::time_t,
            tv_nsec: (sleep % 1_000_000_000) as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd: src,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask change.
        unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    }
}
