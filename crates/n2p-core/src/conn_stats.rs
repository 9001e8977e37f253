//! The QUIC connection's own statistics as debug log lines (target `n2p::stats`): RTT,
//! congestion window, path MTU, packets and bytes sent and lost, congestion events and
//! black-hole detections, as noq counts them.
//!
//! [`spawn_logger`] watches one connection while the target is enabled
//! (`RUST_LOG=...,n2p::stats=debug`): every [`TICK`] it reads the counters; while the
//! connection sends it logs a `state=busy` line every [`BUSY_EVERY`], and one `state=idle`
//! line when it has gone quiet again (the totals of the burst), and a `state=closed` line
//! when it closes. The counters are cumulative over the connection, so the difference of two
//! lines is what happened between them. Keep-alives alone (a few packets per tick) do not
//! count as busy. Nothing is spawned while the target is disabled.

use std::time::{Duration, Instant};

use iroh::endpoint::{Connection, ConnectionStats, PathStats, WeakConnectionHandle};
use tracing::{Level, debug, enabled};

/// The log target of the lines.
pub const TARGET: &str = "n2p::stats";

/// How often the counters are read.
pub const TICK: Duration = Duration::from_millis(250);

/// How often a busy connection logs a line.
pub const BUSY_EVERY: Duration = Duration::from_secs(1);

/// Packets sent within one [`TICK`] below which the connection counts as idle (keep-alives,
/// path probes and ACKs of a quiet connection).
const BUSY_PACKETS_PER_TICK: u64 = 8;

/// One reading of a connection's counters: the selected path's RTT, window and MTU, and
/// the connection's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Smoothed RTT of the selected path.
    pub rtt: Duration,
    /// Congestion window of the selected path, bytes.
    pub cwnd: u64,
    /// The controller's bandwidth estimate, bit/s, when it has one (BBR).
    pub bandwidth: Option<u64>,
    /// Largest UDP payload the selected path supports now.
    pub mtu: u16,
    /// QUIC packets sent (ack-eliciting and probes), all paths.
    pub sent_packets: u64,
    /// QUIC bytes sent, all paths.
    pub sent_bytes: u64,
    /// Packets declared lost, all paths.
    pub lost_packets: u64,
    /// Bytes declared lost, all paths.
    pub lost_bytes: u64,
    /// Congestion events (window reductions) on the open paths.
    pub congestion_events: u64,
    /// Congestion events later found spurious, on the open paths.
    pub spurious_congestion_events: u64,
    /// MTU black holes detected on the open paths.
    pub black_holes: u64,
    /// Lost MTU probes on the open paths.
    pub lost_mtu_probes: u64,
    /// Open paths.
    pub paths: usize,
}

impl Snapshot {
    /// The reading of `conn` now.
    pub fn of(conn: &Connection) -> Self {
        let paths = conn.paths();
        let open: Vec<(bool, PathStats)> =
            paths.iter().map(|p| (p.is_selected(), p.stats())).collect();
        Self::from_stats(&conn.stats(), &open)
    }

    /// The reading from the connection's totals and its open paths' stats (selected or not).
    pub fn from_stats(conn: &ConnectionStats, paths: &[(bool, PathStats)]) -> Self {
        let selected = paths
            .iter()
            .find(|(selected, _)| *selected)
            .or(paths.first())
            .map(|(_, p)| *p)
            .unwrap_or_default();
        let sum = |f: fn(&PathStats) -> u64| paths.iter().map(|(_, p)| f(p)).sum();
        Self {
            rtt: selected.rtt,
            cwnd: selected.cwnd,
            bandwidth: selected.bandwidth_estimate,
            mtu: selected.current_mtu,
            sent_packets: conn.sent_packets,
            sent_bytes: conn.sent_bytes,
            lost_packets: conn.lost_packets,
            lost_bytes: conn.lost_bytes,
            congestion_events: sum(|p| p.congestion_events),
            spurious_congestion_events: sum(|p| p.spurious_congestion_events),
            black_holes: sum(|p| p.black_holes_detected),
            lost_mtu_probes: sum(|p| p.lost_plpmtud_probes),
            paths: paths.len(),
        }
    }

    /// The `key=value` fields of a log line.
    pub fn fields(&self) -> String {
        format!(
            "rtt_ms={:.1} cwnd={} bw_mbit={} mtu={} sent_packets={} sent_bytes={} \
             lost_packets={} lost_bytes={} congestion_events={} spurious_congestion_events={} \
             black_holes={} lost_mtu_probes={} paths={}",
            self.rtt.as_secs_f64() * 1000.0,
            self.cwnd,
            self.bandwidth
                .map_or_else(|| "-".to_owned(), |b| format!("{:.1}", b as f64 / 1e6)),
            self.mtu,
            self.sent_packets,
            self.sent_bytes,
            self.lost_packets,
            self.lost_bytes,
            self.congestion_events,
            self.spurious_congestion_events,
            self.black_holes,
            self.lost_mtu_probes,
            self.paths,
        )
    }
}

/// Decides from successive readings when a line is due.
#[derive(Debug)]
pub struct Pacer {
    last_sent: u64,
    busy: bool,
    last_line: Option<Instant>,
}

/// What kind of line is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The connection is sending; the periodic line.
    Busy,
    /// The connection went quiet after sending.
    Idle,
}

impl Due {
    fn name(self) -> &'static str {
        match self {
            Due::Busy => "busy",
            Due::Idle => "idle",
        }
    }
}

impl Pacer {
    /// Starts from a connection that has sent `sent_packets` so far, taken as idle.
    pub fn new(sent_packets: u64) -> Self {
        Self {
            last_sent: sent_packets,
            busy: false,
            last_line: None,
        }
    }

    /// The line due for a reading of `sent_packets` at `now`, one [`TICK`] after the last.
    pub fn observe(&mut self, sent_packets: u64, now: Instant) -> Option<Due> {
        let sent = sent_packets.saturating_sub(self.last_sent);
        self.last_sent = sent_packets;
        if sent >= BUSY_PACKETS_PER_TICK {
            let due = !self.busy
                || self
                    .last_line
                    .is_none_or(|t| now.duration_since(t) >= BUSY_EVERY);
            self.busy = true;
            if due {
                self.last_line = Some(now);
                return Some(Due::Busy);
            }
            None
        } else if self.busy {
            self.busy = false;
            self.last_line = Some(now);
            Some(Due::Idle)
        } else {
            None
        }
    }
}

/// Logs `conn`'s stats as described in the module docs, when the target is enabled at
/// debug level; `side` says which end this is (`dial`, `accept`). Holds only a weak handle:
/// the connection closes as if the logger were not there.
pub fn spawn_logger(conn: &Connection, side: &'static str) {
    if !enabled!(target: TARGET, Level::DEBUG) {
        return;
    }
    let peer = conn.remote_id().fmt_short().to_string();
    let weak = conn.weak_handle();
    let start = Snapshot::of(conn);
    tokio::spawn(log_until_closed(weak, start, side, peer));
}

async fn log_until_closed(
    weak: WeakConnectionHandle,
    start: Snapshot,
    side: &'static str,
    peer: String,
) {
    let mut pacer = Pacer::new(start.sent_packets);
    let mut last = start;
    let closed = weak.closed();
    tokio::pin!(closed);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut closed => break,
            _ = tick.tick() => {
                let Some(conn) = weak.upgrade() else { break };
                if conn.close_reason().is_some() {
                    break;
                }
                last = Snapshot::of(&conn);
                if let Some(due) = pacer.observe(last.sent_packets, Instant::now()) {
                    debug!(target: TARGET, "quic stats: state={} side={side} peer={peer} {}", due.name(), last.fields());
                }
            }
        }
    }
    // The totals as last read: the paths of a closed connection are gone.
    let totals = weak.upgrade().map(|c| c.stats());
    if let Some(t) = totals {
        last.sent_packets = t.sent_packets;
        last.sent_bytes = t.sent_bytes;
        last.lost_packets = t.lost_packets;
        last.lost_bytes = t.lost_bytes;
    }
    debug!(target: TARGET, "quic stats: state=closed side={side} peer={peer} {}", last.fields());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_every_second_then_one_idle_line() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut pacer = Pacer::new(100);
        // Keep-alives only: nothing.
        assert_eq!(pacer.observe(102, at(250)), None);
        // A burst: a line at once, then one a second.
        assert_eq!(pacer.observe(500, at(500)), Some(Due::Busy));
        assert_eq!(pacer.observe(900, at(750)), None);
        assert_eq!(pacer.observe(1300, at(1250)), None);
        assert_eq!(pacer.observe(1700, at(1500)), Some(Due::Busy));
        // Quiet again: one idle line, then nothing.
        assert_eq!(pacer.observe(1703, at(1750)), Some(Due::Idle));
        assert_eq!(pacer.observe(1705, at(2000)), None);
        // The next burst logs at once.
        assert_eq!(pacer.observe(1800, at(2250)), Some(Due::Busy));
    }

    #[test]
    fn snapshot_takes_the_selected_path_and_sums_events() {
        let mut a = PathStats::default();
        a.rtt = Duration::from_millis(30);
        a.cwnd = 40_000;
        a.current_mtu = 1452;
        a.congestion_events = 3;
        a.black_holes_detected = 1;
        let mut b = PathStats::default();
        b.rtt = Duration::from_millis(300);
        b.cwnd = 12_000;
        b.congestion_events = 2;
        let mut totals = ConnectionStats::default();
        totals.sent_packets = 1000;
        totals.lost_packets = 5;
        let s = Snapshot::from_stats(&totals, &[(false, b), (true, a)]);
        assert_eq!(s.rtt, Duration::from_millis(30));
        assert_eq!(s.cwnd, 40_000);
        assert_eq!(s.mtu, 1452);
        assert_eq!(s.congestion_events, 5);
        assert_eq!(s.black_holes, 1);
        assert_eq!((s.sent_packets, s.lost_packets, s.paths), (1000, 5, 2));
        let line = s.fields();
        assert!(
            line.starts_with("rtt_ms=30.0 cwnd=40000 bw_mbit=- mtu=1452 "),
            "{line}"
        );
        assert!(line.contains(" lost_packets=5 "), "{line}");
    }

    #[test]
    fn snapshot_without_paths_is_zero_but_keeps_the_totals() {
        let mut totals = ConnectionStats::default();
        totals.sent_bytes = 7;
        let s = Snapshot::from_stats(&totals, &[]);
        assert_eq!((s.cwnd, s.paths, s.sent_bytes), (0, 0, 7));
    }
}
