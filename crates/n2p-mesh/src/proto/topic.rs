//! Keys derived from the team secret and a topic name: the gossip [`TopicId`], the key that
//! authenticates announcements, and the access secret open teams prove knowledge of.
//!
//! ```
//! use n2p_mesh::proto::topic::{MeshKeys, TeamSecret};
//!
//! let secret = TeamSecret::new(b"correct horse battery staple".to_vec())?;
//! let keys = MeshKeys::derive(&secret, "builders")?;
//! // Everyone with the same secret and topic name joins the same gossip topic.
//! assert_eq!(keys.topic_id(), MeshKeys::derive(&secret, "builders")?.topic_id());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every key comes from the secret through BLAKE3's `derive_key` with its own context string,
//! so keys for different purposes are independent. The topic id and the MAC key are then a
//! keyed hash of the topic name: without the secret a topic id reveals nothing, not even
//! which topic name it stands for, and ids of different topics are unrelated.

use std::fmt;

use iroh_gossip::TopicId;
use zeroize::Zeroizing;

/// Context for the key under which topic names become topic ids.
const TOPIC_ID_CONTEXT: &str = "n2p 2025 mesh gossip topic id v1";
/// Context for the key under which topic names become announcement MAC keys.
const ANNOUNCE_MAC_CONTEXT: &str = "n2p 2025 mesh announcement mac v1";
/// Context for the access secret of open teams.
const ACCESS_SECRET_CONTEXT: &str = "n2p 2025 mesh open team access secret v1";

/// The longest topic name, in bytes.
pub const MAX_TOPIC_NAME_LEN: usize = 64;

/// A team's shared secret: at least [`TeamSecret::MIN_LEN`] bytes, wiped from memory on drop
/// and never printed.
#[derive(Clone)]
pub struct TeamSecret(Zeroizing<Vec<u8>>);

/// Why bytes were refused as a team secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TeamSecretError {
    /// There are no bytes at all.
    #[error("the team secret is empty")]
    Empty,
    /// Fewer than [`TeamSecret::MIN_LEN`] bytes.
    #[error(
        "the team secret is only {len} bytes long; it needs at least {} bytes",
        TeamSecret::MIN_LEN
    )]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// More than [`TeamSecret::MAX_LEN`] bytes (most likely the wrong file).
    #[error(
        "the team secret is {len} bytes long; the limit is {} bytes",
        TeamSecret::MAX_LEN
    )]
    TooLong {
        /// Its length.
        len: usize,
    },
}

impl TeamSecret {
    /// The shortest secret accepted, in bytes.
    pub const MIN_LEN: usize = 16;
    /// The longest secret accepted, in bytes.
    pub const MAX_LEN: usize = 4096;

    /// Wraps secret bytes, taken as they are (the loader trims whitespace before this).
    pub fn new(bytes: Vec<u8>) -> Result<Self, TeamSecretError> {
        let bytes = Zeroizing::new(bytes);
        match bytes.len() {
            0 => Err(TeamSecretError::Empty),
            len if len < Self::MIN_LEN => Err(TeamSecretError::TooShort { len }),
            len if len > Self::MAX_LEN => Err(TeamSecretError::TooLong { len }),
            _ => Ok(Self(bytes)),
        }
    }

    fn derive(&self, context: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, &self.0))
    }
}

impl fmt::Debug for TeamSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TeamSecret(..)")
    }
}

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicNameError {
    /// The name is empty.
    #[error("the topic name is empty")]
    Empty,
    /// The name is longer than [`MAX_TOPIC_NAME_LEN`] bytes.
    #[error("the topic name is {len} bytes long; the limit is {MAX_TOPIC_NAME_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a control character.
    #[error("the topic name contains the control character {ch:?}")]
    Control {
        /// The character.
        ch: char,
    },
    /// The name starts or ends with white space (which is easy to type by accident and
    /// would silently lead to a different topic).
    #[error("the topic name starts or ends with white space")]
    Whitespace,
}

/// Checks a topic name: 1 to [`MAX_TOPIC_NAME_LEN`] bytes of UTF-8 without control
/// characters or surrounding white space. Names are compared byte for byte.
pub fn validate_topic_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(TopicNameError::TooLong { len: name.len() });
    }
    if let Some(ch) = name.chars().find(|c| c.is_control()) {
        return Err(TopicNameError::Control { ch });
    }
    if name.trim() != name {
        return Err(TopicNameError::Whitespace);
    }
    Ok(())
}

/// The key that authenticates announcements on one topic, together with that topic's id
/// (which signatures cover, so an announcement cannot be moved to another topic).
#[derive(Clone)]
pub struct AnnounceKey {
    topic: TopicId,
    mac_key: Zeroizing<[u8; 32]>,
}

impl AnnounceKey {
    /// Builds a key from its parts; normally it comes from [`MeshKeys::derive`].
    pub fn from_parts(topic: TopicId, mac_key: [u8; 32]) -> Self {
        Self {
            topic,
            mac_key: Zeroizing::new(mac_key),
        }
    }

    /// The topic this key belongs to.
    pub fn topic_id(&self) -> TopicId {
        self.topic
    }

    /// The keyed BLAKE3 hash of `data`.
    pub(crate) fn mac(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac_key, data).as_bytes()
    }
}

impl fmt::Debug for AnnounceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnnounceKey")
            .field("topic", &self.topic.fmt_short())
            .finish_non_exhaustive()
    }
}

/// Everything a node derives from the team secret for one topic.
#[derive(Clone)]
pub struct MeshKeys {
    announce: AnnounceKey,
    access_secret: Zeroizing<[u8; 32]>,
}

impl MeshKeys {
    /// Derives the topic id, announcement key and access secret for `topic_name`.
    pub fn derive(secret: &TeamSecret, topic_name: &str) -> Result<Self, TopicNameError> {
        let topic = derive_topic_id(secret, topic_name)?;
        let mac_key =
            blake3::keyed_hash(&secret.derive(ANNOUNCE_MAC_CONTEXT), topic_name.as_bytes());
        Ok(Self {
            announce: AnnounceKey::from_parts(topic, *mac_key.as_bytes()),
            access_secret: Zeroizing::new(derive_access_secret(secret)),
        })
    }

    /// The gossip topic to join.
    pub fn topic_id(&self) -> TopicId {
        self.announce.topic
    }

    /// The key that signs-and-MACs announcements on this topic.
    pub fn announce_key(&self) -> &AnnounceKey {
        &self.announce
    }

    /// The open-team access secret (see [`derive_access_secret`]).
    pub fn access_secret(&self) -> [u8; 32] {
        *self.access_secret
    }
}

impl fmt::Debug for MeshKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshKeys")
            .field("topic", &self.announce.topic.fmt_short())
            .finish_non_exhaustive()
    }
}

/// The gossip topic id for `topic_name` in the team that holds `secret`.
pub fn derive_topic_id(secret: &TeamSecret, topic_name: &str) -> Result<TopicId, TopicNameError> {
    validate_topic_name(topic_name)?;
    let id = blake3::keyed_hash(&secret.derive(TOPIC_ID_CONTEXT), topic_name.as_bytes());
    Ok(TopicId::from_bytes(*id.as_bytes()))
}

/// The 32-byte secret a peer of an open team proves knowledge of before it may use a daemon.
///
/// It depends on the team secret only, not on the topic: whoever holds the team secret can
/// derive every topic's keys anyway, and this way the access check needs no topic.
pub fn derive_access_secret(secret: &TeamSecret) -> [u8; 32] {
    *secret.derive(ACCESS_SECRET_CONTEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> TeamSecret {
        TeamSecret::new(s.as_bytes().to_vec()).expect("valid secret")
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn secret_length_limits() {
        assert_eq!(TeamSecret::new(vec![]).err(), Some(TeamSecretError::Empty));
        assert_eq!(
            TeamSecret::new(vec![1; 15]).err(),
            Some(TeamSecretError::TooShort { len: 15 })
        );
        assert!(TeamSecret::new(vec![1; 16]).is_ok());
        assert!(TeamSecret::new(vec![1; TeamSecret::MAX_LEN]).is_ok());
        assert_eq!(
            TeamSecret::new(vec![1; TeamSecret::MAX_LEN + 1]).err(),
            Some(TeamSecretError::TooLong {
                len: TeamSecret::MAX_LEN + 1
            })
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = secret("0123456789abcdef-very-secret");
        assert_eq!(format!("{s:?}"), "TeamSecret(..)");
        let keys = MeshKeys::derive(&s, "t").expect("keys");
        let shown = format!("{keys:?} {:?}", keys.announce_key());
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(!shown.contains(&hex(&keys.access_secret())), "{shown}");
    }

    /// Fixed outputs: these must never change, or nodes of different versions would no
    /// longer find each other.
    #[test]
    fn test_vectors() {
        let s = secret("n2p test secret 0123456789");
        let keys = MeshKeys::derive(&s, "builders").expect("keys");
        assert_eq!(
            hex(keys.topic_id().as_bytes()),
            "019976aa9d46bd1f021fccd28ba5ae69f60aef3a46ad51444fc7ed9d45870f2f"
        );
        assert_eq!(
            hex(&keys.announce_key().mac(b"hello")),
            "6e38797a264e7a9fd847fdb5d393850b41bc2ffb71e190ad5e8bcb50b4b92b72"
        );
        assert_eq!(
            hex(&keys.access_secret()),
            "1aab2d166e4afaac07e78bd0b23189df5b75e66b044b59ad96e2025d1671e2e3"
        );
    }

    /// The construction, spelt out with plain BLAKE3 calls.
    #[test]
    fn construction() {
        let raw = b"n2p test secret 0123456789";
        let keys =
            MeshKeys::derive(&secret("n2p test secret 0123456789"), "builders").expect("keys");
        let topic_key = blake3::derive_key(TOPIC_ID_CONTEXT, raw);
        assert_eq!(
            keys.topic_id().as_bytes(),
            blake3::keyed_hash(&topic_key, b"builders").as_bytes()
        );
        let mac_key =
            blake3::keyed_hash(&blake3::derive_key(ANNOUNCE_MAC_CONTEXT, raw), b"builders");
        assert_eq!(
            keys.announce_key().mac(b"m"),
            *blake3::keyed_hash(mac_key.as_bytes(), b"m").as_bytes()
        );
        assert_eq!(
            keys.access_secret(),
            blake3::derive_key(ACCESS_SECRET_CONTEXT, raw)
        );
    }

    #[test]
    fn derivation_is_deterministic() {
        let a = MeshKeys::derive(&secret("0123456789abcdef"), "t").expect("keys");
        let b = MeshKeys::derive(&secret("0123456789abcdef"), "t").expect("keys");
        assert_eq!(a.topic_id(), b.topic_id());
        assert_eq!(a.access_secret(), b.access_secret());
        assert_eq!(a.announce_key().mac(b"x"), b.announce_key().mac(b"x"));
    }

    #[test]
    fn different_topics_and_secrets_give_different_keys() {
        let s1 = secret("0123456789abcdef");
        let s2 = secret("0123456789abcdeg");
        let k11 = MeshKeys::derive(&s1, "one").expect("keys");
        let k12 = MeshKeys::derive(&s1, "two").expect("keys");
        let k21 = MeshKeys::derive(&s2, "one").expect("keys");
        assert_ne!(k11.topic_id(), k12.topic_id());
        assert_ne!(k11.topic_id(), k21.topic_id());
        assert_ne!(k12.topic_id(), k21.topic_id());
        assert_ne!(k11.announce_key().mac(b"m"), k12.announce_key().mac(b"m"));
        assert_ne!(k11.announce_key().mac(b"m"), k21.announce_key().mac(b"m"));
        // the access secret is per team, not per topic
        assert_eq!(k11.access_secret(), k12.access_secret());
        assert_ne!(k11.access_secret(), k21.access_secret());
    }

    #[test]
    fn keys_are_independent_of_each_other() {
        let s = secret("0123456789abcdef");
        let keys = MeshKeys::derive(&s, "t").expect("keys");
        let topic = *keys.topic_id().as_bytes();
        assert_ne!(topic, keys.access_secret());
        assert_ne!(topic, *keys.announce_key().mac_key);
        assert_ne!(keys.access_secret(), *keys.announce_key().mac_key);
        // the topic id is not a plain hash of the topic name or the secret
        assert_ne!(topic, *blake3::hash(b"t").as_bytes());
        assert_ne!(topic, *blake3::hash(b"0123456789abcdef").as_bytes());
    }

    #[test]
    fn topic_names() {
        assert_eq!(validate_topic_name("builders"), Ok(()));
        assert_eq!(validate_topic_name("team a/ci ünï"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicNameError::Empty));
        assert_eq!(
            validate_topic_name(&"x".repeat(65)),
            Err(TopicNameError::TooLong { len: 65 })
        );
        assert_eq!(
            validate_topic_name("a\nb"),
            Err(TopicNameError::Control { ch: '\n' })
        );
        assert_eq!(validate_topic_name(" a"), Err(TopicNameError::Whitespace));
        assert_eq!(validate_topic_name("a "), Err(TopicNameError::Whitespace));
        let s = secret("0123456789abcdef");
        assert!(MeshKeys::derive(&s, "").is_err());
        assert!(derive_topic_id(&s, "a\0").is_err());
    }
}
