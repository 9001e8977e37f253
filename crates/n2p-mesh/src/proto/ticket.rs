//! Invite tickets: `n2p mesh invite` prints one, `n2p mesh join --ticket` uses it to find a
//! first peer when the team file lists no fixed addresses. A ticket names the topic and
//! carries bootstrap addresses, never the team secret.

use std::{fmt, net::SocketAddr, str::FromStr};

use iroh::{EndpointAddr, EndpointId, TransportAddr};
use n2p_core::address::{AddressParseError, decode_text, encode_text};
use serde::{Deserialize, Serialize};

/// Every ticket starts with this.
pub const TICKET_PREFIX: &str = "n2pmesh";

/// Most bootstrap peers one ticket carries.
pub const MAX_TICKET_PEERS: usize = 8;

/// A topic name plus addresses of nodes already in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTicket {
    /// The topic to join.
    pub topic: String,
    /// Nodes to bootstrap from.
    pub peers: Vec<EndpointAddr>,
}

#[derive(Serialize, Deserialize)]
enum WireTicket {
    V1 {
        topic: String,
        peers: Vec<([u8; 32], Vec<SocketAddr>)>,
    },
}

impl fmt::Display for MeshTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wire = WireTicket::V1 {
            topic: self.topic.clone(),
            peers: self
                .peers
                .iter()
                .take(MAX_TICKET_PEERS)
                .map(|p| (*p.id.as_bytes(), p.ip_addrs().copied().collect()))
                .collect(),
        };
        f.write_str(&encode_text(TICKET_PREFIX, &wire))
    }
}

impl FromStr for MeshTicket {
    type Err = AddressParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let WireTicket::V1 { topic, peers } = decode_text(TICKET_PREFIX, text)?;
        if peers.len() > MAX_TICKET_PEERS {
            return Err(AddressParseError::Payload);
        }
        let peers = peers
            .into_iter()
            .map(|(id, addrs)| {
                let id = EndpointId::from_bytes(&id).map_err(|_| AddressParseError::EndpointId)?;
                Ok(EndpointAddr::from_parts(
                    id,
                    addrs.into_iter().map(TransportAddr::Ip),
                ))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { topic, peers })
    }
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let id = SecretKey::from_bytes(&[1; 32]).public();
        let ticket = MeshTicket {
            topic: "builds".into(),
            peers: vec![
                EndpointAddr::new(id).with_ip_addr("127.0.0.1:7001".parse().expect("addr")),
            ],
        };
        let text = ticket.to_string();
        assert!(text.starts_with(TICKET_PREFIX));
        assert_eq!(text.parse::<MeshTicket>().expect("parse"), ticket);
        assert!("n2pmeshzzzz".parse::<MeshTicket>().is_err());
        assert!("hello".parse::<MeshTicket>().is_err());
    }
}
