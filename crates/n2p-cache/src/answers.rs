//! A short memory of narinfo answers, used on both sides: the serving node remembers its
//! signed answers by hash part, the facade a peer's answers by peer and hash part.
//!
//! One `nix copy` asks the facade for the same narinfo several times (Nix 2.8 fetched each
//! of 200 paths three times in one copy with its default TTLs, six times with
//! `narinfo-cache-positive-ttl = 0`), and each ask cost a round trip to the peer, there two
//! daemon round trips and a signature. [`Answers`] keeps each hit for [`ANSWER_TTL`], so
//! the repeats are answered from memory: over a 30 ms link each saves a round trip.
//!
//! Only hits are kept: a path added to the store is announced at the next request. A path
//! deleted within the TTL may still be announced for the rest of it, which changes nothing
//! that matters: a NAR is still sent only for a path the daemon reports valid, with the NAR
//! hash asked for, under a temporary root (the request that would fetch it gets "not found"),
//! and Nix itself keeps narinfo hits for a month. On the serving node access is checked per
//! request before the memory is consulted. The facade's memory holds only what its own user
//! was already told; a peer that stops letting us pull refuses the NAR at once, and its
//! narinfo stops being repeated within the TTL.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    time::{Duration, Instant},
};

/// How long a narinfo answer is reused: long enough for the repeats of one `nix copy` of a
/// few hundred paths, short enough that a deleted path stops being announced soon.
pub(crate) const ANSWER_TTL: Duration = Duration::from_secs(10);

/// How many answers are kept at most (a few hundred bytes each).
pub(crate) const ANSWER_CAPACITY: usize = 4096;

/// Recent narinfo hits by key, bounded in age and number; the oldest go first.
#[derive(Debug)]
pub(crate) struct Answers<K, V> {
    ttl: Duration,
    capacity: usize,
    by_key: HashMap<K, (Instant, V)>,
    /// Insertion times and keys, oldest first (an entry replaced later leaves a stale item
    /// here, recognised by its time).
    order: VecDeque<(Instant, K)>,
}

impl<K: Hash + Eq + Clone, V: Clone> Answers<K, V> {
    /// An empty memory keeping answers for `ttl`, at most `capacity` of them (a `ttl` or
    /// `capacity` of zero keeps nothing).
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            by_key: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The answer for `key` remembered less than the TTL before `now`.
    pub(crate) fn get<Q>(&mut self, key: &Q, now: Instant) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.expire(now);
        self.by_key.get(key).map(|(_, info)| info.clone())
    }

    /// Remembers `info` as the answer for `key` from `now` on.
    pub(crate) fn remember(&mut self, key: K, info: V, now: Instant) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        self.by_key.insert(key.clone(), (now, info));
        self.order.push_back((now, key));
        while self.order.len() > self.capacity {
            self.pop_oldest();
        }
        self.expire(now);
    }

    /// Forgets the answers older than the TTL.
    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.ttl)
        {
            self.pop_oldest();
        }
    }

    /// Drops the oldest item of `order`, and its answer unless a newer one replaced it.
    fn pop_oldest(&mut self) {
        let Some((at, key)) = self.order.pop_front() else {
            return;
        };
        if self
            .by_key
            .get(&key)
            .is_some_and(|(kept_at, _)| *kept_at == at)
        {
            self.by_key.remove(&key);
        }
    }

    /// How many answers are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::WireInfo;

    fn info(name: &str) -> WireInfo {
        WireInfo {
            store_path: format!("{}-{name}", "a".repeat(32)),
            nar_hash: [7; 32],
            nar_size: 128,
            references: Vec::new(),
            deriver: None,
            sigs: Vec::new(),
            ca: None,
        }
    }

    #[test]
    fn an_answer_is_reused_until_its_ttl_ends() {
        let start = Instant::now();
        let mut answers = Answers::<String, WireInfo>::new(Duration::from_secs(10), 16);
        answers.remember("h1".to_owned(), info("one"), start);
        let later = start + Duration::from_secs(9);
        assert_eq!(answers.get("h1", later), Some(info("one")));
        assert_eq!(answers.get("h2", later), None);
        assert_eq!(answers.get("h1", start + Duration::from_secs(10)), None);
        assert_eq!(answers.len(), 0);
    }

    #[test]
    fn a_renewed_answer_outlives_its_first_insertion() {
        let start = Instant::now();
        let mut answers = Answers::<String, WireInfo>::new(Duration::from_secs(10), 16);
        answers.remember("h1".to_owned(), info("old"), start);
        answers.remember("h1".to_owned(), info("new"), start + Duration::from_secs(5));
        let after_first = start + Duration::from_secs(12);
        assert_eq!(answers.get("h1", after_first), Some(info("new")));
        assert_eq!(answers.get("h1", start + Duration::from_secs(15)), None);
    }

    #[test]
    fn the_oldest_answers_go_beyond_the_capacity() {
        let now = Instant::now();
        let mut answers = Answers::<String, WireInfo>::new(Duration::from_secs(10), 3);
        for i in 0..5 {
            answers.remember(format!("h{i}"), info(&format!("p{i}")), now);
        }
        assert_eq!(answers.len(), 3);
        assert_eq!(answers.get("h0", now), None);
        assert_eq!(answers.get("h1", now), None);
        assert_eq!(answers.get("h4", now), Some(info("p4")));
        assert!(answers.order.len() <= 3);
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let now = Instant::now();
        let mut answers = Answers::<String, WireInfo>::new(Duration::ZERO, 16);
        answers.remember("h1".to_owned(), info("one"), now);
        assert_eq!(answers.get("h1", now), None);
        assert_eq!(answers.len(), 0);
    }
}
