//! The link's arithmetic, without any I/O: random loss, the drop-tail queue in front of the
//! bottleneck, serialization at the link rate and the one-way delay. Times are nanoseconds
//! since the link started.

/// A small seeded generator (SplitMix64): the same seed gives the same losses.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform number in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What happens to one packet offered to the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Dropped at random (the loss rate).
    Lost,
    /// Dropped because the bottleneck queue is full (drop-tail).
    QueueFull,
    /// Delivered at this time (ns); `departure` is when its last bit left the bottleneck.
    Deliver {
        /// End of serialization at the bottleneck, ns.
        departure: u64,
        /// Hand-over to the other side, ns: departure plus the one-way delay.
        at: u64,
    },
}

/// One direction of the link.
#[derive(Debug, Clone)]
pub(crate) struct Scheduler {
    rate_bps: u64,
    delay_ns: u64,
    queue_bytes: u64,
    loss: f64,
    rng: Rng,
    /// When the bottleneck finishes the last accepted packet, ns.
    busy_until: u64,
}

impl Scheduler {
    /// A direction with this rate (bit/s, > 0), one-way delay (ns), queue size (bytes, the
    /// packet being serialized included), loss probability (0..1) and seed.
    pub(crate) fn new(
        rate_bps: u64,
        delay_ns: u64,
        queue_bytes: u64,
        loss: f64,
        seed: u64,
    ) -> Self {
        Self {
            rate_bps: rate_bps.max(1),
            delay_ns,
            queue_bytes,
            loss: loss.clamp(0.0, 1.0),
            rng: Rng::new(seed),
            busy_until: 0,
        }
    }

    /// Nanoseconds that `bytes` take at the link rate.
    pub(crate) fn serialization_ns(&self, bytes: u64) -> u64 {
        (u128::from(bytes) * 8 * 1_000_000_000 / u128::from(self.rate_bps)) as u64
    }

    /// Bytes waiting at the bottleneck at time `now` (the rest of the packet on the wire
    /// included).
    pub(crate) fn backlog_bytes(&self, now: u64) -> u64 {
        let ns = self.busy_until.saturating_sub(now);
        (u128::from(ns) * u128::from(self.rate_bps)).div_ceil(8_000_000_000) as u64
    }

    /// Decides the fate of a packet of `bytes` arriving at `now`.
    pub(crate) fn offer(&mut self, now: u64, bytes: u64) -> Verdict {
        if self.loss > 0.0 && self.rng.unit() < self.loss {
            return Verdict::Lost;
        }
        let backlog = self.backlog_bytes(now);
        // An empty queue always takes a packet, however large.
        if backlog > 0 && backlog + bytes > self.queue_bytes {
            return Verdict::QueueFull;
        }
        let departure = self.busy_until.max(now) + self.serialization_ns(bytes);
        self.busy_until = departure;
        Verdict::Deliver {
            departure,
            at: departure + self.delay_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: u64 = 1_000_000;

    #[test]
    fn serialization_and_delay() {
        // 100 Mbit/s: 1500 bytes take 120 µs; one-way delay 15 ms.
        let mut s = Scheduler::new(100 * MBIT, 15_000_000, 1 << 20, 0.0, 1);
        assert_eq!(s.serialization_ns(1500), 120_000);
        assert_eq!(
            s.offer(1_000, 1500),
            Verdict::Deliver {
                departure: 121_000,
                at: 15_121_000
            }
        );
        // A back-to-back packet waits for the first one.
        assert_eq!(
            s.offer(2_000, 1500),
            Verdict::Deliver {
                departure: 241_000,
                at: 15_241_000
            }
        );
        // After an idle gap, departure starts from the arrival again.
        assert_eq!(
            s.offer(1_000_000, 100),
            Verdict::Deliver {
                departure: 1_008_000,
                at: 16_008_000
            }
        );
    }

    #[test]
    fn drop_tail() {
        // 10 Mbit/s, a queue of 3000 bytes: two 1500-byte packets fit, the third is dropped.
        let mut s = Scheduler::new(10 * MBIT, 0, 3000, 0.0, 1);
        assert!(matches!(s.offer(0, 1500), Verdict::Deliver { .. }));
        assert_eq!(s.backlog_bytes(0), 1500);
        assert!(matches!(s.offer(0, 1500), Verdict::Deliver { .. }));
        assert_eq!(s.offer(0, 1500), Verdict::QueueFull);
        // 1.2 ms later (one packet's time at 10 Mbit/s) there is room for one again.
        assert_eq!(s.backlog_bytes(1_200_000), 1500);
        assert!(matches!(s.offer(1_200_000, 1500), Verdict::Deliver { .. }));
        assert_eq!(s.offer(1_200_000, 1), Verdict::QueueFull);
        // A drained queue takes even a packet larger than itself.
        assert!(matches!(s.offer(10_000_000, 5000), Verdict::Deliver { .. }));
    }

    #[test]
    fn throughput_is_the_rate() {
        // Offered far above the rate, accepted packets leave at exactly the rate.
        let mut s = Scheduler::new(20 * MBIT, 60_000_000, 300_000, 0.0, 1);
        let (mut last, mut bytes) = (0, 0);
        for i in 0..100_000u64 {
            if let Verdict::Deliver { departure, .. } = s.offer(i * 10_000, 1500) {
                last = departure;
                bytes += 1500;
            }
        }
        let rate = bytes as f64 * 8.0 / (last as f64 / 1e9);
        assert!((rate - 20e6).abs() / 20e6 < 0.01, "{rate}");
    }

    #[test]
    fn loss_rate_with_a_seed() {
        for p in [0.005, 0.02, 0.1] {
            let mut s = Scheduler::new(1000 * MBIT, 0, u64::MAX, p, 42);
            let n = 200_000u64;
            let lost = (0..n)
                .filter(|i| s.offer(i * 1_000_000, 100) == Verdict::Lost)
                .count() as f64;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((lost / n as f64 - p).abs() < 4.0 * sd, "p {p}: {lost}");
        }
        // The same seed loses the same packets.
        let run = |seed| {
            let mut s = Scheduler::new(MBIT, 0, u64::MAX, 0.3, seed);
            (0..64u64)
                .map(|i| s.offer(i * 1_000_000_000, 1) == Verdict::Lost)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
