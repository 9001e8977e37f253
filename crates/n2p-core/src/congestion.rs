//! n2p's own QUIC congestion controller, the default (`--congestion tolerant`): Cubic that
//! tells random loss from congestion.
//!
//! A loss-based controller such as Cubic reads every lost packet as a sign of a full queue
//! and shrinks its window. On a link that drops packets at random (Wi-Fi, mobile, a long
//! lossy path) that caps the window near Mathis' `MSS/RTT × 1.22/√p`: 0.5 % random loss at
//! 30 ms holds noq's Cubic, like Linux's, to about 7 Mbit/s on a 100 Mbit/s link
//! (docs/BENCHMARKS.md, "Why Cubic collapses under random loss").
//!
//! [`TolerantCubic`] wraps a Cubic of n2p's own (RFC 9438 with HyStart++, in the private
//! module `congestion::cubic`) and passes a loss on to it only when the loss looks like
//! congestion, decided by [`LossJudge`]:
//!
//! - the path shows a standing queue: its smoothed RTT is above the path's base RTT (the
//!   lowest smoothed RTT the path has had) by more than a quarter of that base (and at
//!   least [`QUEUE_DELAY_FLOOR`]); a drop-tail queue that overflows has filled first, so
//!   losses from our own (or anyone's) overload count;
//! - or losses are frequent: more than [`LOSS_SHARE_LIMIT`] of the recently sent bytes (over
//!   at least [`LOSS_MEMORY_PACKETS`] packets), which bounds the damage on a path whose queue
//!   is too short to show in the RTT;
//! - or the connection is in persistent congestion, or the peer reported ECN congestion.
//!
//! Otherwise the loss is taken as random: the lost data is resent as always, but the window
//! is not cut. Sharing a bottleneck with TCP, the queue that TCP builds makes our losses
//! count, so the controller backs off like Cubic; alone on a lossy link it keeps the window
//! the link can carry.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use iroh::endpoint::ControllerFactory;
use noq_proto::{
    RttEstimator,
    congestion::{Controller, ControllerMetrics},
};

mod cubic;

use cubic::Cubic;

/// Queueing delay that always counts as a standing queue, whatever the path's RTT.
pub const QUEUE_DELAY_FLOOR: Duration = Duration::from_millis(2);

/// Share of the recent bytes lost above which losses count as congestion even without a
/// queue in the RTT.
pub const LOSS_SHARE_LIMIT: f64 = 0.05;

/// The loss share is taken over at least this many packets (or one window, if larger), so
/// that chance does not push random loss past [`LOSS_SHARE_LIMIT`]: over 512 packets, 2 %
/// random loss is about 10 lost and the limit 26, which chance alone practically never
/// reaches. (Over 128 packets, about 3 lost against a limit of 6.4, it did every few thousand
/// packets, and each cut held the window well below the path's.) The price: where the
/// queue is too short to show in the RTT, sustained loss above the limit is noticed only
/// after about 250 packets.
pub const LOSS_MEMORY_PACKETS: u64 = 512;

/// What a loss is taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossVerdict {
    /// The path is congested: cut the window.
    Congestion,
    /// Random loss on an uncongested path: keep the window.
    Random,
}

/// Decides, loss by loss, whether the path is congested, from the RTT and the recent loss
/// share. Pure bookkeeping: no I/O, and the time comes from the caller.
#[derive(Debug, Clone, Default)]
pub struct LossJudge {
    /// Smoothed RTT at the last acknowledgement.
    smoothed_rtt: Duration,
    /// The path's base RTT: the lowest smoothed RTT so far (`None` before the first).
    ///
    /// Not noq's minimum (the lowest raw sample ever): one raw sample below the path's real
    /// RTT (seen on the emulated 30 ms link: 22 ms) made every later loss look like a
    /// queue's, and the window collapsed for good; it moves the smoothed RTT by an eighth
    /// only. Nor the lowest smoothed RTT of a recent window (5-10 s until 2026-11-30): a
    /// queue that another flow keeps standing for longer than the window became part of the
    /// base, and sharing a bottleneck with TCP Cubic the controller took its losses for
    /// random and kept 63-74 % of the link (docs/BENCHMARKS.md, "A base RTT that a standing
    /// queue raised"). If the path itself gets longer, the base stays low and losses count
    /// as they would for Cubic: slower under random loss, never unfair.
    base_rtt: Option<Duration>,
    /// noq's minimum RTT (the lowest sample ever), for the log only.
    min_rtt: Duration,
    /// Bytes acknowledged in the current loss memory.
    delivered: u64,
    /// Bytes lost in the current loss memory.
    lost: u64,
    /// When the loss share last made a loss count as congestion.
    share_cut_at: Option<Instant>,
    /// The round-trip estimate a path has before its first sample (the endpoint's initial
    /// RTT), if known: an estimator that reports it as both its smoothed and its minimum
    /// RTT has not measured anything yet, and its RTT is not the path's.
    unmeasured: Option<Duration>,
}

impl LossJudge {
    /// A judge for a path whose RTT estimator starts at `initial_rtt` before its first
    /// sample.
    ///
    /// noq tells the controller of the packets an ACK acknowledges before it takes that
    /// ACK's RTT sample, so the first acknowledgements of every path come with the initial
    /// estimate. Taken as a smoothed RTT, it became the base of every path longer than it:
    /// with the initial RTT at 100 ms, a 120 ms path counted 5 ms of queueing as a standing
    /// queue, took nearly every random loss for congestion and held its window under the
    /// bandwidth-delay product (docs/BENCHMARKS.md, "An initial RTT taken for the path's").
    pub fn new(initial_rtt: Duration) -> Self {
        Self {
            unmeasured: Some(initial_rtt),
            ..Self::default()
        }
    }

    /// Records acknowledged bytes and the path's RTT. `memory` is how many bytes the loss
    /// share looks back over (one window, at least [`LOSS_MEMORY_PACKETS`] packets); older
    /// counts are halved each time that much has been delivered.
    /// An RTT that is still the path's initial estimate (see [`LossJudge::new`]) is left
    /// out; the bytes count.
    pub fn on_ack(&mut self, bytes: u64, smoothed_rtt: Duration, min_rtt: Duration, memory: u64) {
        let measured = self
            .unmeasured
            .is_none_or(|initial| smoothed_rtt != initial || min_rtt != initial);
        if measured {
            self.smoothed_rtt = smoothed_rtt;
            self.base_rtt = Some(self.base_rtt.map_or(smoothed_rtt, |b| b.min(smoothed_rtt)));
            self.min_rtt = min_rtt;
        }
        self.delivered = self.delivered.saturating_add(bytes);
        if self.delivered >= memory.max(1) {
            self.delivered /= 2;
            self.lost /= 2;
        }
    }

    /// Records `lost_bytes`, sent at `sent` and found lost at `now`, and judges them.
    /// `memory` is as for [`LossJudge::on_ack`].
    ///
    /// A share above the limit is taken for congestion once: the count then starts over,
    /// and losses of packets sent before that moment (the rest of the same burst) are not
    /// counted. Counted, a burst (a slow start overshooting the queue) lifted the share for
    /// the next thousand packets, every random loss in them cut the window again, and it
    /// collapsed.
    pub fn on_loss(
        &mut self,
        lost_bytes: u64,
        sent: Instant,
        now: Instant,
        memory: u64,
    ) -> LossVerdict {
        let acted_on = self.share_cut_at.is_some_and(|cut| sent <= cut);
        if !acted_on {
            self.lost = self.lost.saturating_add(lost_bytes);
        }
        if self.queue_is_standing() {
            return LossVerdict::Congestion;
        }
        if !acted_on && self.loss_share(memory) > LOSS_SHARE_LIMIT {
            self.lost = 0;
            self.delivered = 0;
            self.share_cut_at = Some(now);
            return LossVerdict::Congestion;
        }
        LossVerdict::Random
    }

    /// Whether the smoothed RTT shows a queue: above the base RTT by more than a quarter of
    /// it and by more than [`QUEUE_DELAY_FLOOR`].
    pub fn queue_is_standing(&self) -> bool {
        let base = self.base_rtt();
        let queueing = self.smoothed_rtt.saturating_sub(base);
        queueing > (base / 4).max(QUEUE_DELAY_FLOOR)
    }

    /// The path's base RTT: the lowest smoothed RTT it has had (zero before the first).
    pub fn base_rtt(&self) -> Duration {
        self.base_rtt.unwrap_or_default()
    }

    /// Lost bytes as a share of what was sent in the loss memory (at least `memory` bytes).
    pub fn loss_share(&self, memory: u64) -> f64 {
        let sent = (self.delivered + self.lost).max(memory).max(1);
        self.lost as f64 / sent as f64
    }
}

/// Cubic that cuts its window only for losses [`LossJudge`] takes for congestion.
#[derive(Debug, Clone)]
pub struct TolerantCubic {
    cubic: Cubic,
    judge: LossJudge,
    mtu: u64,
    /// Whether the last loss was passed to Cubic (so a spurious-loss undo goes there too).
    last_loss_passed: bool,
    /// Loss batches kept from Cubic and passed to it, by cause, since the start.
    counts: JudgedLosses,
    /// When the counts were last logged.
    logged_at: Option<Instant>,
}

/// What [`TolerantCubic`] did with the loss batches it was told of.
#[derive(Debug, Clone, Copy, Default)]
struct JudgedLosses {
    random: u64,
    queue: u64,
    share: u64,
    persistent_or_ecn: u64,
}

/// How often the controller logs its counts while losses come.
const JUDGE_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl TolerantCubic {
    /// A fresh controller: Cubic in slow start from its initial window, on a path whose
    /// RTT estimate starts at `initial_rtt`.
    fn new(initial_rtt: Duration, mtu: u16) -> Self {
        Self {
            cubic: Cubic::new(mtu),
            judge: LossJudge::new(initial_rtt),
            mtu: u64::from(mtu),
            last_loss_passed: false,
            counts: JudgedLosses::default(),
            logged_at: None,
        }
    }

    /// Bytes the loss share looks back over: one window, at least
    /// [`LOSS_MEMORY_PACKETS`] packets.
    fn loss_memory(&self) -> u64 {
        self.cubic.window().max(LOSS_MEMORY_PACKETS * self.mtu)
    }
}

impl Controller for TolerantCubic {
    fn on_sent(&mut self, now: Instant, bytes: u64, largest_pn: u64) {
        self.cubic.on_sent(now, bytes, largest_pn);
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
        let memory = self.loss_memory();
        self.judge.on_ack(bytes, rtt.get(), rtt.min(), memory);
        self.cubic.on_ack(now, sent, bytes, pn, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        is_ecn: bool,
        lost_bytes: u64,
        largest_lost_pn: u64,
    ) {
        let memory = self.loss_memory();
        let verdict = self.judge.on_loss(lost_bytes, sent, now, memory);
        let pass = is_persistent_congestion || is_ecn || verdict == LossVerdict::Congestion;
        let counts = &mut self.counts;
        if is_persistent_congestion || is_ecn {
            counts.persistent_or_ecn += 1;
        } else if verdict == LossVerdict::Random {
            counts.random += 1;
        } else if self.judge.queue_is_standing() {
            counts.queue += 1;
        } else {
            counts.share += 1;
        }
        if self
            .logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= JUDGE_LOG_INTERVAL)
        {
            self.logged_at = Some(now);
            tracing::debug!(
                target: "n2p::stats",
                "loss judge: kept={} cut_queue={} cut_share={} cut_persistent_or_ecn={} \
                 srtt_ms={:.1} base_rtt_ms={:.1} min_rtt_ms={:.1} loss_share={:.4} cwnd={}",
                counts.random,
                counts.queue,
                counts.share,
                counts.persistent_or_ecn,
                self.judge.smoothed_rtt.as_secs_f64() * 1e3,
                self.judge.base_rtt().as_secs_f64() * 1e3,
                self.judge.min_rtt.as_secs_f64() * 1e3,
                self.judge.loss_share(memory),
                self.cubic.window(),
            );
        }
        self.last_loss_passed = pass;
        if pass {
            self.cubic.on_congestion_event(
                now,
                sent,
                is_persistent_congestion,
                is_ecn,
                lost_bytes,
                largest_lost_pn,
            );
        }
    }

    fn on_spurious_congestion_event(&mut self) {
        if self.last_loss_passed {
            self.cubic.on_spurious_congestion_event();
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.cubic.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.cubic.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.cubic.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds a [`TolerantCubic`] for every path of every connection.
#[derive(Debug, Clone)]
pub struct TolerantCubicConfig {
    initial_rtt: Duration,
}

impl TolerantCubicConfig {
    /// Controllers for the paths of an endpoint whose transport starts every path's RTT
    /// estimate at `initial_rtt` (noq's `initial_rtt` setting).
    pub fn new(initial_rtt: Duration) -> Self {
        Self { initial_rtt }
    }
}

impl ControllerFactory for TolerantCubicConfig {
    fn build(self: Arc<Self>, _now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(TolerantCubic::new(self.initial_rtt, current_mtu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u64 = 1452;
    const MEMORY: u64 = LOSS_MEMORY_PACKETS * MTU;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// One packet lost, sent and found lost now.
    fn lose(judge: &mut LossJudge) -> LossVerdict {
        let now = Instant::now();
        judge.on_loss(MTU, now, now, MEMORY)
    }

    /// A judge that has seen `packets` packets acknowledged: the first half with the RTT at
    /// `min` (the path's base), the rest at `smoothed`.
    fn judge_after(packets: u64, smoothed: Duration, min: Duration) -> LossJudge {
        let mut judge = LossJudge::default();
        for i in 0..packets {
            let rtt = if i < packets / 2 { min } else { smoothed };
            judge.on_ack(MTU, rtt, min, MEMORY);
        }
        judge
    }

    #[test]
    fn a_loss_without_a_queue_is_random() {
        let mut judge = judge_after(1000, ms(31), ms(30));
        assert_eq!(lose(&mut judge), LossVerdict::Random);
    }

    #[test]
    fn a_loss_with_a_standing_queue_is_congestion() {
        // 30 ms path, queue adds 10 ms: more than a quarter of the minimum.
        let mut judge = judge_after(1000, ms(40), ms(30));
        assert_eq!(lose(&mut judge), LossVerdict::Congestion);
        // 7 ms of queue on the same path is below the quarter: random.
        let mut judge = judge_after(1000, ms(37), ms(30));
        assert_eq!(lose(&mut judge), LossVerdict::Random);
    }

    #[test]
    fn short_paths_need_the_floor_of_queueing_delay() {
        // 1 ms LAN: 1.5 ms extra is over a quarter but under the 2 ms floor (jitter).
        let judge = judge_after(10, Duration::from_micros(2500), ms(1));
        assert!(!judge.queue_is_standing());
        let judge = judge_after(10, Duration::from_micros(3500), ms(1));
        assert!(judge.queue_is_standing());
    }

    /// Random loss at 2 %, drawn packet by packet (a fixed xorshift sequence), over as many
    /// packets as a 256 MiB transfer sends: not one loss is taken for congestion. With the
    /// loss share taken over 128 packets, chance alone pushed it past 5 % every few thousand
    /// packets, and each such cut held the window far below the path's (docs/BENCHMARKS.md).
    #[test]
    fn random_loss_at_two_percent_is_never_taken_for_congestion() {
        let mut judge = LossJudge::default();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut losses = 0u32;
        for i in 0..200_000u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state.is_multiple_of(50) {
                losses += 1;
                assert_eq!(
                    lose(&mut judge),
                    LossVerdict::Random,
                    "loss {losses} at packet {i}: share {:.3}",
                    judge.loss_share(MEMORY)
                );
            } else {
                judge.on_ack(MTU, ms(30), ms(30), MEMORY);
            }
        }
        assert!(losses > 3_000, "{losses} losses drawn");
    }

    #[test]
    fn frequent_loss_is_congestion_even_without_a_queue() {
        // One loss every 10 packets (10 %), a queue too short to show in the RTT: taken for
        // congestion again and again, each time the share has passed the limit anew.
        let mut judge = LossJudge::default();
        let mut congestion = 0;
        let packets = 20 * LOSS_MEMORY_PACKETS;
        for i in 1..=packets {
            judge.on_ack(MTU, ms(30), ms(30), MEMORY);
            if i % 10 == 0 && lose(&mut judge) == LossVerdict::Congestion {
                congestion += 1;
            }
        }
        // The limit (5 % of the memory) is passed after about half a memory at 10 %.
        let expected = packets / (LOSS_MEMORY_PACKETS / 2);
        assert!(
            congestion >= expected * 3 / 4,
            "{congestion} congestion verdicts in {packets} packets, expected about {expected}"
        );
    }

    /// A burst (a slow start overshooting the queue: a quarter of a memory lost at once,
    /// all sent before the first of them was found lost) is taken for congestion once, and
    /// the 2 % random loss after it is random at once, not for as long as the burst would
    /// lift the share.
    #[test]
    fn a_burst_is_not_held_against_the_random_losses_after_it() {
        let mut judge = judge_after(2 * LOSS_MEMORY_PACKETS, ms(30), ms(30));
        let sent = Instant::now();
        let found = sent + ms(30);
        let verdicts: Vec<LossVerdict> = (0..LOSS_MEMORY_PACKETS / 4)
            .map(|i| judge.on_loss(MTU, sent, found + Duration::from_micros(i), MEMORY))
            .collect();
        let cuts = verdicts
            .iter()
            .filter(|v| **v == LossVerdict::Congestion)
            .count();
        assert_eq!(cuts, 1, "{verdicts:?}");
        for i in 1..=4 * LOSS_MEMORY_PACKETS {
            judge.on_ack(MTU, ms(30), ms(30), MEMORY);
            if i % 50 == 0 {
                let at = found + ms(i);
                assert_eq!(
                    judge.on_loss(MTU, at, at, MEMORY),
                    LossVerdict::Random,
                    "packet {i}"
                );
            }
        }
    }

    #[test]
    fn one_early_loss_is_not_a_high_share() {
        // The tenth packet of a connection is lost: 1 of 10 is 10 %, but the share is taken
        // over at least LOSS_MEMORY_PACKETS packets.
        let mut judge = judge_after(10, ms(30), ms(30));
        assert_eq!(lose(&mut judge), LossVerdict::Random);
        assert!(judge.loss_share(MEMORY) < 0.01);
    }

    fn controller() -> Box<dyn Controller> {
        Arc::new(TolerantCubicConfig::new(ms(100))).build(Instant::now(), MTU as u16)
    }

    #[test]
    fn the_controller_keeps_its_window_on_a_random_loss() {
        let mut cc = controller();
        let before = cc.window();
        let now = Instant::now();
        cc.on_congestion_event(now, now, false, false, MTU, 7);
        assert_eq!(cc.window(), before);
    }

    #[test]
    fn the_controller_cuts_on_persistent_congestion_and_ecn() {
        let now = Instant::now();
        let mut cc = controller();
        let before = cc.window();
        cc.on_congestion_event(now, now, true, false, MTU, 7);
        assert!(cc.window() < before, "persistent congestion cuts");
        let mut cc = controller();
        cc.on_congestion_event(now, now, false, true, 0, 7);
        assert!(cc.window() < before, "ECN cuts");
    }

    #[test]
    fn one_rtt_sample_below_the_path_does_not_poison_the_base() {
        // A 30 ms path; one odd raw sample of 22 ms (noq's minimum stays there for good)
        // moves the smoothed RTT by an eighth, to 29 ms: the base follows that, not 22 ms,
        // so a random loss at 31 ms is random, not a 9 ms "queue".
        let mut judge = LossJudge::default();
        judge.on_ack(MTU, ms(30), ms(30), MEMORY);
        judge.on_ack(MTU, ms(29), ms(22), MEMORY);
        assert_eq!(judge.base_rtt(), ms(29));
        for _ in 0..120 {
            judge.on_ack(MTU, ms(31), ms(22), MEMORY);
        }
        assert_eq!(lose(&mut judge), LossVerdict::Random);
        // A real queue still shows against that base.
        judge.on_ack(MTU, ms(45), ms(22), MEMORY);
        assert!(judge.queue_is_standing());
    }

    #[test]
    fn the_estimate_before_the_first_sample_is_not_the_base() {
        // A 120 ms path on an endpoint whose paths start at 100 ms: the first
        // acknowledgements come with the estimator still at 100 ms (smoothed and minimum).
        // The base is the path's 120 ms, so 6 ms of queueing is no standing queue and a
        // loss there is random.
        let mut judge = LossJudge::new(ms(100));
        for _ in 0..10 {
            judge.on_ack(MTU, ms(100), ms(100), MEMORY);
        }
        judge.on_ack(MTU, ms(120), ms(120), MEMORY);
        for _ in 0..100 {
            judge.on_ack(MTU, ms(126), ms(120), MEMORY);
        }
        assert_eq!(judge.base_rtt(), ms(120));
        assert_eq!(lose(&mut judge), LossVerdict::Random);
        // A path that really measures 100 ms later (smoothed above its 99 ms minimum)
        // counts.
        judge.on_ack(MTU, ms(100), ms(99), MEMORY);
        assert_eq!(judge.base_rtt(), ms(100));
    }

    #[test]
    fn a_queue_that_stands_for_minutes_never_becomes_the_base() {
        // A 30 ms path, then a competing flow keeps the queue full: 60 ms for the next 3,000
        // acknowledgements, however long they take. The queue stays a queue, so losses in it
        // count as congestion and the controller backs off as the competing flow's Cubic does.
        let mut judge = LossJudge::default();
        judge.on_ack(MTU, ms(30), ms(30), MEMORY);
        for _ in 0..3000 {
            judge.on_ack(MTU, ms(60), ms(30), MEMORY);
        }
        assert_eq!(judge.base_rtt(), ms(30));
        assert!(judge.queue_is_standing());
        assert_eq!(lose(&mut judge), LossVerdict::Congestion);
    }

    #[test]
    fn old_losses_fade() {
        // 4 % of a memory lost: under the limit, so it is all still counted.
        let mut judge = LossJudge::default();
        for _ in 0..LOSS_MEMORY_PACKETS / 25 {
            lose(&mut judge);
        }
        assert!(judge.loss_share(MEMORY) > 0.03);
        for _ in 0..8 * LOSS_MEMORY_PACKETS {
            judge.on_ack(MTU, ms(30), ms(30), MEMORY);
        }
        assert!(judge.loss_share(MEMORY) < 0.01);
    }
}
