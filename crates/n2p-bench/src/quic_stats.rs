//! What the QUIC connection itself counted during one transfer: the `n2p::stats` lines an
//! n2p client logs on the emulated link (`n2p_core::conn_stats`), read before and after
//! the nix command. The counters in a line are cumulative over the connection, so a
//! transfer's share is the difference between the last line before it and the last one
//! after it; window and RTT are taken from the lines logged meanwhile (one a second while
//! busy, one when idle again).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;

/// `RUST_LOG` for n2p processes whose connection stats the bench reads: n2p's default levels
/// plus the stats lines.
const RUST_LOG: &str = "warn,n2p=info,n2p_core=info,n2p_mesh=info,n2p::stats=debug";

/// Names the environment variable whose directives are added to [`RUST_LOG`] (e.g.
/// `n2p_cache::facade=debug`, to see narinfo lookups that end at the deadline).
pub(crate) const EXTRA_LOG_VAR: &str = "N2P_BENCH_LOG";

/// [`RUST_LOG`], with the directives of [`EXTRA_LOG_VAR`] if it is set.
pub(crate) fn rust_log() -> String {
    match std::env::var(EXTRA_LOG_VAR) {
        Ok(extra) if !extra.trim().is_empty() => format!("{RUST_LOG},{}", extra.trim()),
        _ => RUST_LOG.to_owned(),
    }
}

/// How long to wait after a transfer for the line that says the connection went idle.
const IDLE_LINE_WAIT: Duration = Duration::from_secs(2);

/// One parsed stats line.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Line {
    /// busy, idle or closed.
    pub(crate) state: String,
    /// dial or accept.
    pub(crate) side: String,
    /// Smoothed RTT, ms.
    pub(crate) rtt_ms: f64,
    /// Congestion window, bytes.
    pub(crate) cwnd: u64,
    /// Path MTU (UDP payload).
    pub(crate) mtu: u64,
    /// Cumulative counters.
    pub(crate) sent_packets: u64,
    pub(crate) sent_bytes: u64,
    pub(crate) lost_packets: u64,
    pub(crate) lost_bytes: u64,
    pub(crate) congestion_events: u64,
    pub(crate) spurious_congestion_events: u64,
    pub(crate) black_holes: u64,
    pub(crate) lost_mtu_probes: u64,
}

/// Parses one log line; None when it is not a stats line.
pub(crate) fn parse_line(line: &str) -> Option<Line> {
    let rest = &line[line.find("quic stats:")? + "quic stats:".len()..];
    let mut out = Line::default();
    for word in rest.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let n = || value.parse::<u64>().ok();
        match key {
            "state" => out.state = value.to_owned(),
            "side" => out.side = value.to_owned(),
            "rtt_ms" => out.rtt_ms = value.parse().ok()?,
            "cwnd" => out.cwnd = n()?,
            "mtu" => out.mtu = n()?,
            "sent_packets" => out.sent_packets = n()?,
            "sent_bytes" => out.sent_bytes = n()?,
            "lost_packets" => out.lost_packets = n()?,
            "lost_bytes" => out.lost_bytes = n()?,
            "congestion_events" => out.congestion_events = n()?,
            "spurious_congestion_events" => out.spurious_congestion_events = n()?,
            "black_holes" => out.black_holes = n()?,
            "lost_mtu_probes" => out.lost_mtu_probes = n()?,
            _ => {}
        }
    }
    (!out.state.is_empty()).then_some(out)
}

/// The dialing side's stats lines in `text`, in order.
pub(crate) fn dial_lines(text: &str) -> Vec<Line> {
    text.lines()
        .filter_map(parse_line)
        .filter(|l| l.side == "dial")
        .collect()
}

/// What the connection counted during one transfer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct QuicSample {
    /// QUIC packets sent.
    pub(crate) sent_packets: u64,
    /// Packets declared lost.
    pub(crate) lost_packets: u64,
    /// Bytes declared lost.
    pub(crate) lost_bytes: u64,
    /// lost / sent packets, percent.
    pub(crate) loss_percent: f64,
    /// Congestion events (window cuts).
    pub(crate) congestion_events: u64,
    /// Of those, found spurious afterwards.
    pub(crate) spurious_congestion_events: u64,
    /// MTU black holes detected.
    pub(crate) black_holes: u64,
    /// Lost MTU probes.
    pub(crate) lost_mtu_probes: u64,
    /// Largest congestion window in the lines of the transfer, bytes.
    pub(crate) cwnd_max: u64,
    /// Median congestion window in the lines of the transfer, bytes.
    pub(crate) cwnd_median: u64,
    /// Smallest congestion window in the lines of the transfer, bytes.
    pub(crate) cwnd_min: u64,
    /// Largest smoothed RTT in the lines of the transfer, ms.
    pub(crate) rtt_ms_max: f64,
    /// Path MTU at the end.
    pub(crate) mtu: u64,
}

/// The sample from the last line before the transfer (None: the connection had logged
/// nothing yet) and the lines after it. When the counters went down, the client has a new
/// connection since (the old one closed): its counters started from zero.
pub(crate) fn sample(before: Option<&Line>, during: &[Line]) -> Option<QuicSample> {
    let end = during.last()?;
    let zero = Line::default();
    let b = before
        .filter(|b| b.sent_packets <= end.sent_packets)
        .unwrap_or(&zero);
    let d = |f: fn(&Line) -> u64| f(end).saturating_sub(f(b));
    let sent = d(|l| l.sent_packets);
    let lost = d(|l| l.lost_packets);
    let mut cwnds: Vec<u64> = during.iter().map(|l| l.cwnd).collect();
    cwnds.sort_unstable();
    Some(QuicSample {
        sent_packets: sent,
        lost_packets: lost,
        lost_bytes: d(|l| l.lost_bytes),
        loss_percent: if sent == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / sent as f64
        },
        congestion_events: d(|l| l.congestion_events),
        spurious_congestion_events: d(|l| l.spurious_congestion_events),
        black_holes: d(|l| l.black_holes),
        lost_mtu_probes: d(|l| l.lost_mtu_probes),
        cwnd_max: cwnds.last().copied().unwrap_or(0),
        cwnd_median: cwnds[cwnds.len() / 2],
        cwnd_min: cwnds[0],
        rtt_ms_max: during.iter().map(|l| l.rtt_ms).fold(0.0, f64::max),
        mtu: end.mtu,
    })
}

/// Watches one n2p client's log across a transfer.
pub(crate) struct Watch<'a> {
    log: &'a Path,
    before: Vec<Line>,
}

impl<'a> Watch<'a> {
    /// Reads the lines logged so far.
    pub(crate) fn start(log: &'a Path) -> Self {
        Self {
            log,
            before: read(log),
        }
    }

    /// After the transfer: waits (bounded) until the connection has logged that it went
    /// idle, then takes the difference.
    pub(crate) fn finish(self) -> Option<QuicSample> {
        let n = self.before.len();
        let deadline = Instant::now() + IDLE_LINE_WAIT;
        let mut at_end = read(self.log);
        let ended_idle =
            |lines: &[Line]| lines.len() > n && lines.last().is_some_and(|l| l.state != "busy");
        while !ended_idle(&at_end) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            at_end = read(self.log);
        }
        sample(self.before.last(), at_end.get(n..).unwrap_or_default())
    }
}

fn read(log: &Path) -> Vec<Line> {
    std::fs::read_to_string(log)
        .map(|t| dial_lines(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "2026-11-29T09:40:02.684008Z DEBUG n2p::stats: quic stats: state=busy \
        side=dial peer=cea90a0a15 rtt_ms=6.1 cwnd=3669698 bw_mbit=- mtu=1452 sent_packets=8303 \
        sent_bytes=11985036 lost_packets=2 lost_bytes=2904 congestion_events=1 \
        spurious_congestion_events=0 black_holes=0 lost_mtu_probes=0 paths=1";

    #[test]
    fn parses_a_line_and_skips_others() {
        let l = parse_line(LINE).expect("a stats line");
        assert_eq!(l.state, "busy");
        assert_eq!(l.side, "dial");
        assert_eq!(l.rtt_ms, 6.1);
        assert_eq!((l.cwnd, l.mtu, l.sent_packets), (3_669_698, 1452, 8303));
        assert_eq!(
            (l.lost_packets, l.lost_bytes, l.congestion_events),
            (2, 2904, 1)
        );
        assert_eq!(parse_line("INFO n2p: connected"), None);
        assert_eq!(parse_line("quic stats: state=busy cwnd=x"), None);
    }

    #[test]
    fn a_sample_is_the_difference_of_the_counters() {
        let line = |state: &str, sent, lost, events, cwnd, rtt| Line {
            state: state.to_owned(),
            side: "dial".to_owned(),
            sent_packets: sent,
            lost_packets: lost,
            congestion_events: events,
            cwnd,
            rtt_ms: rtt,
            mtu: 1452,
            ..Line::default()
        };
        let before = line("idle", 1000, 10, 2, 50_000, 30.0);
        let during = [
            line("busy", 3000, 20, 5, 80_000, 45.0),
            line("busy", 5000, 30, 7, 20_000, 31.0),
            line("idle", 6000, 40, 8, 30_000, 30.5),
        ];
        let s = sample(Some(&before), &during).expect("a sample");
        assert_eq!(
            (s.sent_packets, s.lost_packets, s.congestion_events),
            (5000, 30, 6)
        );
        assert!((s.loss_percent - 0.6).abs() < 1e-9);
        assert_eq!(
            (s.cwnd_max, s.cwnd_median, s.cwnd_min),
            (80_000, 30_000, 20_000)
        );
        assert_eq!(s.rtt_ms_max, 45.0);
        assert_eq!(sample(Some(&before), &[]), None);
        let first = sample(None, &during[..1]).expect("a sample");
        assert_eq!(first.sent_packets, 3000);
        // A new connection counts from zero.
        let fresh = sample(Some(&during[2]), &during[..1]).expect("a sample");
        assert_eq!((fresh.sent_packets, fresh.lost_packets), (3000, 20));
    }

    #[test]
    fn only_the_dialing_side_counts() {
        let text = format!(
            "{LINE}\n{}\nINFO other\n",
            LINE.replace("side=dial", "side=accept")
        );
        assert_eq!(dial_lines(&text).len(), 1);
    }
}
