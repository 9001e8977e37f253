//! The access check in front of a nix-daemon: a peer must prove it knows the access secret
//! (bound to both endpoint ids, compared in constant time) and, where an allow-list is set,
//! be on it. Nothing reaches the daemon before [`AccessPolicy::check_stream`] says yes.

use std::{collections::BTreeSet, fmt};

use iroh::EndpointId;
use subtle::ConstantTimeEq;

/// Key-derivation context for proofs; changing it invalidates every proof.
const PROOF_CONTEXT: &str = "n2p 2025 daemon access proof v1";

/// A 32-byte secret that grants access to a daemon when presented as an [`AccessProof`].
#[derive(Clone)]
pub struct AccessSecret([u8; 32]);

impl AccessSecret {
    /// Wraps raw secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw secret bytes (for encoding into an address).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The proof a client with identity `client` presents to the server `server`.
    ///
    /// The proof is bound to both ids, so an observer of one proof cannot use it from
    /// another identity or towards another server.
    pub fn proof(&self, client: EndpointId, server: EndpointId) -> AccessProof {
        let key = blake3::derive_key(PROOF_CONTEXT, &self.0);
        let mut hasher = blake3::Hasher::new_keyed(&key);
        hasher.update(client.as_bytes());
        hasher.update(server.as_bytes());
        AccessProof(*hasher.finalize().as_bytes())
    }

    /// Whether `proof` is the right one for `client` towards `server` (constant time).
    pub fn verify(&self, proof: &AccessProof, client: EndpointId, server: EndpointId) -> bool {
        let expected = self.proof(client, server);
        expected.0.ct_eq(&proof.0).into()
    }
}

impl PartialEq for AccessSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for AccessSecret {}

impl fmt::Debug for AccessSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessSecret(..)")
    }
}

/// What a client sends at the start of every daemon stream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AccessProof(pub [u8; 32]);

impl AccessProof {
    /// Size on the wire.
    pub const LEN: usize = 32;
}

impl fmt::Debug for AccessProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessProof(..)")
    }
}

/// Why a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer's identity is not allowed.
    #[error("identity not allowed")]
    NotAllowed,
    /// The peer did not prove knowledge of the access secret.
    #[error("wrong access secret")]
    WrongSecret,
}

/// Decides which peers may reach the local daemon.
pub trait AccessPolicy: Send + Sync + fmt::Debug + 'static {
    /// Checks the identity alone, once per connection, before any stream is read.
    fn check_peer(&self, peer: EndpointId) -> Result<(), Refusal>;

    /// Checks one stream's proof; `me` is this node's id.
    fn check_stream(
        &self,
        peer: EndpointId,
        me: EndpointId,
        proof: &AccessProof,
    ) -> Result<(), Refusal>;
}

/// The policy of `n2p server` (and of a mesh node): a shared secret, optionally narrowed to
/// a set of allowed identities.
#[derive(Debug, Clone)]
pub struct SecretPolicy {
    secret: AccessSecret,
    allow: Option<BTreeSet<EndpointId>>,
}

impl SecretPolicy {
    /// Anyone who knows `secret` is allowed.
    pub fn new(secret: AccessSecret) -> Self {
        Self {
            secret,
            allow: None,
        }
    }

    /// The same policy with another secret (the allow-list stays).
    pub fn with_secret(mut self, secret: AccessSecret) -> Self {
        self.secret = secret;
        self
    }

    /// Additionally, only these identities are allowed.
    pub fn with_allow_list(mut self, allow: impl IntoIterator<Item = EndpointId>) -> Self {
        self.allow = Some(allow.into_iter().collect());
        self
    }
}

impl AccessPolicy for SecretPolicy {
    fn check_peer(&self, peer: EndpointId) -> Result<(), Refusal> {
        match &self.allow {
            Some(allow) if !allow.contains(&peer) => Err(Refusal::NotAllowed),
            _ => Ok(()),
        }
    }

    fn check_stream(
        &self,
        peer: EndpointId,
        me: EndpointId,
        proof: &AccessProof,
    ) -> Result<(), Refusal> {
        self.check_peer(peer)?;
        if self.secret.verify(proof, peer, me) {
            Ok(())
        } else {
            Err(Refusal::WrongSecret)
        }
    }
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;

    fn id(seed: u8) -> EndpointId {
        SecretKey::from_bytes(&[seed; 32]).public()
    }

    #[test]
    fn proof_is_bound_to_secret_and_both_ids() {
        let secret = AccessSecret::from_bytes([7; 32]);
        let other = AccessSecret::from_bytes([8; 32]);
        let (c, s, x) = (id(1), id(2), id(3));
        let proof = secret.proof(c, s);
        assert!(secret.verify(&proof, c, s));
        assert!(!other.verify(&proof, c, s));
        assert!(!secret.verify(&proof, x, s));
        assert!(!secret.verify(&proof, c, x));
        assert!(!secret.verify(&proof, s, c));
    }

    #[test]
    fn policy_checks_secret_and_allow_list() {
        let secret = AccessSecret::from_bytes([7; 32]);
        let (me, alice, mallory) = (id(1), id(2), id(3));
        let open = SecretPolicy::new(secret.clone());
        assert_eq!(open.check_peer(mallory), Ok(()));
        assert_eq!(
            open.check_stream(alice, me, &secret.proof(alice, me)),
            Ok(())
        );
        assert_eq!(
            open.check_stream(alice, me, &AccessProof([0; 32])),
            Err(Refusal::WrongSecret)
        );

        let narrow = open.with_allow_list([alice]);
        assert_eq!(narrow.check_peer(mallory), Err(Refusal::NotAllowed));
        assert_eq!(
            narrow.check_stream(mallory, me, &secret.proof(mallory, me)),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            narrow.check_stream(alice, me, &secret.proof(alice, me)),
            Ok(())
        );
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let secret = AccessSecret::from_bytes([0xab; 32]);
        assert!(!format!("{secret:?}").contains("ab"));
    }
}
