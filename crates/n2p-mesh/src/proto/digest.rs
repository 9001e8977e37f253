//! A digest: the latest announcements a node holds from live peers, and its own, sent to
//! its gossip neighbours only (never flooded). A node sends one when a neighbour comes up
//! and when a digest taught it a peer it did not know, so a newcomer learns the whole team
//! from its first neighbours at once, and news spreads neighbour to neighbour without every
//! node flooding its own announcement whenever someone joins (which costs on the order of
//! N² deliveries per join). A digest goes to each neighbour as QUIC datagrams on its
//! gossip connection, since iroh-gossip hands a neighbours-only message to its eager peers
//! alone (see the node's `digest_datagrams`): such digests are cut to fit a datagram
//! (`max_size` of [`encode_digests`]). Neighbours not known to read them, and entries too
//! large for them, go in digests sent through gossip as before.
//!
//! Digests sent as datagrams carry news only: the first two on a gossip connection carry
//! every live peer's latest announcement, later ones only those the node took in since the
//! one before the last, so each entry goes to a neighbour twice (the node's
//! `digest_datagrams::Ledger`). Digests sent through gossip carry everything. Receivers
//! treat all alike: each entry is checked and taken in by itself.
//!
//! # Wire format
//!
//! ```text
//! [version: u8 = 2] [count: varint] ([len: varint] [announcement])* [mac: 32 bytes]
//! ```
//!
//! - Each `announcement` is a whole [`crate::proto::announce`] message as its sender signed
//!   it; receivers check each one by itself (MAC, signature, freshness).
//! - `mac` is the keyed BLAKE3 hash, under the topic's announcement key, of everything
//!   before it, as for announcements: the last 32 bytes of every mesh message. Builds that
//!   do not know digests drop them as an unknown version.
//! - A digest is at most [`MAX_DIGEST_SIZE`] bytes; more entries go into more digests.

use std::time::Duration;

use crate::proto::{
    announce::{
        AnnounceError, Announcement, FRESHNESS_WINDOW, MAX_ANNOUNCEMENT_SIZE, check_age,
        decode_verified,
    },
    table::{INTERVALS_PER_EXPIRY, MAX_HEARTBEAT},
    topic::AnnounceKey,
};

/// The version byte of a digest (announcements are version 1).
pub const DIGEST_VERSION: u8 = 2;

/// The largest digest sent or accepted, in bytes.
pub const MAX_DIGEST_SIZE: usize = 16 * 1024;

const MAC_LEN: usize = 32;

/// Why a digest was dropped (log at debug level and carry on).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigestError {
    /// Larger than [`MAX_DIGEST_SIZE`].
    #[error("digest of {len} bytes exceeds the limit of {MAX_DIGEST_SIZE}")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// The MAC is wrong (or the message too short to hold one).
    #[error("bad MAC on a digest (wrong team secret or topic, or altered)")]
    Mac,
    /// Not a digest.
    #[error("not a digest (version {version})")]
    NotADigest {
        /// The version byte.
        version: u8,
    },
    /// The entries do not add up to the message.
    #[error("malformed digest")]
    Malformed,
}

/// Whether `bytes` claims to be a digest (before anything is checked).
pub fn is_digest(bytes: &[u8]) -> bool {
    bytes.first() == Some(&DIGEST_VERSION)
}

/// Room for entries in a digest of at most `max_size` bytes: all but the version byte, a
/// count of up to 3 varint bytes and the MAC.
fn room(max_size: usize) -> usize {
    max_size
        .min(MAX_DIGEST_SIZE)
        .saturating_sub(1 + 3 + MAC_LEN)
}

/// Whether an entry of `len` bytes goes into digests of at most `max_size` bytes
/// ([`encode_digests`] leaves out those that do not).
pub fn fits_digest(len: usize, max_size: usize) -> bool {
    len <= MAX_ANNOUNCEMENT_SIZE && varint_len(len) + len <= room(max_size)
}

/// Packs `entries` (announcements as received or sent) into as few digests as fit in
/// `max_size` bytes each (at most [`MAX_DIGEST_SIZE`]), MACed under `key`. Entries that do
/// not fit ([`fits_digest`]) are left out.
pub fn encode_digests<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
    key: &AnnounceKey,
    max_size: usize,
) -> Vec<Vec<u8>> {
    let room = room(max_size);
    let mut chunks: Vec<Vec<&[u8]>> = Vec::new();
    let mut used = room;
    for entry in entries {
        if !fits_digest(entry.len(), max_size) {
            continue;
        }
        let size = varint_len(entry.len()) + entry.len();
        if used + size > room {
            chunks.push(Vec::new());
            used = 0;
        }
        used += size;
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(entry);
        }
    }
    chunks
        .into_iter()
        .map(|chunk| {
            let mut out = vec![DIGEST_VERSION];
            push_varint(&mut out, chunk.len());
            for entry in chunk {
                push_varint(&mut out, entry.len());
                out.extend_from_slice(entry);
            }
            let mac = key.mac(&out);
            out.extend_from_slice(&mac);
            out
        })
        .collect()
}

/// Checks a digest's size and MAC and splits it into its entries (each still to be checked
/// by itself, see [`decode_entry`]).
pub fn decode_digest<'a>(bytes: &'a [u8], key: &AnnounceKey) -> Result<Vec<&'a [u8]>, DigestError> {
    let len = bytes.len();
    if len > MAX_DIGEST_SIZE {
        return Err(DigestError::TooLarge { len });
    }
    if len < 1 + MAC_LEN {
        return Err(DigestError::Mac);
    }
    let (body, mac) = bytes.split_at(len - MAC_LEN);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(key.mac(body).as_slice(), mac)) {
        return Err(DigestError::Mac);
    }
    let (&version, mut rest) = body.split_first().ok_or(DigestError::Malformed)?;
    if version != DIGEST_VERSION {
        return Err(DigestError::NotADigest { version });
    }
    let count = take_varint(&mut rest).ok_or(DigestError::Malformed)?;
    // Each entry takes at least two bytes: a count beyond that is a lie.
    if count > rest.len() / 2 + 1 {
        return Err(DigestError::Malformed);
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let entry_len = take_varint(&mut rest).ok_or(DigestError::Malformed)?;
        if entry_len > rest.len() {
            return Err(DigestError::Malformed);
        }
        let (entry, tail) = rest.split_at(entry_len);
        entries.push(entry);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(DigestError::Malformed);
    }
    Ok(entries)
}

/// Checks one relayed announcement in full and returns it with its age (the receiver's
/// clock minus the sender's `seq`, at least zero). A relayed announcement may be as old as
/// its sender's expiry allows ([`INTERVALS_PER_EXPIRY`] of the interval it announced, at
/// least the [`FRESHNESS_WINDOW`]) and no further ahead of the receiver's clock than the
/// window; the receiver counts its sender as last heard `age` ago, so relaying never makes
/// a peer live longer than its own announcements did.
pub fn decode_entry(
    bytes: &[u8],
    key: &AnnounceKey,
    now_unix_ms: u64,
) -> Result<(Announcement, Duration), AnnounceError> {
    let ann = decode_verified(bytes, key)?;
    let max_age = ann.interval.map_or(Duration::ZERO, |i| {
        i.min(MAX_HEARTBEAT) * INTERVALS_PER_EXPIRY
    });
    let max_age = max_age.max(FRESHNESS_WINDOW);
    let age = check_age(&ann, now_unix_ms, max_age, FRESHNESS_WINDOW)?;
    Ok((ann, age))
}

fn varint_len(mut value: usize) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a varint of at most 3 bytes (values below 2²¹, more than any digest holds).
fn take_varint(rest: &mut &[u8]) -> Option<usize> {
    let mut value = 0usize;
    for (i, &byte) in rest.iter().enumerate().take(3) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *rest = &rest[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;
    use crate::proto::{
        announce::{AnnounceKind, encode, unix_ms},
        topic::{MeshKeys, TeamSecret},
    };

    fn keys(topic: &str) -> MeshKeys {
        let secret = TeamSecret::new(b"0123456789abcdef-team".to_vec()).expect("secret");
        MeshKeys::derive(&secret, topic).expect("keys")
    }

    fn signed(seed: u8, seq: u64, interval: Option<Duration>, key: &AnnounceKey) -> Vec<u8> {
        let sk = SecretKey::from_bytes(&[seed; 32]);
        let mut ann = Announcement::new(sk.public(), format!("n{seed}"), seq, AnnounceKind::Alive);
        ann.interval = interval;
        encode(&ann, &sk, key).expect("encode")
    }

    /// Packs `entries` into digests of at most `max_size` bytes, checks their size and
    /// version byte, and returns how many there were and the entries read back.
    fn through_digests(
        entries: &[Vec<u8>],
        key: &AnnounceKey,
        max_size: usize,
    ) -> (usize, Vec<Vec<u8>>) {
        let digests = encode_digests(entries.iter().map(Vec::as_slice), key, max_size);
        let mut back = Vec::new();
        for digest in &digests {
            assert!(digest.len() <= max_size, "{}", digest.len());
            assert!(is_digest(digest));
            let decoded = decode_digest(digest, key).expect("decode");
            back.extend(decoded.into_iter().map(<[u8]>::to_vec));
        }
        (digests.len(), back)
    }

    #[test]
    fn a_hundred_announcements_round_trip_through_digests_that_fit() {
        let keys = keys("t");
        let key = keys.announce_key();
        let entries: Vec<Vec<u8>> = (0..200u8)
            .map(|i| signed(i, 1_000 + u64::from(i), None, key))
            .collect();
        let (count, back) = through_digests(&entries, key, MAX_DIGEST_SIZE);
        assert!(count >= 2, "200 entries need more than one digest");
        assert_eq!(back, entries);
        assert!(encode_digests(std::iter::empty(), key, MAX_DIGEST_SIZE).is_empty());
    }

    #[test]
    fn digests_cut_to_a_datagram_fit_it_and_leave_out_only_what_cannot() {
        let keys = keys("t");
        let key = keys.announce_key();
        let entries: Vec<Vec<u8>> = (0..100u8)
            .map(|i| signed(i, 1_000 + u64::from(i), None, key))
            .collect();
        assert_eq!(through_digests(&entries, key, 1024).1, entries);
        // An entry that cannot fit a digest of that size is left out, not sent oversized.
        let mut large = Announcement::new(
            SecretKey::from_bytes(&[200; 32]).public(),
            "x".repeat(64),
            7,
            AnnounceKind::Alive,
        );
        large.addrs = (0..16u16)
            .map(|p| std::net::SocketAddr::from(([10, 0, 0, 1], p)))
            .collect();
        let large = encode(&large, &SecretKey::from_bytes(&[200; 32]), key).expect("encode");
        assert!(large.len() > 100);
        assert!(!fits_digest(large.len(), large.len()));
        assert!(fits_digest(entries[0].len(), large.len()));
        let small = encode_digests([large.as_slice(), entries[0].as_slice()], key, large.len());
        assert_eq!(small.len(), 1);
        assert_eq!(
            decode_digest(&small[0], key).expect("decode"),
            vec![entries[0].as_slice()]
        );
    }

    #[test]
    fn a_digest_for_another_topic_or_altered_or_malformed_is_refused() {
        let keys = keys("t");
        let key = keys.announce_key();
        let entry = signed(1, 5, None, key);
        let digest = encode_digests([entry.as_slice()], key, MAX_DIGEST_SIZE).remove(0);
        assert_eq!(
            decode_digest(&digest, keys_other().announce_key()),
            Err(DigestError::Mac)
        );
        let mut altered = digest.clone();
        altered[3] ^= 1;
        assert_eq!(decode_digest(&altered, key), Err(DigestError::Mac));
        // Authentic framing errors: count larger than the entries, trailing bytes, a
        // plain announcement.
        for body in [
            vec![DIGEST_VERSION, 5, 1, 0],
            vec![DIGEST_VERSION, 0, 9],
            vec![1, 0],
        ] {
            let mut bytes = body.clone();
            bytes.extend_from_slice(&key.mac(&body));
            assert!(decode_digest(&bytes, key).is_err(), "{body:?}");
        }
        assert_eq!(
            decode_digest(&vec![0; MAX_DIGEST_SIZE + 1], key),
            Err(DigestError::TooLarge {
                len: MAX_DIGEST_SIZE + 1
            })
        );
    }

    fn keys_other() -> MeshKeys {
        keys("other")
    }

    #[test]
    fn relayed_entries_may_be_as_old_as_their_senders_expiry_and_count_their_age() {
        let keys = keys("t");
        let key = keys.announce_key();
        let now = unix_ms(std::time::SystemTime::now());
        // A large team's member announces every 25 s: 60 s old is within its expiry (75 s),
        // though outside the freshness window of live messages.
        let slow = signed(1, now - 60_000, Some(Duration::from_secs(25)), key);
        let (ann, age) = decode_entry(&slow, key, now).expect("within its expiry");
        assert_eq!(age, Duration::from_secs(60));
        assert_eq!(ann.interval, Some(Duration::from_secs(25)));
        let expired = signed(1, now - 76_000, Some(Duration::from_secs(25)), key);
        assert!(matches!(
            decode_entry(&expired, key, now),
            Err(AnnounceError::Stale { .. })
        ));
        // Without an interval, the freshness window bounds it; ahead of my clock too.
        let old = signed(2, now - FRESHNESS_WINDOW.as_millis() as u64 - 1, None, key);
        assert!(decode_entry(&old, key, now).is_err());
        let ahead = signed(2, now + FRESHNESS_WINDOW.as_millis() as u64 + 1, None, key);
        assert!(decode_entry(&ahead, key, now).is_err());
        let (_, age) = decode_entry(&signed(2, now + 500, None, key), key, now).expect("skew");
        assert_eq!(age, Duration::ZERO);
        // A forged signature inside an authentic digest is still caught per entry.
        let mut forged = signed(3, now, None, key);
        let len = forged.len();
        forged[len - 40] ^= 1;
        let body = &forged[..len - 32];
        let mac = key.mac(body);
        forged[len - 32..].copy_from_slice(&mac);
        assert!(matches!(
            decode_entry(&forged, key, now),
            Err(AnnounceError::Signature)
        ));
    }
}
