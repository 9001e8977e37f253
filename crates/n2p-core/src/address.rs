//! Server addresses: what `n2p server` prints and `n2p client` takes.
//!
//! An address names the server's endpoint id and carries its access secret, so knowing an
//! endpoint id alone never grants access. The *short* form holds only those two and relies on
//! iroh's address lookup (online); the *long* form adds the relay URL and direct socket
//! addresses, so it works with no lookup at all (offline, relays disabled).
//!
//! Text form: `n2p` followed by lower-case base32 (no padding) of a postcard-encoded,
//! versioned payload and a 4-byte checksum of it, so a mistyped, missing or extra character
//! is caught when the address is parsed ([`AddressParseError::Checksum`]), not when the
//! server refuses a wrong secret. Addresses from before the checksum (version 1) are still
//! read, without that check.
//!
//! ```
//! use n2p_core::{access::AccessSecret, address::ServerAddress, EndpointAddr, SecretKey};
//! let id = SecretKey::from_bytes(&[1; 32]).public();
//! let addr = ServerAddress::new(EndpointAddr::new(id), AccessSecret::from_bytes([2; 32]));
//! let text = addr.to_long_string();
//! assert_eq!(text.parse::<ServerAddress>().unwrap(), addr);
//! ```

use std::{fmt, net::SocketAddr, str::FromStr};

use iroh::{EndpointAddr, EndpointId, RelayUrl, TransportAddr};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::access::AccessSecret;

/// Every address starts with this.
pub const ADDRESS_PREFIX: &str = "n2p";

/// The longest address text accepted (guards the decoder against absurd input).
const MAX_ADDRESS_LEN: usize = 4096;

/// A server's endpoint address plus the access secret that its daemon requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    /// Where the server is.
    pub endpoint: EndpointAddr,
    /// What proves we may use its daemon.
    pub secret: AccessSecret,
}

/// Why an address could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddressParseError {
    /// The text does not start with `n2p`.
    #[error(
        "not an n2p address: it must start with '{ADDRESS_PREFIX}' (copy the whole 'long address' that `n2p server` printed)"
    )]
    MissingPrefix,
    /// The text is longer than any address.
    #[error("not an n2p address: too long ({0} characters)")]
    TooLong(usize),
    /// The text after the prefix is not base32.
    #[error("not an n2p address: invalid characters (was it cut off or mistyped?)")]
    Encoding,
    /// The payload does not decode.
    #[error("not an n2p address: damaged or from an incompatible n2p version")]
    Payload,
    /// The checksum does not match the payload: a character was mistyped, lost or added.
    #[error(
        "not an n2p address: its checksum does not match, so a character is mistyped, missing or extra (copy the whole address again)"
    )]
    Checksum,
    /// The endpoint id is not a valid ed25519 key.
    #[error("not an n2p address: invalid endpoint id")]
    EndpointId,
    /// The relay URL is invalid.
    #[error("not an n2p address: invalid relay URL")]
    RelayUrl,
}

/// The encoded payload; variants keep old addresses readable after format changes.
#[derive(Serialize, Deserialize)]
enum WireAddress {
    /// Without a checksum (addresses printed before it was added); still read.
    V1 {
        id: [u8; 32],
        secret: [u8; 32],
        relay: Option<String>,
        direct: Vec<SocketAddr>,
    },
    /// The same fields, followed by [`CHECKSUM_LEN`] bytes of [`checksum`]; what is written.
    V2 {
        id: [u8; 32],
        secret: [u8; 32],
        relay: Option<String>,
        direct: Vec<SocketAddr>,
    },
}

/// Bytes of checksum after a version 2 payload.
const CHECKSUM_LEN: usize = 4;

/// Key-derivation context of the address checksum.
const CHECKSUM_CONTEXT: &str = "n2p 2025 server address checksum v2";

/// The checksum of an encoded payload: the first [`CHECKSUM_LEN`] bytes of its BLAKE3 hash
/// in derive-key mode. It catches typos (a wrong address passes with odds of 2^-32); it is
/// no authentication, which the access secret inside gives.
fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = blake3::Hasher::new_derive_key(CHECKSUM_CONTEXT);
    hasher.update(payload);
    let mut sum = [0u8; CHECKSUM_LEN];
    hasher.finalize_xof().fill(&mut sum);
    sum
}

impl ServerAddress {
    /// Combines an endpoint address with the access secret.
    pub fn new(endpoint: EndpointAddr, secret: AccessSecret) -> Self {
        Self { endpoint, secret }
    }

    /// The server's endpoint id.
    pub fn id(&self) -> EndpointId {
        self.endpoint.id
    }

    /// The short form: endpoint id and secret only.
    pub fn to_short_string(&self) -> String {
        encode(self.endpoint.id, &self.secret, None, Vec::new())
    }

    /// The long form: also the relay URL and direct addresses.
    pub fn to_long_string(&self) -> String {
        let relay = self.endpoint.relay_urls().next().map(|u| u.to_string());
        let direct = self.endpoint.ip_addrs().copied().collect();
        encode(self.endpoint.id, &self.secret, relay, direct)
    }
}

fn encode(
    id: EndpointId,
    secret: &AccessSecret,
    relay: Option<String>,
    direct: Vec<SocketAddr>,
) -> String {
    let wire = WireAddress::V2 {
        id: *id.as_bytes(),
        secret: *secret.as_bytes(),
        relay,
        direct,
    };
    // Serialising plain data into a Vec cannot fail.
    let mut bytes = postcard::to_stdvec(&wire).unwrap_or_default();
    let sum = checksum(&bytes);
    bytes.extend_from_slice(&sum);
    format!("{ADDRESS_PREFIX}{}", base32_lower(&bytes))
}

/// Lower-case base32 without padding.
fn base32_lower(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD
        .encode(bytes)
        .to_ascii_lowercase()
}

/// The bytes of `prefix` + base32 text.
fn decode_base32(prefix: &str, text: &str) -> Result<Vec<u8>, AddressParseError> {
    let text = text.trim();
    if text.len() > MAX_ADDRESS_LEN {
        return Err(AddressParseError::TooLong(text.len()));
    }
    let body = text
        .strip_prefix(prefix)
        .ok_or(AddressParseError::MissingPrefix)?;
    data_encoding::BASE32_NOPAD
        .decode(body.to_ascii_uppercase().as_bytes())
        .map_err(|_| AddressParseError::Encoding)
}

/// Encodes `value` as `prefix` + lower-case base32 (no padding) of its postcard bytes: the
/// text form of addresses and tickets (copy-pasteable, one word).
pub fn encode_text<T: Serialize>(prefix: &str, value: &T) -> String {
    // Serialising plain data into a Vec cannot fail.
    let bytes = postcard::to_stdvec(value).unwrap_or_default();
    format!("{prefix}{}", base32_lower(&bytes))
}

/// Decodes text made by [`encode_text`] with the same `prefix`.
pub fn decode_text<T: DeserializeOwned>(prefix: &str, text: &str) -> Result<T, AddressParseError> {
    let bytes = decode_base32(prefix, text)?;
    let (value, rest) =
        postcard::take_from_bytes(&bytes).map_err(|_| AddressParseError::Payload)?;
    if !rest.is_empty() {
        return Err(AddressParseError::Payload);
    }
    Ok(value)
}

impl FromStr for ServerAddress {
    type Err = AddressParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = decode_base32(ADDRESS_PREFIX, text)?;
        let (wire, rest) = postcard::take_from_bytes::<WireAddress>(&bytes)
            .map_err(|_| AddressParseError::Payload)?;
        let (id, secret, relay, direct) = match wire {
            WireAddress::V1 {
                id,
                secret,
                relay,
                direct,
            } if rest.is_empty() => (id, secret, relay, direct),
            WireAddress::V1 { .. } => return Err(AddressParseError::Payload),
            WireAddress::V2 {
                id,
                secret,
                relay,
                direct,
            } => {
                let payload = &bytes[..bytes.len() - rest.len()];
                if rest != checksum(payload) {
                    return Err(AddressParseError::Checksum);
                }
                (id, secret, relay, direct)
            }
        };
        let id = EndpointId::from_bytes(&id).map_err(|_| AddressParseError::EndpointId)?;
        let mut endpoint = EndpointAddr::new(id);
        if let Some(relay) = relay {
            let url: RelayUrl = relay.parse().map_err(|_| AddressParseError::RelayUrl)?;
            endpoint = endpoint.with_relay_url(url);
        }
        endpoint = endpoint.with_addrs(direct.into_iter().map(TransportAddr::Ip));
        Ok(Self {
            endpoint,
            secret: AccessSecret::from_bytes(secret),
        })
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_long_string())
    }
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;

    fn sample() -> ServerAddress {
        let id = SecretKey::from_bytes(&[3; 32]).public();
        let endpoint = EndpointAddr::new(id)
            .with_relay_url("https://relay.example.org./".parse().expect("url"))
            .with_ip_addr("127.0.0.1:4433".parse().expect("addr"))
            .with_ip_addr("[::1]:4433".parse().expect("addr"));
        ServerAddress::new(endpoint, AccessSecret::from_bytes([9; 32]))
    }

    #[test]
    fn long_form_round_trips() {
        let addr = sample();
        let text = addr.to_long_string();
        assert!(text.starts_with("n2p"));
        assert!(text.chars().all(|c| c.is_ascii_alphanumeric()));
        let back: ServerAddress = text.parse().expect("parse");
        assert_eq!(back, addr);
    }

    #[test]
    fn short_form_keeps_id_and_secret_only() {
        let addr = sample();
        let back: ServerAddress = addr.to_short_string().parse().expect("parse");
        assert_eq!(back.id(), addr.id());
        assert_eq!(back.secret, addr.secret);
        assert!(back.endpoint.is_empty());
        assert!(addr.to_short_string().len() < addr.to_long_string().len());
    }

    /// Every single-character typo in an address (each position, each other base32
    /// character) is refused at parse time, most by the checksum (the others break the
    /// encoding or the payload structure).
    #[test]
    fn every_single_character_typo_is_caught() {
        let addr = sample();
        for text in [addr.to_long_string(), addr.to_short_string()] {
            let (mut caught_by_checksum, mut typos) = (0, 0);
            let alphabet = "abcdefghijklmnopqrstuvwxyz234567";
            for at in ADDRESS_PREFIX.len()..text.len() {
                for c in alphabet.chars().filter(|&c| !text[at..].starts_with(c)) {
                    let mut typo = text.clone();
                    typo.replace_range(at..at + 1, &c.to_string());
                    typos += 1;
                    match typo.parse::<ServerAddress>() {
                        Ok(parsed) => panic!("typo at {at} parsed as {parsed:?}"),
                        Err(AddressParseError::Checksum) => caught_by_checksum += 1,
                        Err(_) => {}
                    }
                }
            }
            assert!(
                caught_by_checksum * 4 > typos * 3,
                "{caught_by_checksum} of {typos}"
            );
        }
        assert_eq!(
            AddressParseError::Checksum.to_string(),
            "not an n2p address: its checksum does not match, so a character is mistyped, \
             missing or extra (copy the whole address again)"
        );
    }

    /// Addresses printed before the checksum (wire version 1) are still read.
    #[test]
    fn version_1_addresses_without_a_checksum_still_parse() {
        let addr = sample();
        let v1 = WireAddress::V1 {
            id: *addr.id().as_bytes(),
            secret: *addr.secret.as_bytes(),
            relay: Some("https://relay.example.org./".to_owned()),
            direct: addr.endpoint.ip_addrs().copied().collect(),
        };
        let text = encode_text(ADDRESS_PREFIX, &v1);
        assert_eq!(text.parse::<ServerAddress>().expect("a v1 address"), addr);
        // A v1 payload with bytes after it is damaged, not a v2 address.
        let mut bytes = postcard::to_stdvec(&v1).expect("encode");
        bytes.extend_from_slice(&checksum(&bytes));
        let text = format!("{ADDRESS_PREFIX}{}", base32_lower(&bytes));
        assert!(matches!(
            text.parse::<ServerAddress>(),
            Err(AddressParseError::Payload)
        ));
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert!(matches!(
            "hello".parse::<ServerAddress>(),
            Err(AddressParseError::MissingPrefix)
        ));
        assert!(matches!(
            "n2p!!!!".parse::<ServerAddress>(),
            Err(AddressParseError::Encoding)
        ));
        assert!(matches!(
            "n2paaaa".parse::<ServerAddress>(),
            Err(AddressParseError::Payload)
        ));
        let long = format!("n2p{}", "a".repeat(5000));
        assert!(matches!(
            long.parse::<ServerAddress>(),
            Err(AddressParseError::TooLong(_))
        ));
        // Truncating a valid address never panics and never parses.
        let text = sample().to_long_string();
        for cut in 0..text.len() {
            assert!(
                text[..cut].parse::<ServerAddress>().is_err(),
                "cut at {cut}"
            );
        }
    }
}
