//! Server addresses: what `n2p server` prints and `n2p client` takes.
//!
//! An address names the server's endpoint id and carries its access secret, so knowing an
//! endpoint id alone never grants access. The *short* form holds only those two and relies on
//! iroh's address lookup (online); the *long* form adds the relay URL and direct socket
//! addresses, so it works with no lookup at all (offline, relays disabled).
//!
//! Text form: `n2p` followed by lower-case base32 (no padding) of a postcard-encoded,
//! versioned payload.
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
    V1 {
        id: [u8; 32],
        secret: [u8; 32],
        relay: Option<String>,
        direct: Vec<SocketAddr>,
    },
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
    let wire = WireAddress::V1 {
        id: *id.as_bytes(),
        secret: *secret.as_bytes(),
        relay,
        direct,
    };
    encode_text(ADDRESS_PREFIX, &wire)
}

/// Encodes `value` as `prefix` + lower-case base32 (no padding) of its postcard bytes: the
/// text form of addresses and tickets (copy-pasteable, one word).
pub fn encode_text<T: Serialize>(prefix: &str, value: &T) -> String {
    // Serialising plain data into a Vec cannot fail.
    let bytes = postcard::to_stdvec(value).unwrap_or_default();
    format!(
        "{prefix}{}",
        data_encoding::BASE32_NOPAD
            .encode(&bytes)
            .to_ascii_lowercase()
    )
}

/// Decodes text made by [`encode_text`] with the same `prefix`.
pub fn decode_text<T: DeserializeOwned>(prefix: &str, text: &str) -> Result<T, AddressParseError> {
    let text = text.trim();
    if text.len() > MAX_ADDRESS_LEN {
        return Err(AddressParseError::TooLong(text.len()));
    }
    let body = text
        .strip_prefix(prefix)
        .ok_or(AddressParseError::MissingPrefix)?;
    let bytes = data_encoding::BASE32_NOPAD
        .decode(body.to_ascii_uppercase().as_bytes())
        .map_err(|_| AddressParseError::Encoding)?;
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
        let wire: WireAddress = decode_text(ADDRESS_PREFIX, text)?;
        let WireAddress::V1 {
            id,
            secret,
            relay,
            direct,
        } = wire;
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
        // Truncating a valid address never panics and never parses to something else.
        let text = sample().to_long_string();
        for cut in 0..text.len() {
            if let Ok(a) = text[..cut].parse::<ServerAddress>() {
                assert_eq!(a.id(), sample().id());
            }
        }
    }
}
