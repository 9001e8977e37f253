//! Cubic (RFC 9438) with HyStart++ (RFC 9406): the window that [`super::TolerantCubic`]
//! keeps or cuts.
//!
//! It differs from noq's Cubic, which `tolerant` wrapped before, in two ways, both from the
//! RFCs (docs/BENCHMARKS.md, "Cubic with HyStart++ in `tolerant`"):
//!
//! - **Slow start watches the RTT** (HyStart++). noq's slow start ends only with a loss:
//!   the window doubles every round trip until the bottleneck's queue overflows. HyStart++
//!   takes the minimum RTT of each round trip: when it rises by an eighth of the previous
//!   round's (4–16 ms), the queue is filling, and growth slows to a quarter
//!   ("conservative slow start") for at most [`CSS_ROUNDS`] rounds before congestion
//!   avoidance takes over, without a cut. Only the first slow start uses it, as the RFC
//!   advises. The rise shows a round trip late, so a queue of one bandwidth-delay product
//!   (the bench's link emulator by default) can still overflow before growth slows; with
//!   a queue of two, a connection's start lost about a third fewer packets.
//! - **Growth is at most half a window per round trip**: the target on the cubic curve is
//!   capped at 1.5 windows (RFC 9438, section 4.2). noq's grows by one packet per packet
//!   acknowledged, as fast as slow start, whenever the curve is far above the window.
//!   Since the curve's clock runs on while a connection is idle (in both), that is the
//!   case every time a warm connection sends again after a pause: noq's window then
//!   doubled each round trip into a burst of losses, this one regains its window within a
//!   few round trips at half a window per round trip. (Restarting slow start after idle
//!   instead was tried and cost more than it saved: docs/BENCHMARKS.md, the paragraph
//!   "The window after idle".)
//!
//! The rest follows RFC 9438 as noq's does: β = 0.7, C = 0.4, fast convergence, the
//! Reno-friendly estimate, and undo of a reduction found spurious.

use std::time::{Duration, Instant};

use noq_proto::{
    RttEstimator,
    congestion::{Controller, ControllerMetrics},
};

/// Multiplicative decrease (RFC 9438, section 4.6).
const BETA: f64 = 0.7;

/// The cubic curve's scale, in packets per second cubed (RFC 9438, section 4.2).
const C: f64 = 0.4;

/// Additive increase of the Reno-friendly estimate per window, in packets (RFC 9438,
/// section 4.3): `3 (1 - β) / (1 + β)`.
const ALPHA: f64 = 3.0 * (1.0 - BETA) / (1.0 + BETA);

/// RTT samples a round needs before its minimum counts (RFC 9406 `N_RTT_SAMPLE`).
const RTT_SAMPLES: u32 = 8;

/// Bounds of the RTT rise that ends slow start (RFC 9406 `MIN_RTT_THRESH`,
/// `MAX_RTT_THRESH`); between them, an eighth of the last round's minimum
/// (`MIN_RTT_DIVISOR`).
const RTT_THRESH_MIN: Duration = Duration::from_millis(4);
const RTT_THRESH_MAX: Duration = Duration::from_millis(16);
const RTT_THRESH_DIVISOR: u32 = 8;

/// Conservative slow start grows by a quarter of what is acknowledged (RFC 9406
/// `CSS_GROWTH_DIVISOR`).
const CSS_GROWTH_DIVISOR: u64 = 4;

/// Rounds of conservative slow start before congestion avoidance (RFC 9406 `CSS_ROUNDS`).
const CSS_ROUNDS: u32 = 5;

/// The window a path starts with: RFC 9002's `min(10 × mtu, max(14720, 2 × mtu))` for
/// QUIC's 1200-byte minimum datagram, 12,000 bytes (as noq's Cubic).
pub(crate) const INITIAL_WINDOW: u64 = 12_000;

/// Cubic with HyStart++; see the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Cubic {
    state: State,
    /// The state before the last reduction, restored if the loss proves spurious.
    before_cut: Option<State>,
    /// Largest packet number sent so far (ends HyStart++'s rounds).
    largest_sent: u64,
}

#[derive(Debug, Clone)]
struct State {
    mtu: u64,
    /// The congestion window, bytes.
    window: u64,
    /// Slow start while the window is below this, bytes.
    ssthresh: u64,
    /// The window before the last reduction, bytes (`W_max`).
    w_max: f64,
    /// Seconds the curve takes from the window after a reduction back to `w_max` (`K`).
    k: f64,
    /// Start of the congestion-avoidance epoch (`t = 0` on the curve); `None` until the first
    /// acknowledgement in congestion avoidance after a reduction or slow start.
    epoch: Option<Instant>,
    /// The Reno-friendly estimate (`W_est`), bytes.
    w_est: f64,
    /// Growth earned but not yet whole bytes.
    credit: f64,
    /// Losses of packets sent before this belong to the reduction already made.
    recovery_start: Option<Instant>,
    /// HyStart++ while the first slow start lasts.
    hystart: Option<HyStart>,
}

/// HyStart++'s rounds (RFC 9406, section 4.3).
#[derive(Debug, Clone, Default)]
struct HyStart {
    /// The round ends when a packet numbered above this is acknowledged.
    round_end: u64,
    /// Minimum RTT of the last complete round.
    last_min: Option<Duration>,
    /// Minimum RTT of this round so far, and how many samples it has.
    min: Option<Duration>,
    samples: u32,
    /// In conservative slow start: the minimum RTT that started it, and rounds done.
    css: Option<(Duration, u32)>,
}

/// What a slow-start acknowledgement asks of the window.
#[derive(Debug, PartialEq, Eq)]
enum SlowStart {
    /// Grow by what was acknowledged, divided by this.
    Grow(u64),
    /// Conservative slow start is over: congestion avoidance from here, without a cut.
    Exit,
}

impl HyStart {
    /// Takes the acknowledgement of packet `pn` with RTT sample `rtt`, while `largest_sent`
    /// is the largest packet number sent.
    fn on_ack(&mut self, pn: u64, rtt: Duration, largest_sent: u64) -> SlowStart {
        if pn > self.round_end {
            // A new round: what was sent since the last round began is acknowledged.
            self.round_end = largest_sent;
            self.last_min = self.min.take();
            self.samples = 0;
            if let Some((_, rounds)) = &mut self.css {
                *rounds += 1;
                if *rounds >= CSS_ROUNDS {
                    return SlowStart::Exit;
                }
            }
        }
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        self.samples += 1;
        if self.samples >= RTT_SAMPLES
            && let (Some(min), Some(last)) = (self.min, self.last_min)
        {
            match self.css {
                None => {
                    let thresh = (last / RTT_THRESH_DIVISOR).clamp(RTT_THRESH_MIN, RTT_THRESH_MAX);
                    if min >= last + thresh {
                        tracing::debug!(
                            target: crate::conn_stats::TARGET,
                            "slow start: the RTT rose from {:.1} to {:.1} ms, growing by a quarter",
                            last.as_secs_f64() * 1e3,
                            min.as_secs_f64() * 1e3,
                        );
                        self.css = Some((min, 0));
                    }
                }
                // The RTT fell back: the rise was not the queue filling (RFC 9406: back to
                // slow start).
                Some((baseline, _)) if min < baseline => self.css = None,
                Some(_) => {}
            }
        }
        SlowStart::Grow(if self.css.is_some() {
            CSS_GROWTH_DIVISOR
        } else {
            1
        })
    }
}

impl State {
    fn min_window(&self) -> u64 {
        2 * self.mtu
    }

    /// The cubic curve at `t` seconds into the epoch, bytes (RFC 9438, eq. 1).
    fn w_cubic(&self, t: f64) -> f64 {
        let mtu = self.mtu as f64;
        (C * (t - self.k).powi(3) + self.w_max / mtu) * mtu
    }

    /// Grows the window in congestion avoidance for `bytes` acknowledged at `now`.
    fn avoid_congestion(&mut self, now: Instant, bytes: u64, rtt: Duration) {
        let window = self.window as f64;
        let mtu = self.mtu as f64;
        let epoch = *self.epoch.get_or_insert_with(|| {
            // A new epoch: after a reduction the curve climbs back to `w_max`; after slow
            // start (no reduction yet, or one long outgrown) it starts at the window.
            if self.w_max <= window {
                self.w_max = window;
                self.k = 0.0;
            } else {
                self.k = ((self.w_max - window) / mtu / C).cbrt();
            }
            self.w_est = window;
            now
        });
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        self.w_est += ALPHA * mtu * bytes as f64 / window;
        let target = self
            .w_cubic(t + rtt.as_secs_f64())
            .clamp(window, 1.5 * window);
        if self.w_cubic(t) < self.w_est {
            // The Reno-friendly region: at least as fast as Reno would grow.
            self.credit += (self.w_est - window).max(0.0);
        } else {
            self.credit += (target - window) * bytes as f64 / window;
        }
        let whole = self.credit.floor();
        self.credit -= whole;
        self.window += whole as u64;
    }
}

impl Cubic {
    /// A path's controller, in slow start from [`INITIAL_WINDOW`].
    pub(crate) fn new(mtu: u16) -> Self {
        Self {
            state: State {
                mtu: u64::from(mtu),
                window: INITIAL_WINDOW,
                ssthresh: u64::MAX,
                w_max: 0.0,
                k: 0.0,
                epoch: None,
                w_est: 0.0,
                credit: 0.0,
                recovery_start: None,
                hystart: Some(HyStart::default()),
            },
            before_cut: None,
            largest_sent: 0,
        }
    }

    /// Whether the window is still in slow start.
    #[cfg(test)]
    fn in_slow_start(&self) -> bool {
        self.state.window < self.state.ssthresh
    }

    /// [`Controller::on_ack`] with the path's smoothed RTT (noq's estimator cannot be made
    /// outside noq, so tests call this).
    fn ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        pn: u64,
        app_limited: bool,
        smoothed_rtt: Duration,
    ) {
        let s = &mut self.state;
        if s.recovery_start.is_some_and(|start| sent <= start) {
            return;
        }
        if s.window < s.ssthresh {
            let step = match &mut s.hystart {
                // The sample is this packet's own: noq reports the acknowledgement before
                // its estimator takes the sample.
                Some(h) => h.on_ack(pn, now.saturating_duration_since(sent), self.largest_sent),
                None => SlowStart::Grow(1),
            };
            match step {
                SlowStart::Exit => {
                    tracing::debug!(
                        target: crate::conn_stats::TARGET,
                        "slow start ended at a window of {} bytes, without a loss",
                        s.window,
                    );
                    s.ssthresh = s.window;
                    s.hystart = None;
                }
                SlowStart::Grow(_) if app_limited => {}
                SlowStart::Grow(divisor) => s.window += bytes / divisor,
            }
        } else if !app_limited {
            s.avoid_congestion(now, bytes, smoothed_rtt);
        }
    }
}

impl Controller for Cubic {
    fn on_sent(&mut self, _now: Instant, _bytes: u64, largest_pn: u64) {
        self.largest_sent = self.largest_sent.max(largest_pn);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        pn: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.ack(now, sent, bytes, pn, app_limited, rtt.get());
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        is_ecn: bool,
        _lost_bytes: u64,
        _largest_lost_pn: u64,
    ) {
        let in_recovery = self.state.recovery_start.is_some_and(|start| sent <= start);
        if !in_recovery {
            // An ECN cut is never undone, and it ends what an earlier loss's undo could
            // restore.
            self.before_cut = (!is_ecn).then(|| self.state.clone());
            let s = &mut self.state;
            s.hystart = None;
            s.recovery_start = Some(now);
            let window = s.window as f64;
            // Fast convergence: a window that did not reach the last `w_max` yields to
            // others.
            s.w_max = if window < s.w_max {
                window * (1.0 + BETA) / 2.0
            } else {
                window
            };
            s.window = ((window * BETA) as u64).max(s.min_window());
            s.ssthresh = s.window;
            s.epoch = None;
            s.credit = 0.0;
        }
        if is_persistent_congestion {
            // RFC 9002, section 7.6.2: back to the minimum window, in slow start up to the
            // threshold of the one cut (made now or when the recovery began); congestion
            // avoidance then starts a new curve at its window (RFC 9438, section 4.8).
            let s = &mut self.state;
            s.hystart = None;
            s.window = s.min_window();
            s.w_max = 0.0;
            s.epoch = None;
            s.credit = 0.0;
            s.recovery_start = None;
        }
    }

    fn on_spurious_congestion_event(&mut self) {
        if let Some(mut before) = self.before_cut.take()
            && before.window > self.state.window
        {
            // The path's MTU is today's, whatever it was before the cut.
            before.mtu = self.state.mtu;
            before.window = before.window.max(before.min_window());
            self.state = before;
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.state.mtu = u64::from(new_mtu);
        self.state.window = self.state.window.max(self.state.min_window());
    }

    fn window(&self) -> u64 {
        self.state.window
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.state.window;
        metrics.ssthresh = Some(self.state.ssthresh);
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        INITIAL_WINDOW
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u64 = 1200;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// One connection's path: whole windows sent at once and acknowledged one packet at a
    /// time after the round's RTT.
    struct Path {
        cc: Cubic,
        now: Instant,
        pn: u64,
    }

    impl Path {
        fn new() -> Self {
            Self {
                cc: Cubic::new(MTU as u16),
                now: Instant::now(),
                pn: 0,
            }
        }

        /// A path after `rounds` round trips of 30 ms from a fresh start.
        fn grown(rounds: usize) -> Self {
            let mut path = Self::new();
            for _ in 0..rounds {
                path.round(ms(30));
            }
            path
        }

        /// Sends one window and takes its acknowledgements `rtt` later.
        fn round(&mut self, rtt: Duration) {
            let packets = (self.cc.window() / MTU).max(1);
            let sent = self.now;
            let first = self.pn + 1;
            self.pn += packets;
            self.cc.on_sent(sent, packets * MTU, self.pn);
            self.now += rtt;
            for pn in first..=self.pn {
                self.cc.ack(self.now, sent, MTU, pn, false, rtt);
            }
        }

        fn lose(&mut self) {
            let now = self.now;
            self.cc
                .on_congestion_event(now, now, false, false, MTU, self.pn);
        }
    }

    #[test]
    fn slow_start_doubles_while_the_rtt_holds() {
        let mut path = Path::new();
        for _ in 0..6 {
            let before = path.cc.window();
            path.round(ms(30));
            assert_eq!(path.cc.window(), 2 * before);
        }
        assert!(path.cc.in_slow_start());
    }

    #[test]
    fn a_rising_rtt_ends_slow_start_without_a_cut() {
        // 30 ms rounds, then the queue fills: the round minimum rises by 10 ms (above
        // the 4 ms threshold). Growth slows to a quarter, and after five such rounds
        // congestion avoidance takes over at the window reached: no loss, no cut.
        let mut path = Path::grown(4);
        let at_rise = path.cc.window();
        path.round(ms(40));
        // The first samples of the round grew the window fully, the rest by a quarter.
        assert!(path.cc.window() < at_rise * 3 / 2, "{}", path.cc.window());
        for _ in 0..CSS_ROUNDS {
            let before = path.cc.window();
            assert!(path.cc.in_slow_start());
            path.round(ms(40));
            assert!(path.cc.window() <= before * 5 / 4 + MTU);
            assert!(path.cc.window() >= before);
        }
        assert!(!path.cc.in_slow_start());
        assert!(path.cc.window() > at_rise);
        assert!(path.cc.state.hystart.is_none());
    }

    #[test]
    fn an_rtt_rise_below_the_threshold_is_not_a_queue() {
        let mut path = Path::grown(3);
        let before = path.cc.window();
        path.round(ms(33));
        assert_eq!(path.cc.window(), 2 * before);
    }

    #[test]
    fn an_rtt_that_falls_back_resumes_slow_start() {
        let mut path = Path::grown(3);
        path.round(ms(40));
        path.round(ms(40));
        assert!(
            path.cc
                .state
                .hystart
                .as_ref()
                .is_some_and(|h| h.css.is_some())
        );
        path.round(ms(30));
        let before = path.cc.window();
        path.round(ms(30));
        // Every whole packet of the window acknowledged is added to it.
        assert_eq!(
            path.cc.window(),
            before + before / MTU * MTU,
            "doubling again"
        );
    }

    #[test]
    fn a_loss_cuts_to_seven_tenths_once_per_round_trip_and_can_be_undone() {
        let mut path = Path::grown(5);
        let before = path.cc.window();
        path.lose();
        assert_eq!(path.cc.window(), before * 7 / 10);
        assert!(!path.cc.in_slow_start());
        // A loss of a packet sent before the cut belongs to it.
        let sent_before = path.now - ms(1);
        path.cc
            .on_congestion_event(path.now, sent_before, false, false, MTU, 1);
        assert_eq!(path.cc.window(), before * 7 / 10);
        path.cc.on_spurious_congestion_event();
        assert_eq!(path.cc.window(), before);
    }

    #[test]
    fn persistent_congestion_restarts_from_two_packets() {
        let mut path = Path::grown(5);
        let now = path.now;
        path.cc.on_congestion_event(now, now, true, false, MTU, 1);
        assert_eq!(path.cc.window(), 2 * MTU);
        assert!(path.cc.in_slow_start());
    }

    #[test]
    fn persistent_congestion_within_a_recovery_cuts_the_threshold_once() {
        let mut path = Path::grown(5);
        let before = path.cc.window();
        path.lose();
        let sent_before = path.now - ms(1);
        path.cc
            .on_congestion_event(path.now, sent_before, true, false, MTU, 1);
        assert_eq!(path.cc.window(), 2 * MTU);
        assert_eq!(path.cc.state.ssthresh, (before as f64 * BETA) as u64);
        // Slow start back to the threshold, then a curve that starts there.
        path.now += ms(1);
        while path.cc.in_slow_start() {
            path.round(ms(30));
        }
        assert!(path.cc.state.w_max <= path.cc.window() as f64);
    }

    #[test]
    fn an_ecn_cut_is_not_undone() {
        let mut path = Path::grown(5);
        path.lose();
        path.now += ms(1);
        let after_loss = path.cc.window();
        let now = path.now;
        path.cc.on_congestion_event(now, now, false, true, 0, 1);
        path.cc.on_spurious_congestion_event();
        assert_eq!(path.cc.window(), (after_loss as f64 * BETA) as u64);
    }

    #[test]
    fn after_a_cut_the_window_climbs_back_towards_where_it_was() {
        let mut path = Path::grown(6);
        let peak = path.cc.window();
        path.lose();
        // Packets sent from now on are past the recovery's start.
        path.now += ms(1);
        // Concave towards the old window: 70 % after the cut, back at it after K seconds.
        let k = ((peak - path.cc.window()) as f64 / MTU as f64 / C).cbrt();
        let rounds = (k / 0.030).ceil() as usize;
        for _ in 0..rounds {
            path.round(ms(30));
        }
        let w = path.cc.window();
        assert!(
            w > peak * 9 / 10 && w < peak * 11 / 10,
            "{w} after {rounds} rounds, peak {peak}"
        );
    }

    #[test]
    fn a_window_regrows_by_at_most_half_per_round_trip_after_a_pause() {
        // After a cut, the connection is quiet for 30 s: the curve's clock runs on, so its
        // target is far above the window. The window then grows by half a window per round
        // trip, not by a whole one as in slow start.
        let mut path = Path::grown(6);
        path.lose();
        path.now += ms(1);
        for _ in 0..3 {
            path.round(ms(30));
        }
        path.now += Duration::from_secs(30);
        for _ in 0..3 {
            let before = path.cc.window();
            path.round(ms(30));
            let growth = path.cc.window() as f64 / before as f64;
            assert!((1.4..=1.51).contains(&growth), "{growth}");
        }
    }
}
