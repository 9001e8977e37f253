//! Who may do what: one [`Authority`] per node, read by the handshake ([`HandshakeGate`]) and
//! by each protocol's [`AccessPolicy`]. A peer must be admitted, hold the protocol's
//! [`Permission`], and prove on every stream that it knows the access secret (bound to both
//! endpoint ids, compared in constant time). Nothing reaches the daemon or the store before
//! [`AccessPolicy::check_stream`] says yes.

use std::{
    collections::BTreeSet,
    fmt,
    sync::{Arc, PoisonError, RwLock},
};

use iroh::{
    EndpointId,
    endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks},
};
use subtle::ConstantTimeEq;
use tracing::warn;

use crate::daemon::ACCESS_DENIED;

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

/// What a peer needs, on top of being admitted, to use one of this node's protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Use my nix-daemon: push paths into my store (the daemon ALPN).
    Push,
    /// Read my store: pull paths from it (the store ALPN).
    Pull,
}

/// The one source of who may do what on this node. Every access decision reads it: the
/// handshake ([`HandshakeGate`], for every ALPN), each protocol's per-connection and
/// per-stream check ([`AccessPolicy`]), and in a mesh which peer sockets exist. A mesh node's
/// authority is its team file in force; `n2p server`'s is its access secret and `--allow`
/// ([`ServerAuthority`]).
pub trait Authority: Send + Sync + fmt::Debug + 'static {
    /// Whether `peer` may connect at all; checked once, at the QUIC handshake.
    fn admits(&self, peer: &EndpointId) -> bool;

    /// Whether `peer` holds `permission`; implies [`Self::admits`].
    fn permits(&self, peer: &EndpointId, permission: Permission) -> bool;

    /// The secret whose proof opens each stream, as it is now.
    fn access_secret(&self) -> AccessSecret;
}

/// One protocol's view of an [`Authority`]: the [`Permission`] it needs. Cheap to clone;
/// nothing reaches the daemon or the store before [`Self::check_stream`] says yes.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    authority: Arc<dyn Authority>,
    permission: Permission,
}

impl AccessPolicy {
    /// The policy of a protocol that needs `permission` from `authority`.
    pub fn new(authority: Arc<dyn Authority>, permission: Permission) -> Self {
        Self {
            authority,
            permission,
        }
    }

    /// Checks the identity alone, once per connection, before any stream is read.
    pub fn check_peer(&self, peer: EndpointId) -> Result<(), Refusal> {
        if self.authority.permits(&peer, self.permission) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    /// Checks one stream's proof, and the identity again (the authority may have changed
    /// since the connection began); `me` is this node's id.
    pub fn check_stream(
        &self,
        peer: EndpointId,
        me: EndpointId,
        proof: &AccessProof,
    ) -> Result<(), Refusal> {
        self.check_peer(peer)?;
        if self.authority.access_secret().verify(proof, peer, me) {
            Ok(())
        } else {
            Err(Refusal::WrongSecret)
        }
    }
}

/// Refuses, at the QUIC handshake and for every ALPN, peers its [`Authority`] does not
/// admit: the connection is closed with [`ACCESS_DENIED`] before any stream is opened.
#[derive(Debug, Clone)]
pub struct HandshakeGate(pub Arc<dyn Authority>);

impl EndpointHooks for HandshakeGate {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        let peer = conn.remote_id();
        if self.0.admits(&peer) {
            AfterHandshakeOutcome::accept()
        } else {
            warn!(peer = %peer, "refused peer {peer}: {}", Refusal::NotAllowed);
            AfterHandshakeOutcome::Reject {
                error_code: ACCESS_DENIED,
                reason: Refusal::NotAllowed.to_string().into_bytes(),
            }
        }
    }
}

/// The authority of `n2p server`: whoever proves its access secret (the secret part of its
/// address), narrowed to an allow-list when one is set, may push and pull. The secret can
/// be replaced while running (SIGHUP after `n2p rotate-secret`); the allow-list stays.
#[derive(Debug)]
pub struct ServerAuthority {
    secret: RwLock<AccessSecret>,
    allow: Option<BTreeSet<EndpointId>>,
}

impl ServerAuthority {
    /// Anyone who knows `secret` is allowed.
    pub fn new(secret: AccessSecret) -> Self {
        Self {
            secret: RwLock::new(secret),
            allow: None,
        }
    }

    /// Additionally, only these identities are allowed.
    pub fn with_allow_list(mut self, allow: impl IntoIterator<Item = EndpointId>) -> Self {
        self.allow = Some(allow.into_iter().collect());
        self
    }

    /// Puts `secret` in force for every stream opened from now on.
    pub fn replace_secret(&self, secret: AccessSecret) {
        // A writer only swaps the value and cannot panic half-way.
        *self.secret.write().unwrap_or_else(PoisonError::into_inner) = secret;
    }
}

impl Authority for ServerAuthority {
    fn admits(&self, peer: &EndpointId) -> bool {
        self.allow.as_ref().is_none_or(|allow| allow.contains(peer))
    }

    fn permits(&self, peer: &EndpointId, _: Permission) -> bool {
        self.admits(peer)
    }

    fn access_secret(&self) -> AccessSecret {
        self.secret
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
    fn a_server_policy_checks_secret_and_allow_list_and_follows_a_new_secret() {
        let secret = AccessSecret::from_bytes([7; 32]);
        let (me, alice, mallory) = (id(1), id(2), id(3));
        let open = Arc::new(ServerAuthority::new(secret.clone()));
        assert!(open.admits(&mallory));
        for permission in [Permission::Push, Permission::Pull] {
            let policy = AccessPolicy::new(open.clone(), permission);
            assert_eq!(policy.check_peer(mallory), Ok(()));
            assert_eq!(
                policy.check_stream(alice, me, &secret.proof(alice, me)),
                Ok(())
            );
            assert_eq!(
                policy.check_stream(alice, me, &AccessProof([0; 32])),
                Err(Refusal::WrongSecret)
            );
        }

        let narrow = Arc::new(ServerAuthority::new(secret.clone()).with_allow_list([alice]));
        assert!(!narrow.admits(&mallory));
        let policy = AccessPolicy::new(narrow.clone(), Permission::Pull);
        assert_eq!(policy.check_peer(mallory), Err(Refusal::NotAllowed));
        assert_eq!(
            policy.check_stream(mallory, me, &secret.proof(mallory, me)),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            policy.check_stream(alice, me, &secret.proof(alice, me)),
            Ok(())
        );

        // A rotated secret: old proofs fail from the next stream on, the allow-list stays.
        let rotated = AccessSecret::from_bytes([8; 32]);
        narrow.replace_secret(rotated.clone());
        assert_eq!(
            policy.check_stream(alice, me, &secret.proof(alice, me)),
            Err(Refusal::WrongSecret)
        );
        assert_eq!(
            policy.check_stream(alice, me, &rotated.proof(alice, me)),
            Ok(())
        );
        assert!(!narrow.admits(&mallory));
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let secret = AccessSecret::from_bytes([0xab; 32]);
        assert!(!format!("{secret:?}").contains("ab"));
    }
}
