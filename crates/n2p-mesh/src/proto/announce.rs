//! The gossip message a node broadcasts about itself: a versioned, signed and authenticated
//! [`Announcement`], with [`encode`] for the sender and [`decode_verified`] for receivers.
//!
//! ```
//! use iroh::SecretKey;
//! use n2p_mesh::proto::announce::{decode_verified, encode, AnnounceKind, Announcement};
//! use n2p_mesh::proto::topic::{MeshKeys, TeamSecret};
//!
//! let keys = MeshKeys::derive(&TeamSecret::new(b"0123456789abcdef".to_vec())?, "t")?;
//! let me = SecretKey::from_bytes(&[7; 32]);
//! let mut ann = Announcement::new(me.public(), "alice", 1, AnnounceKind::Alive);
//! ann.shares_daemon = true;
//! let bytes = encode(&ann, &me, keys.announce_key())?;
//! assert_eq!(decode_verified(&bytes, keys.announce_key())?, ann);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Wire format, version 1
//!
//! ```text
//! [version: u8 = 1] [body: postcard] [signature: 64 bytes] [mac: 32 bytes]
//! ```
//!
//! - `body` is the postcard encoding of, in order: id (32 bytes), seq (varint), kind (u8:
//!   0 alive, 1 leaving), name (string), shares_daemon (bool), proto_version (varint),
//!   addrs (sequence of socket addresses), relay (optional string) and extensions (sequence
//!   of `(tag: varint u16, data: bytes)`).
//! - Extensions this build writes (all optional, none critical, so older readers take
//!   the message as a plain announcement):
//!   - [`EXT_INTERVAL`]: the sender's announcement interval in milliseconds (varint u32):
//!     how often the sender promises to announce itself, so receivers expire it by that
//!     and not only by the team's `expiry_secs` (see [`Announcement::interval`]).
//!   - [`EXT_UNREACHABLE`]: a peer the sender lost and could not reach again, as its id
//!     (32 bytes) and the last seq the sender had from it (varint u64) (see
//!     [`Announcement::unreachable`]).
//!   - [`EXT_DIGEST_DATAGRAMS`], no data: the sender reads digests sent to it as QUIC
//!     datagrams on its gossip connections (see [`Announcement::digest_datagrams`]).
//! - `signature` is the sender's ed25519 signature, made with its iroh secret key, over
//!   `"n2p mesh announcement v1\0" || topic id || version || body`: it proves who sent it
//!   and binds it to one topic.
//! - `mac` is the keyed BLAKE3 hash, under the topic's announcement key, of everything before
//!   it: it proves the sender holds the team secret. Every future version keeps the MAC as
//!   the last 32 bytes, so any message can be authenticated before anything in it is read.
//!
//! A whole message is at most [`MAX_ANNOUNCEMENT_SIZE`] bytes.
//!
//! # Extending it
//!
//! New information goes into extensions, so old readers keep working: a reader skips the
//! extensions whose tag it does not know, unless the tag has the high bit set
//! ([`CRITICAL_EXTENSION`]), which marks an extension that must not be ignored; then the
//! whole announcement is refused. A new message kind is refused by old readers as
//! [`AnnounceError::UnknownKind`]. Only a change no extension can express bumps the version
//! byte.

use std::{net::SocketAddr, time::SystemTime};

use iroh::{EndpointId, RelayUrl, SecretKey, Signature};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::proto::topic::AnnounceKey;

/// The version byte this build writes and the only one it reads.
pub const WIRE_VERSION: u8 = 1;

/// The largest message accepted or sent, in bytes (checked before anything else).
pub const MAX_ANNOUNCEMENT_SIZE: usize = 2048;

/// The longest announced name, in bytes (it is sanitised by the receiver anyway).
pub const MAX_ANNOUNCED_NAME_LEN: usize = 64;

/// The most direct addresses one announcement may list.
pub const MAX_ADDRS: usize = 16;

/// The longest relay URL, in bytes.
pub const MAX_RELAY_URL_LEN: usize = 256;

/// The version of the `n2p/daemon/<v>` protocol this build speaks, announced as
/// [`Announcement::proto_version`].
pub const PROTO_VERSION: u16 = 1;

/// Extension tags with this bit set must be understood by the reader: an announcement with
/// an unknown critical extension is refused instead of read without it.
pub const CRITICAL_EXTENSION: u16 = 0x8000;

/// Extension tag of [`Announcement::interval`].
pub const EXT_INTERVAL: u16 = 0x0010;

/// Extension tag of [`Announcement::unreachable`].
pub const EXT_UNREACHABLE: u16 = 0x0011;

/// Extension tag of [`Announcement::digest_datagrams`].
pub const EXT_DIGEST_DATAGRAMS: u16 = 0x0012;

/// Domain separation for the signature.
const SIGN_DOMAIN: &[u8] = b"n2p mesh announcement v1\0";

const SIGNATURE_LEN: usize = Signature::LENGTH;
const MAC_LEN: usize = 32;
/// The shortest message that can hold a version byte, signature and MAC.
const MIN_LEN: usize = 1 + SIGNATURE_LEN + MAC_LEN;

/// What an announcement says about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AnnounceKind {
    /// The sender is up (sent at start and then periodically).
    Alive,
    /// The sender is shutting down cleanly: drop it at once.
    Leaving,
}

impl AnnounceKind {
    fn to_wire(self) -> u8 {
        match self {
            Self::Alive => 0,
            Self::Leaving => 1,
        }
    }

    fn from_wire(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Alive),
            1 => Some(Self::Leaving),
            _ => None,
        }
    }
}

/// One node's statement about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Announcement {
    /// The sender's iroh endpoint id; the signature is checked against it.
    pub id: EndpointId,
    /// The name the sender would like to be known by. Receivers use the team file's name
    /// for listed members and a sanitised form of this otherwise.
    pub name: String,
    /// Whether the sender lets teammates use its nix-daemon.
    pub shares_daemon: bool,
    /// The `n2p/daemon/<v>` version the sender serves.
    pub proto_version: u16,
    /// Strictly increasing per sender (see [`SeqClock`]): receivers drop anything not newer
    /// than what they have seen, which stops replays and reordering.
    pub seq: u64,
    /// Alive or leaving.
    pub kind: AnnounceKind,
    /// Direct addresses the sender can be reached at.
    pub addrs: Vec<SocketAddr>,
    /// The sender's home relay, if any.
    pub relay: Option<RelayUrl>,
    /// How often the sender announces itself (`None`: it does not say, as older builds;
    /// then the team's `expiry_secs / 3` is assumed). A large team announces less often
    /// (see [`crate::proto::table::heartbeat_interval`]), and receivers must not drop it
    /// for that.
    pub interval: Option<std::time::Duration>,
    /// A peer the sender lost as a gossip neighbour and then failed to reach, with the
    /// last seq the sender had from it: receivers that have nothing newer from that peer
    /// drop it at once, instead of after its expiry. A peer that reads this about itself
    /// while alive announces itself again at once, which brings it back.
    pub unreachable: Option<Unreachable>,
    /// Whether the sender reads digests sent to it as QUIC datagrams on its gossip
    /// connections (older builds do not, and get digests through gossip only).
    pub digest_datagrams: bool,
}

/// A report, inside an [`Announcement`], that its sender cannot reach a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable {
    /// The peer.
    pub id: EndpointId,
    /// The last seq the reporter had from it; newer news of the peer outweighs the report.
    pub seq: u64,
}

impl Announcement {
    /// An announcement with no addresses, no relay, not sharing, speaking [`PROTO_VERSION`].
    pub fn new(id: EndpointId, name: impl Into<String>, seq: u64, kind: AnnounceKind) -> Self {
        Self {
            id,
            name: name.into(),
            shares_daemon: false,
            proto_version: PROTO_VERSION,
            seq,
            kind,
            addrs: Vec::new(),
            relay: None,
            interval: None,
            unreachable: None,
            digest_datagrams: false,
        }
    }
}

/// Why an announcement could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The secret key does not belong to the announcement's id.
    #[error("the announcement's id is not the signing key's")]
    KeyMismatch,
    /// The name is empty or longer than [`MAX_ANNOUNCED_NAME_LEN`] bytes.
    #[error("the announced name must be 1 to {MAX_ANNOUNCED_NAME_LEN} bytes long")]
    BadName,
    /// More than [`MAX_ADDRS`] addresses.
    #[error("{count} addresses; at most {MAX_ADDRS} can be announced")]
    TooManyAddrs {
        /// How many there were.
        count: usize,
    },
    /// The relay URL is longer than [`MAX_RELAY_URL_LEN`] bytes.
    #[error("the relay URL is longer than {MAX_RELAY_URL_LEN} bytes")]
    RelayTooLong,
    /// The encoded message would exceed [`MAX_ANNOUNCEMENT_SIZE`].
    #[error("the announcement would be {len} bytes; the limit is {MAX_ANNOUNCEMENT_SIZE}")]
    TooLarge {
        /// Its encoded size.
        len: usize,
    },
    /// postcard could not serialize the body.
    #[error("cannot serialize the announcement")]
    Serialize(#[source] postcard::Error),
}

/// Why a received message was dropped. Each variant is a reason to log at debug level and
/// carry on; none is fatal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnnounceError {
    /// Longer than [`MAX_ANNOUNCEMENT_SIZE`].
    #[error("message of {len} bytes exceeds the limit of {MAX_ANNOUNCEMENT_SIZE}")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// Too short to hold a version, signature and MAC.
    #[error("message of {len} bytes is too short")]
    Truncated {
        /// Its size.
        len: usize,
    },
    /// The MAC is wrong: the sender does not hold the team secret, or the message was
    /// altered.
    #[error("bad MAC (wrong team secret or topic, or altered)")]
    Mac,
    /// Authentic, but written in a wire version this build cannot read.
    #[error("unknown wire version {version}")]
    UnknownVersion {
        /// The version byte.
        version: u8,
    },
    /// The body is not valid postcard for this version.
    #[error("cannot decode the body")]
    Decode(#[source] postcard::Error),
    /// Bytes left over after the body.
    #[error("{len} unexpected bytes after the body")]
    TrailingBytes {
        /// How many.
        len: usize,
    },
    /// The id is not a valid ed25519 public key.
    #[error("the announced id is not a valid public key")]
    BadId,
    /// The signature does not verify against the announced id (or was made for another
    /// topic).
    #[error("bad signature")]
    Signature,
    /// A message kind this build does not know.
    #[error("unknown announcement kind {kind}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A critical extension this build does not know.
    #[error("unknown critical extension {tag:#06x}")]
    UnknownExtension {
        /// Its tag.
        tag: u16,
    },
    /// The name is empty or longer than [`MAX_ANNOUNCED_NAME_LEN`] bytes.
    #[error("bad announced name")]
    BadName,
    /// More than [`MAX_ADDRS`] addresses.
    #[error("{count} addresses; at most {MAX_ADDRS} are accepted")]
    TooManyAddrs {
        /// How many there were.
        count: usize,
    },
    /// The relay is not an http(s) URL or is too long.
    #[error("bad relay URL")]
    BadRelay,
    /// An extension this build knows, with data it cannot read.
    #[error("malformed extension {tag:#06x}")]
    BadExtension {
        /// Its tag.
        tag: u16,
    },
    /// Authentic, but its `seq` (the sender's clock) is further than [`FRESHNESS_WINDOW`]
    /// from the receiver's clock: a recording replayed later, or a sender whose clock is
    /// wrong.
    #[error(
        "stale announcement from {id}: {} {} s {} our clock (at most {} s accepted)",
        if *offset_ms < 0 { "made" } else { "dated" },
        offset_ms.unsigned_abs() / 1000,
        if *offset_ms < 0 { "before" } else { "ahead of" },
        FRESHNESS_WINDOW.as_secs()
    )]
    Stale {
        /// The sender.
        id: EndpointId,
        /// Its `seq` minus the receiver's clock, in milliseconds.
        offset_ms: i64,
    },
}

/// How far an announcement's `seq`, which is its sender's wall clock in milliseconds, may
/// be from the receiver's clock, either way, for [`decode_fresh`] to accept it. This is the
/// clock skew tolerated between members (NTP keeps clocks within a fraction of a second)
/// plus transit, and the longest a recorded announcement stays replayable to a receiver
/// that has no state about its sender (freshly started, or the sender's tombstone gone).
pub const FRESHNESS_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// The body as it goes on the wire (version 1). Fields may never be reordered or changed;
/// new data goes into `extensions`.
#[derive(Debug, Serialize, Deserialize)]
struct WireBody {
    id: [u8; 32],
    seq: u64,
    kind: u8,
    name: String,
    shares_daemon: bool,
    proto_version: u16,
    addrs: Vec<SocketAddr>,
    relay: Option<String>,
    extensions: Vec<Extension>,
}

/// A tagged piece of data that later versions add to the body.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Extension {
    tag: u16,
    data: Vec<u8>,
}

/// Encodes, signs and authenticates `ann` for broadcast on `key`'s topic.
pub fn encode(
    ann: &Announcement,
    secret_key: &SecretKey,
    key: &AnnounceKey,
) -> Result<Vec<u8>, EncodeError> {
    if secret_key.public() != ann.id {
        return Err(EncodeError::KeyMismatch);
    }
    if ann.name.is_empty() || ann.name.len() > MAX_ANNOUNCED_NAME_LEN {
        return Err(EncodeError::BadName);
    }
    if ann.addrs.len() > MAX_ADDRS {
        return Err(EncodeError::TooManyAddrs {
            count: ann.addrs.len(),
        });
    }
    let relay = ann.relay.as_ref().map(|url| url.to_string());
    if relay.as_ref().is_some_and(|r| r.len() > MAX_RELAY_URL_LEN) {
        return Err(EncodeError::RelayTooLong);
    }
    let body = WireBody {
        id: *ann.id.as_bytes(),
        seq: ann.seq,
        kind: ann.kind.to_wire(),
        name: ann.name.clone(),
        shares_daemon: ann.shares_daemon,
        proto_version: ann.proto_version,
        addrs: ann.addrs.clone(),
        relay,
        extensions: extensions_of(ann)?,
    };
    seal(WIRE_VERSION, &body, secret_key, key)
}

/// The extensions that carry `ann`'s optional fields.
fn extensions_of(ann: &Announcement) -> Result<Vec<Extension>, EncodeError> {
    let mut extensions = Vec::new();
    if let Some(interval) = ann.interval {
        let ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
        extensions.push(Extension {
            tag: EXT_INTERVAL,
            data: postcard::to_allocvec(&ms).map_err(EncodeError::Serialize)?,
        });
    }
    if let Some(report) = ann.unreachable {
        extensions.push(Extension {
            tag: EXT_UNREACHABLE,
            data: postcard::to_allocvec(&(*report.id.as_bytes(), report.seq))
                .map_err(EncodeError::Serialize)?,
        });
    }
    if ann.digest_datagrams {
        extensions.push(Extension {
            tag: EXT_DIGEST_DATAGRAMS,
            data: Vec::new(),
        });
    }
    Ok(extensions)
}

/// Reads extension `tag`'s data as a `T`, all of it.
fn read_extension<'a, T: Deserialize<'a>>(
    extensions: &'a [Extension],
    tag: u16,
) -> Result<Option<T>, AnnounceError> {
    let Some(ext) = extensions.iter().find(|e| e.tag == tag) else {
        return Ok(None);
    };
    match postcard::take_from_bytes::<T>(&ext.data) {
        Ok((value, [])) => Ok(Some(value)),
        _ => Err(AnnounceError::BadExtension { tag }),
    }
}

/// Serializes `body` behind `version`, then signs and MACs it.
fn seal(
    version: u8,
    body: &WireBody,
    secret_key: &SecretKey,
    key: &AnnounceKey,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![version];
    out = postcard::to_extend(body, out).map_err(EncodeError::Serialize)?;
    let len = out.len() + SIGNATURE_LEN + MAC_LEN;
    if len > MAX_ANNOUNCEMENT_SIZE {
        return Err(EncodeError::TooLarge { len });
    }
    let signature = secret_key.sign(&signing_message(key, &out));
    out.extend_from_slice(&signature.to_bytes());
    let mac = key.mac(&out);
    out.extend_from_slice(&mac);
    Ok(out)
}

/// What the sender signs: domain, topic, version byte and body.
fn signing_message(key: &AnnounceKey, version_and_body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGN_DOMAIN.len() + 32 + version_and_body.len());
    msg.extend_from_slice(SIGN_DOMAIN);
    msg.extend_from_slice(key.topic_id().as_bytes());
    msg.extend_from_slice(version_and_body);
    msg
}

/// Checks and decodes a received message.
///
/// In order: size, MAC (so nothing unauthenticated is parsed), version, body, signature,
/// then the fields. Never panics, whatever the input.
pub fn decode_verified(bytes: &[u8], key: &AnnounceKey) -> Result<Announcement, AnnounceError> {
    let len = bytes.len();
    let (version_and_body, signature, wire) = authenticated_body(bytes, key)?;
    let id = EndpointId::from_bytes(&wire.id).map_err(|_| AnnounceError::BadId)?;
    let signature: [u8; SIGNATURE_LEN] = signature
        .try_into()
        .map_err(|_| AnnounceError::Truncated { len })?;
    id.verify(
        &signing_message(key, version_and_body),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| AnnounceError::Signature)?;

    let kind =
        AnnounceKind::from_wire(wire.kind).ok_or(AnnounceError::UnknownKind { kind: wire.kind })?;
    if let Some(ext) = wire
        .extensions
        .iter()
        .find(|e| e.tag & CRITICAL_EXTENSION != 0)
    {
        return Err(AnnounceError::UnknownExtension { tag: ext.tag });
    }
    if wire.name.is_empty() || wire.name.len() > MAX_ANNOUNCED_NAME_LEN {
        return Err(AnnounceError::BadName);
    }
    if wire.addrs.len() > MAX_ADDRS {
        return Err(AnnounceError::TooManyAddrs {
            count: wire.addrs.len(),
        });
    }
    let relay = match wire.relay {
        Some(url) if url.len() > MAX_RELAY_URL_LEN => return Err(AnnounceError::BadRelay),
        Some(url) => {
            let url: RelayUrl = url.parse().map_err(|_| AnnounceError::BadRelay)?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(AnnounceError::BadRelay);
            }
            Some(url)
        }
        None => None,
    };
    let interval = read_extension::<u32>(&wire.extensions, EXT_INTERVAL)?
        .map(|ms| std::time::Duration::from_millis(ms.into()));
    let unreachable = read_extension::<([u8; 32], u64)>(&wire.extensions, EXT_UNREACHABLE)?
        .map(|(peer, seq)| {
            EndpointId::from_bytes(&peer)
                .map(|id| Unreachable { id, seq })
                .map_err(|_| AnnounceError::BadExtension {
                    tag: EXT_UNREACHABLE,
                })
        })
        .transpose()?;
    let digest_datagrams = read_extension::<()>(&wire.extensions, EXT_DIGEST_DATAGRAMS)?.is_some();
    Ok(Announcement {
        id,
        name: wire.name,
        shares_daemon: wire.shares_daemon,
        proto_version: wire.proto_version,
        seq: wire.seq,
        kind,
        addrs: wire.addrs,
        relay,
        interval,
        unreachable,
        digest_datagrams,
    })
}

/// Checks size and MAC and parses the body, without the signature: version and body, the
/// signature's bytes, and the body.
fn authenticated_body<'a>(
    bytes: &'a [u8],
    key: &AnnounceKey,
) -> Result<(&'a [u8], &'a [u8], WireBody), AnnounceError> {
    let len = bytes.len();
    if len > MAX_ANNOUNCEMENT_SIZE {
        return Err(AnnounceError::TooLarge { len });
    }
    if len < MIN_LEN {
        return Err(AnnounceError::Truncated { len });
    }
    let (signed_part, mac) = bytes.split_at(len - MAC_LEN);
    if !bool::from(key.mac(signed_part).as_slice().ct_eq(mac)) {
        return Err(AnnounceError::Mac);
    }
    let (version_and_body, signature) = signed_part.split_at(signed_part.len() - SIGNATURE_LEN);
    let (&version, body) = version_and_body
        .split_first()
        .ok_or(AnnounceError::Truncated { len })?;
    if version != WIRE_VERSION {
        return Err(AnnounceError::UnknownVersion { version });
    }
    let (wire, rest) =
        postcard::take_from_bytes::<WireBody>(body).map_err(AnnounceError::Decode)?;
    if !rest.is_empty() {
        return Err(AnnounceError::TrailingBytes { len: rest.len() });
    }
    Ok((version_and_body, signature, wire))
}

/// The sender's id bytes and `seq` of an authentic message (size and MAC checked), without
/// the costlier signature check: for skipping announcements already known before
/// verifying them in full with [`decode_verified`]. Nothing read here may be trusted
/// beyond "a holder of the team secret wrote it".
pub fn peek(bytes: &[u8], key: &AnnounceKey) -> Result<([u8; 32], u64), AnnounceError> {
    let (_, _, wire) = authenticated_body(bytes, key)?;
    Ok((wire.id, wire.seq))
}

/// [`decode_verified`], then refuses an announcement whose `seq` is further than
/// [`FRESHNESS_WINDOW`] from `now_unix_ms` (the receiver's clock, see [`unix_ms`]) as
/// [`AnnounceError::Stale`]. What a node runs on every gossip message: with the per-sender
/// `seq` check of the peer table it refuses replays whether or not it remembers the sender.
pub fn decode_fresh(
    bytes: &[u8],
    key: &AnnounceKey,
    now_unix_ms: u64,
) -> Result<Announcement, AnnounceError> {
    let ann = decode_verified(bytes, key)?;
    check_age(&ann, now_unix_ms, FRESHNESS_WINDOW, FRESHNESS_WINDOW)?;
    Ok(ann)
}

/// Refuses `ann` as [`AnnounceError::Stale`] when its `seq` (the sender's clock) is more than
/// `behind` before `now_unix_ms` or more than `ahead` after it; otherwise returns its age
/// (zero when it is ahead).
pub fn check_age(
    ann: &Announcement,
    now_unix_ms: u64,
    behind: std::time::Duration,
    ahead: std::time::Duration,
) -> Result<std::time::Duration, AnnounceError> {
    let offset_ms = i128::from(ann.seq) - i128::from(now_unix_ms);
    let limit = |d: std::time::Duration| i128::try_from(d.as_millis()).unwrap_or(i128::MAX);
    if -offset_ms > limit(behind) || offset_ms > limit(ahead) {
        return Err(AnnounceError::Stale {
            id: ann.id,
            offset_ms: i64::try_from(offset_ms).unwrap_or(if offset_ms < 0 {
                i64::MIN
            } else {
                i64::MAX
            }),
        });
    }
    Ok(std::time::Duration::from_millis(
        u64::try_from(-offset_ms).unwrap_or(0),
    ))
}

/// Hands out sequence numbers for one sender: the wall clock in milliseconds since the Unix
/// epoch, but always greater than the last one handed out, so they keep increasing when the
/// clock steps back or two announcements fall in one millisecond.
///
/// Using the clock (not a counter from 0) means a restarted node is newer than anything it
/// sent before, without storing state (as long as its clock did not step back across the
/// restart). At `u64::MAX` it saturates, some 584 million years from now.
#[derive(Debug, Clone, Default)]
pub struct SeqClock {
    last: u64,
}

impl SeqClock {
    /// A clock that has handed out nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next sequence number, given the current time in Unix milliseconds.
    pub fn next(&mut self, now_unix_ms: u64) -> u64 {
        let seq = now_unix_ms.max(self.last.saturating_add(1));
        self.last = seq;
        seq
    }
}

/// Milliseconds since the Unix epoch (0 for times before it), for [`SeqClock::next`].
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iroh_gossip::TopicId;

    use super::*;
    use crate::proto::topic::{MeshKeys, TeamSecret};

    fn keys(topic: &str) -> MeshKeys {
        let secret = TeamSecret::new(b"0123456789abcdef-team".to_vec()).expect("secret");
        MeshKeys::derive(&secret, topic).expect("keys")
    }

    fn sk(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    fn sample(sk: &SecretKey) -> Announcement {
        let mut ann =
            Announcement::new(sk.public(), "alice", 1_700_000_000_000, AnnounceKind::Alive);
        ann.shares_daemon = true;
        ann.addrs = vec![
            "127.0.0.1:7001".parse().expect("addr"),
            "[::1]:7002".parse().expect("addr"),
        ];
        ann.relay = Some("https://relay.example.org./".parse().expect("url"));
        ann
    }

    fn wire_of(ann: &Announcement) -> WireBody {
        WireBody {
            id: *ann.id.as_bytes(),
            seq: ann.seq,
            kind: ann.kind.to_wire(),
            name: ann.name.clone(),
            shares_daemon: ann.shares_daemon,
            proto_version: ann.proto_version,
            addrs: ann.addrs.clone(),
            relay: ann.relay.as_ref().map(|u| u.to_string()),
            extensions: extensions_of(ann).expect("extensions"),
        }
    }

    /// A tiny deterministic PRNG (xorshift64*), so the fuzz tests need no extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Appends a correct MAC to arbitrary bytes, to reach the parser with garbage.
    fn with_mac(key: &AnnounceKey, mut bytes: Vec<u8>) -> Vec<u8> {
        let mac = key.mac(&bytes);
        bytes.extend_from_slice(&mac);
        bytes
    }

    #[test]
    fn round_trip() {
        let keys = keys("t");
        let me = sk(1);
        let ann = sample(&me);
        let bytes = encode(&ann, &me, keys.announce_key()).expect("encode");
        assert!(bytes.len() <= MAX_ANNOUNCEMENT_SIZE);
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(
            decode_verified(&bytes, keys.announce_key()).expect("decode"),
            ann
        );

        let mut leaving = Announcement::new(me.public(), "a", 2, AnnounceKind::Leaving);
        leaving.proto_version = 7;
        let bytes = encode(&leaving, &me, keys.announce_key()).expect("encode");
        assert_eq!(
            decode_verified(&bytes, keys.announce_key()).expect("decode"),
            leaving
        );
    }

    #[test]
    fn interval_unreachable_report_and_digest_datagrams_round_trip_and_old_readers_skip_them() {
        let keys = keys("t");
        let me = sk(1);
        let mut ann = sample(&me);
        ann.interval = Some(Duration::from_millis(25_000));
        ann.unreachable = Some(Unreachable {
            id: sk(2).public(),
            seq: 1_699_999_999_000,
        });
        ann.digest_datagrams = true;
        let bytes = encode(&ann, &me, keys.announce_key()).expect("encode");
        assert_eq!(
            decode_verified(&bytes, keys.announce_key()).expect("decode"),
            ann
        );
        // No extension is critical: a reader that knows none of the tags (any older build)
        // still takes the message.
        let body = wire_of(&ann);
        assert!(
            body.extensions
                .iter()
                .all(|e| e.tag & CRITICAL_EXTENSION == 0)
        );
        assert_eq!(body.extensions.len(), 3);
    }

    #[test]
    fn a_malformed_known_extension_is_refused() {
        let keys = keys("t");
        let me = sk(1);
        let ann = sample(&me);
        for (tag, data) in [
            (EXT_INTERVAL, vec![]),
            (EXT_INTERVAL, vec![5, 0]),
            (EXT_UNREACHABLE, vec![1; 12]),
            (EXT_DIGEST_DATAGRAMS, vec![0]),
        ] {
            let mut body = wire_of(&ann);
            body.extensions = vec![Extension { tag, data }];
            let bytes = seal(WIRE_VERSION, &body, &me, keys.announce_key()).expect("seal");
            assert!(
                matches!(
                    decode_verified(&bytes, keys.announce_key()),
                    Err(AnnounceError::BadExtension { tag: t }) if t == tag
                ),
                "tag {tag:#06x}"
            );
        }
    }

    #[test]
    fn largest_allowed_announcement_fits() {
        let keys = keys("t");
        let me = sk(1);
        let mut ann = sample(&me);
        ann.name = "n".repeat(MAX_ANNOUNCED_NAME_LEN);
        ann.addrs = vec!["[ffff::ffff]:65535".parse().expect("addr"); MAX_ADDRS];
        let url = format!("https://{}.org/", "r".repeat(MAX_RELAY_URL_LEN - 13));
        ann.relay = Some(url.parse().expect("url"));
        ann.seq = u64::MAX;
        ann.interval = Some(Duration::from_millis(u32::MAX.into()));
        ann.unreachable = Some(Unreachable {
            id: sk(2).public(),
            seq: u64::MAX,
        });
        let bytes = encode(&ann, &me, keys.announce_key()).expect("encode");
        assert!(bytes.len() < MAX_ANNOUNCEMENT_SIZE / 2, "{}", bytes.len());
        assert_eq!(
            decode_verified(&bytes, keys.announce_key()).expect("decode"),
            ann
        );
    }

    #[test]
    fn encode_refuses_bad_input() {
        let keys = keys("t");
        let me = sk(1);
        let ann = sample(&me);
        assert!(matches!(
            encode(&ann, &sk(2), keys.announce_key()),
            Err(EncodeError::KeyMismatch)
        ));
        let mut bad = ann.clone();
        bad.name = String::new();
        assert!(matches!(
            encode(&bad, &me, keys.announce_key()),
            Err(EncodeError::BadName)
        ));
        bad.name = "n".repeat(MAX_ANNOUNCED_NAME_LEN + 1);
        assert!(matches!(
            encode(&bad, &me, keys.announce_key()),
            Err(EncodeError::BadName)
        ));
        let mut bad = ann.clone();
        bad.addrs = vec!["127.0.0.1:1".parse().expect("addr"); MAX_ADDRS + 1];
        assert!(matches!(
            encode(&bad, &me, keys.announce_key()),
            Err(EncodeError::TooManyAddrs { count: 17 })
        ));
        let mut bad = ann;
        let url = format!("https://{}.org/", "r".repeat(MAX_RELAY_URL_LEN));
        bad.relay = Some(url.parse().expect("url"));
        assert!(matches!(
            encode(&bad, &me, keys.announce_key()),
            Err(EncodeError::RelayTooLong)
        ));
    }

    #[test]
    fn size_is_checked_first() {
        let keys = keys("t");
        let big = vec![0u8; MAX_ANNOUNCEMENT_SIZE + 1];
        assert!(matches!(
            decode_verified(&big, keys.announce_key()),
            Err(AnnounceError::TooLarge { len }) if len == MAX_ANNOUNCEMENT_SIZE + 1
        ));
        // even a well-MAC'd oversized message is refused for its size
        let big = with_mac(
            keys.announce_key(),
            vec![WIRE_VERSION; MAX_ANNOUNCEMENT_SIZE],
        );
        assert!(matches!(
            decode_verified(&big, keys.announce_key()),
            Err(AnnounceError::TooLarge { .. })
        ));
        for len in 0..MIN_LEN {
            assert!(matches!(
                decode_verified(&vec![1u8; len], keys.announce_key()),
                Err(AnnounceError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn wrong_secret_or_topic_fails_the_mac() {
        let me = sk(1);
        let bytes = encode(&sample(&me), &me, keys("t").announce_key()).expect("encode");
        assert!(matches!(
            decode_verified(&bytes, keys("other").announce_key()),
            Err(AnnounceError::Mac)
        ));
        let other_team = MeshKeys::derive(
            &TeamSecret::new(b"another team secret".to_vec()).expect("secret"),
            "t",
        )
        .expect("keys");
        assert!(matches!(
            decode_verified(&bytes, other_team.announce_key()),
            Err(AnnounceError::Mac)
        ));
    }

    #[test]
    fn every_bit_flip_is_caught() {
        let keys = keys("t");
        let me = sk(1);
        let bytes = encode(&sample(&me), &me, keys.announce_key()).expect("encode");
        for i in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            assert!(
                matches!(
                    decode_verified(&flipped, keys.announce_key()),
                    Err(AnnounceError::Mac)
                ),
                "bit {i}"
            );
        }
    }

    #[test]
    fn every_truncation_is_caught() {
        let keys = keys("t");
        let me = sk(1);
        let bytes = encode(&sample(&me), &me, keys.announce_key()).expect("encode");
        for len in 0..bytes.len() {
            assert!(decode_verified(&bytes[..len], keys.announce_key()).is_err());
            // re-MAC'd truncations reach the parser and still fail cleanly
            let cut = with_mac(
                keys.announce_key(),
                bytes[..len.min(bytes.len() - MAC_LEN)].to_vec(),
            );
            if cut.len() < bytes.len() {
                assert!(
                    decode_verified(&cut, keys.announce_key()).is_err(),
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn forged_signature_is_caught() {
        let keys = keys("t");
        let alice = sk(1);
        let mallory = sk(2);
        // mallory holds the team secret but claims to be alice
        let body = wire_of(&sample(&alice));
        let forged = seal(WIRE_VERSION, &body, &mallory, keys.announce_key()).expect("seal");
        assert!(matches!(
            decode_verified(&forged, keys.announce_key()),
            Err(AnnounceError::Signature)
        ));
    }

    #[test]
    fn signature_binds_the_topic() {
        // same MAC key, different topic id: the signature no longer verifies
        let me = sk(1);
        let mac_key = *blake3::hash(b"shared").as_bytes();
        let a = AnnounceKey::from_parts(TopicId::from_bytes([1; 32]), mac_key);
        let b = AnnounceKey::from_parts(TopicId::from_bytes([2; 32]), mac_key);
        let msg = encode(&sample(&me), &me, &a).expect("encode");
        assert!(decode_verified(&msg, &a).is_ok());
        assert!(matches!(
            decode_verified(&msg, &b),
            Err(AnnounceError::Signature)
        ));
    }

    #[test]
    fn unknown_version_is_reported_after_the_mac() {
        let keys = keys("t");
        let me = sk(1);
        let bytes = seal(2, &wire_of(&sample(&me)), &me, keys.announce_key()).expect("seal");
        assert!(matches!(
            decode_verified(&bytes, keys.announce_key()),
            Err(AnnounceError::UnknownVersion { version: 2 })
        ));
    }

    #[test]
    fn bad_fields_are_refused() {
        let keys = keys("t");
        let me = sk(1);
        let ann = sample(&me);
        let check = |body: WireBody| {
            let bytes = seal(WIRE_VERSION, &body, &me, keys.announce_key()).expect("seal");
            decode_verified(&bytes, keys.announce_key())
        };

        let mut body = wire_of(&ann);
        body.kind = 9;
        assert!(matches!(
            check(body),
            Err(AnnounceError::UnknownKind { kind: 9 })
        ));

        let mut body = wire_of(&ann);
        body.name = String::new();
        assert!(matches!(check(body), Err(AnnounceError::BadName)));

        let mut body = wire_of(&ann);
        body.name = "x".repeat(MAX_ANNOUNCED_NAME_LEN + 1);
        assert!(matches!(check(body), Err(AnnounceError::BadName)));

        let mut body = wire_of(&ann);
        body.addrs = vec!["127.0.0.1:1".parse().expect("addr"); MAX_ADDRS + 1];
        assert!(matches!(
            check(body),
            Err(AnnounceError::TooManyAddrs { count: 17 })
        ));

        let mut body = wire_of(&ann);
        body.relay = Some("not a url".into());
        assert!(matches!(check(body), Err(AnnounceError::BadRelay)));

        let mut body = wire_of(&ann);
        body.relay = Some("file:///etc/passwd".into());
        assert!(matches!(check(body), Err(AnnounceError::BadRelay)));

        let mut body = wire_of(&ann);
        body.relay = Some(format!("https://{}.org", "r".repeat(MAX_RELAY_URL_LEN)));
        assert!(matches!(check(body), Err(AnnounceError::BadRelay)));
    }

    #[test]
    fn bad_id_is_refused() {
        let keys = keys("t");
        let me = sk(1);
        let mut body = wire_of(&sample(&me));
        // find 32 bytes that are not a point on the curve
        body.id = (2u8..=255)
            .map(|y| {
                let mut b = [0u8; 32];
                b[0] = y;
                b
            })
            .find(|b| EndpointId::from_bytes(b).is_err())
            .expect("some y is not on the curve");
        let bytes = seal(WIRE_VERSION, &body, &me, keys.announce_key()).expect("seal");
        assert!(matches!(
            decode_verified(&bytes, keys.announce_key()),
            Err(AnnounceError::BadId)
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let keys = keys("t");
        let me = sk(1);
        let mut out = vec![WIRE_VERSION];
        out = postcard::to_extend(&wire_of(&sample(&me)), out).expect("ser");
        out.push(0);
        let sig = me.sign(&signing_message(keys.announce_key(), &out));
        out.extend_from_slice(&sig.to_bytes());
        let bytes = with_mac(keys.announce_key(), out);
        assert!(matches!(
            decode_verified(&bytes, keys.announce_key()),
            Err(AnnounceError::TrailingBytes { len: 1 })
        ));
    }

    #[test]
    fn extensions_unknown_are_skipped_critical_refused() {
        let keys = keys("t");
        let me = sk(1);
        let ann = sample(&me);
        let mut body = wire_of(&ann);
        body.extensions = vec![Extension {
            tag: 0x0042,
            data: vec![1, 2, 3],
        }];
        let bytes = seal(WIRE_VERSION, &body, &me, keys.announce_key()).expect("seal");
        assert_eq!(
            decode_verified(&bytes, keys.announce_key()).expect("decode"),
            ann
        );

        let mut body = wire_of(&ann);
        body.extensions = vec![
            Extension {
                tag: 0x0001,
                data: vec![],
            },
            Extension {
                tag: CRITICAL_EXTENSION | 7,
                data: vec![9],
            },
        ];
        let bytes = seal(WIRE_VERSION, &body, &me, keys.announce_key()).expect("seal");
        assert!(matches!(
            decode_verified(&bytes, keys.announce_key()),
            Err(AnnounceError::UnknownExtension { tag: 0x8007 })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // Each random message twice: as it comes (stopped by the MAC) and with a valid MAC
        // appended, so the version check, the body parser and the signature check behind
        // the MAC see every random prefix too.
        let keys = keys("t");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut past_the_mac = 0;
        for round in 0..5_000 {
            let len = rng.below(MAX_ANNOUNCEMENT_SIZE + 200);
            let mut bytes = rng.bytes(len);
            assert!(decode_verified(&bytes, keys.announce_key()).is_err());
            // Every other one in the current version, so the body parser gets them.
            if let Some(first) = bytes.first_mut().filter(|_| round % 2 == 0) {
                *first = WIRE_VERSION;
            }
            let maced = with_mac(keys.announce_key(), bytes);
            let err = decode_verified(&maced, keys.announce_key())
                .expect_err("random bytes behind a valid MAC decoded");
            if !matches!(
                err,
                AnnounceError::Mac
                    | AnnounceError::TooLarge { .. }
                    | AnnounceError::Truncated { .. }
            ) {
                past_the_mac += 1;
            }
        }
        assert!(past_the_mac > 1_000, "only {past_the_mac} got past the MAC");
    }

    #[test]
    fn authenticated_garbage_never_panics() {
        // with a valid MAC the parser sees attacker-chosen bytes: it must fail cleanly
        let keys = keys("t");
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let len = rng.below(400);
            let mut bytes = rng.bytes(len);
            if let Some(first) = bytes.first_mut() {
                *first = WIRE_VERSION;
            }
            let bytes = with_mac(keys.announce_key(), bytes);
            assert!(decode_verified(&bytes, keys.announce_key()).is_err());
        }
    }

    #[test]
    fn mutated_bodies_never_panic() {
        // flip bytes inside a real body, re-sign with the claimed key, re-MAC
        let keys = keys("t");
        let me = sk(1);
        let mut base = vec![WIRE_VERSION];
        base = postcard::to_extend(&wire_of(&sample(&me)), base).expect("ser");
        let mut rng = Rng(7);
        for _ in 0..600 {
            let mut body = base.clone();
            for _ in 0..1 + rng.below(4) {
                let i = 1 + rng.below(body.len() - 1);
                body[i] = rng.next() as u8;
            }
            let sig = me.sign(&signing_message(keys.announce_key(), &body));
            body.extend_from_slice(&sig.to_bytes());
            let bytes = with_mac(keys.announce_key(), body);
            // may decode (a different valid announcement) or fail; must not panic
            if let Ok(ann) = decode_verified(&bytes, keys.announce_key()) {
                assert!(ann.name.len() <= MAX_ANNOUNCED_NAME_LEN);
                assert!(ann.addrs.len() <= MAX_ADDRS);
            }
        }
    }

    /// A recording of a real announcement, replayed later to a receiver that knows nothing
    /// of its sender (freshly started, or its tombstone gone), is refused once it is older
    /// than the window; within the window, and with skew either way, it is accepted.
    #[test]
    fn recorded_announcements_replayed_later_are_refused() {
        let keys = keys("t");
        let me = sk(1);
        let sent_at = 1_800_000_000_000u64;
        let mut ann = sample(&me);
        ann.seq = SeqClock::new().next(sent_at);
        let recorded = encode(&ann, &me, keys.announce_key()).expect("encode");
        let window = u64::try_from(FRESHNESS_WINDOW.as_millis()).expect("ms");
        for now in [sent_at, sent_at + window, sent_at - window] {
            assert_eq!(
                decode_fresh(&recorded, keys.announce_key(), now).expect("fresh"),
                ann
            );
        }
        for (now, behind) in [(sent_at + window + 1, true), (sent_at - window - 1, false)] {
            let err = decode_fresh(&recorded, keys.announce_key(), now).expect_err("stale");
            assert!(
                matches!(err, AnnounceError::Stale { offset_ms, .. } if (offset_ms < 0) == behind),
                "{err}"
            );
        }
        let err = decode_fresh(&recorded, keys.announce_key(), sent_at + 3_600_000)
            .expect_err("an hour old");
        assert_eq!(
            err.to_string(),
            format!(
                "stale announcement from {}: made 3600 s before our clock (at most 30 s accepted)",
                me.public()
            )
        );
    }

    #[test]
    fn seq_clock_is_strictly_increasing() {
        let mut clock = SeqClock::new();
        assert_eq!(clock.next(1000), 1000);
        assert_eq!(clock.next(1000), 1001);
        assert_eq!(clock.next(500), 1002); // clock stepped back
        assert_eq!(clock.next(5000), 5000);
        let mut clock = SeqClock::new();
        assert_eq!(clock.next(u64::MAX), u64::MAX);
        assert_eq!(clock.next(0), u64::MAX); // saturates rather than wrapping
    }

    #[test]
    fn unix_ms_of_times() {
        assert_eq!(unix_ms(SystemTime::UNIX_EPOCH), 0);
        assert_eq!(
            unix_ms(SystemTime::UNIX_EPOCH + Duration::from_millis(1234)),
            1234
        );
        assert_eq!(unix_ms(SystemTime::UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
