//! Who gets in, read from the team config in force: the QUIC handshake gate for closed
//! teams ([`TeamGate`]) and the access policies of the daemon (push) and of the protocols the
//! binary adds, such as the store (pull) ([`TeamPolicy`]). All read one [`SharedTeam`], so a
//! reloaded team file (see [`super::MeshNode::reload`]) takes effect on the next connection
//! and the next stream without a restart.

use std::sync::{Arc, RwLock};

use iroh::{
    EndpointId,
    endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks},
};
use n2p_core::{
    access::{AccessPolicy, AccessProof, AccessSecret, Refusal, SecretPolicy},
    daemon::ACCESS_DENIED,
};
use tracing::warn;

use crate::proto::team::TeamConfig;

/// The team config in force, swapped whole on reload; readers take a cheap snapshot.
///
/// The node hands it to the factories of [`super::MeshSettings::protocols`], which build
/// their access policy from it with [`SharedTeam::policy`].
#[derive(Debug, Clone)]
pub struct SharedTeam(Arc<RwLock<Arc<TeamConfig>>>);

/// What a closed team's member needs on top of membership to use a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `push = true`: use my nix-daemon (the daemon ALPN).
    Push,
    /// `pull = true`: read my store (the store ALPN).
    Pull,
}

impl SharedTeam {
    pub(super) fn new(team: TeamConfig) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(team))))
    }

    /// The config in force now.
    pub(super) fn get(&self) -> Arc<TeamConfig> {
        // A writer only swaps an Arc and cannot panic half-way, so a poisoned lock still
        // holds a whole config.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `team` in force.
    pub(super) fn set(&self, team: TeamConfig) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(team);
    }

    /// An access policy that admits, at each connection and stream, whoever proves `secret`
    /// and (in a closed team) holds `permission` in the team config in force then.
    pub fn policy(&self, permission: Permission, secret: AccessSecret) -> Arc<dyn AccessPolicy> {
        Arc::new(TeamPolicy {
            secret: SecretPolicy::new(secret),
            team: self.clone(),
            permission,
        })
    }
}

/// Rejects, for every ALPN, peers that are not members when the team is closed.
#[derive(Debug)]
pub(super) struct TeamGate {
    pub(super) team: SharedTeam,
}

impl EndpointHooks for TeamGate {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        let peer = conn.remote_id();
        if self.team.get().admits(&peer) {
            AfterHandshakeOutcome::accept()
        } else {
            warn!(peer = %peer, "refused peer {peer}: not a member of this team");
            AfterHandshakeOutcome::Reject {
                error_code: ACCESS_DENIED,
                reason: b"not a team member".to_vec(),
            }
        }
    }
}

/// A protocol's policy in a mesh: the proof of the team's access secret, and in a closed
/// team membership with the protocol's [`Permission`], checked against the team config in
/// force at each connection and each stream.
#[derive(Debug)]
struct TeamPolicy {
    secret: SecretPolicy,
    team: SharedTeam,
    permission: Permission,
}

impl AccessPolicy for TeamPolicy {
    fn check_peer(&self, peer: EndpointId) -> Result<(), Refusal> {
        let team = self.team.get();
        let allowed = match self.permission {
            Permission::Push => team.may_push(&peer),
            Permission::Pull => team.may_pull(&peer),
        };
        if team.is_open() || allowed {
            self.secret.check_peer(peer)
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    fn check_stream(
        &self,
        peer: EndpointId,
        me: EndpointId,
        proof: &AccessProof,
    ) -> Result<(), Refusal> {
        self.check_peer(peer)?;
        self.secret.check_stream(peer, me, proof)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use iroh::SecretKey;
    use n2p_core::access::AccessSecret;

    use super::*;

    fn team(members: &[(&str, EndpointId, bool)]) -> TeamConfig {
        let mut text = String::from("[mesh]\nsecret_env = \"S\"\n");
        for (name, id, push) in members {
            text.push_str(&format!(
                "[[member]]\nname = \"{name}\"\nid = \"{id}\"\npush = {push}\npull = {}\n",
                !push
            ));
        }
        TeamConfig::parse(&text, Path::new("team.toml")).expect("team")
    }

    #[test]
    fn the_policy_follows_the_team_in_force() {
        let me = SecretKey::from_bytes(&[1; 32]).public();
        let bob = SecretKey::from_bytes(&[2; 32]).public();
        let carol = SecretKey::from_bytes(&[3; 32]).public();
        let secret = AccessSecret::from_bytes([9; 32]);
        let shared = SharedTeam::new(team(&[("me", me, true), ("bob", bob, true)]));
        let policy = shared.policy(Permission::Push, secret.clone());
        // Here `pull` is the opposite of `push`.
        let pull = shared.policy(Permission::Pull, secret.clone());
        let proof = |peer| secret.proof(peer, me);
        assert_eq!(policy.check_stream(bob, me, &proof(bob)), Ok(()));
        assert_eq!(
            policy.check_stream(carol, me, &proof(carol)),
            Err(Refusal::NotAllowed)
        );

        // bob removed, carol added with push = false, then with push.
        shared.set(team(&[("me", me, true), ("carol", carol, false)]));
        assert_eq!(
            policy.check_stream(bob, me, &proof(bob)),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            policy.check_stream(carol, me, &proof(carol)),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(pull.check_stream(carol, me, &proof(carol)), Ok(()));
        shared.set(team(&[("me", me, true), ("carol", carol, true)]));
        assert_eq!(policy.check_stream(carol, me, &proof(carol)), Ok(()));
        assert_eq!(
            pull.check_stream(carol, me, &proof(carol)),
            Err(Refusal::NotAllowed)
        );
        // The proof is still checked.
        assert_eq!(
            policy.check_stream(carol, me, &proof(bob)),
            Err(Refusal::WrongSecret)
        );
    }
}
