//! A mesh node's [`Authority`]: the team file in force ([`SharedTeam`]). The handshake gate
//! ([`n2p_core::access::HandshakeGate`], closed teams admit members only), the daemon's
//! policy (push), the policies of the protocols the binary adds such as the store (pull),
//! and the peer table (who is admitted, which sockets exist) all read this one value, so a
//! reloaded team file (see [`super::MeshNode::reload`]) takes effect on the next connection
//! and the next stream without a restart.

use std::sync::{Arc, PoisonError, RwLock};

use iroh::EndpointId;
use n2p_core::access::{AccessPolicy, AccessSecret, Authority, Permission};

use crate::proto::team::TeamConfig;

/// The team config in force, swapped whole on reload, and the team's access secret; readers
/// take a cheap snapshot.
///
/// The node hands it to the factories of [`super::MeshSettings::protocols`], which build
/// their access policy from it with [`SharedTeam::policy`].
#[derive(Debug, Clone)]
pub struct SharedTeam(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    team: RwLock<Arc<TeamConfig>>,
    access: AccessSecret,
}

impl SharedTeam {
    pub(super) fn new(team: TeamConfig, access: AccessSecret) -> Self {
        Self(Arc::new(Inner {
            team: RwLock::new(Arc::new(team)),
            access,
        }))
    }

    /// The config in force now.
    pub(super) fn get(&self) -> Arc<TeamConfig> {
        // A writer only swaps an Arc and cannot panic half-way, so a poisoned lock still
        // holds a whole config.
        self.0
            .team
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `team` in force and returns it as now shared.
    pub(super) fn set(&self, team: TeamConfig) -> Arc<TeamConfig> {
        let team = Arc::new(team);
        *self.0.team.write().unwrap_or_else(PoisonError::into_inner) = team.clone();
        team
    }

    /// The access policy of a protocol that needs `permission`: whoever proves the team's
    /// access secret and (in a closed team) holds `permission` in the team config in force
    /// at each connection and stream.
    pub fn policy(&self, permission: Permission) -> AccessPolicy {
        AccessPolicy::new(Arc::new(self.clone()), permission)
    }
}

impl Authority for SharedTeam {
    fn admits(&self, peer: &EndpointId) -> bool {
        self.get().admits(peer)
    }

    fn permits(&self, peer: &EndpointId, permission: Permission) -> bool {
        self.get().permits(peer, permission)
    }

    fn access_secret(&self) -> AccessSecret {
        self.0.access.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use iroh::SecretKey;
    use n2p_core::access::{AccessSecret, Refusal};

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
    fn every_policy_and_the_handshake_follow_the_team_in_force() {
        let me = SecretKey::from_bytes(&[1; 32]).public();
        let bob = SecretKey::from_bytes(&[2; 32]).public();
        let carol = SecretKey::from_bytes(&[3; 32]).public();
        let secret = AccessSecret::from_bytes([9; 32]);
        let shared = SharedTeam::new(
            team(&[("me", me, true), ("bob", bob, true)]),
            secret.clone(),
        );
        let policy = shared.policy(Permission::Push);
        // Here `pull` is the opposite of `push`.
        let pull = shared.policy(Permission::Pull);
        let proof = |peer| secret.proof(peer, me);
        assert!(shared.admits(&bob) && !shared.admits(&carol));
        assert_eq!(policy.check_stream(bob, me, &proof(bob)), Ok(()));
        assert_eq!(
            policy.check_stream(carol, me, &proof(carol)),
            Err(Refusal::NotAllowed)
        );

        // bob removed, carol added with push = false, then with push.
        shared.set(team(&[("me", me, true), ("carol", carol, false)]));
        assert!(!shared.admits(&bob) && shared.admits(&carol));
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
