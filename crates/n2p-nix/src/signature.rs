//! Nix's ed25519 signatures: secret keys `name:base64(seed ‖ public)`, public keys
//! `name:base64(32 bytes)`, signatures `name:base64(64 bytes)` over the fingerprint
//! `1;<store path>;<sha256:nix32 NarHash>;<NarSize>;<sorted full reference paths, comma-joined>`.

use std::fmt;

use crate::{NarHash, StoreDir, StorePath};

/// Why a key or signature was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No `name:` prefix, or an empty name.
    #[error("a Nix key or signature is `name:base64`; got no name")]
    NoName,
    /// The part after the name is not base64 of the right length.
    #[error("bad base64 in Nix key or signature {0:?}")]
    BadData(String),
}

/// A Nix signing (secret) key.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl SecretKey {
    /// A fresh key named `name` from 32 random bytes the caller supplies.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Self {
        Self { name: name.to_owned(), key: ed25519_dalek::SigningKey::from_bytes(&seed) }
    }
    /// Parses `name:base64(64 bytes)`, the format of `nix key generate-secret`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        todo!("{}", text.len())
    }
    /// `name:base64(64 bytes)`, the format Nix reads from `secret-key-files`.
    pub fn to_nix_string(&self) -> String {
        todo!()
    }
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        todo!()
    }
    /// Signs a fingerprint.
    pub fn sign(&self, fingerprint: &str) -> Signature {
        todo!("{fingerprint}")
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}:..)", self.name)
    }
}

/// A Nix public key, as in `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    /// Parses `name:base64(32 bytes)`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        todo!("{text}")
    }
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether `sig` is this key's signature of `fingerprint` (names must match too).
    pub fn verify(&self, fingerprint: &str, sig: &Signature) -> bool {
        todo!("{fingerprint}{sig}{:?}", self.key)
    }
}

impl fmt::Display for PublicKey {
    /// `name:base64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let _ = (f, &self.key);
        todo!()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A signature as it appears in a narinfo `Sig:` line.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    name: String,
    bytes: [u8; 64],
}

impl Signature {
    /// Parses `name:base64(64 bytes)`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        todo!("{text}")
    }
    /// The signing key's name.
    pub fn key_name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Signature {
    /// `name:base64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let _ = (f, self.bytes);
        todo!()
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

/// The text Nix signs for a path: `1;<path>;<sha256:nix32>;<size>;<refs>` with full paths,
/// references sorted and comma-joined.
pub fn fingerprint<'a>(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &NarHash,
    nar_size: u64,
    references: impl IntoIterator<Item = &'a StorePath>,
) -> String {
    todo!("{store_dir:?}{path}{nar_hash}{nar_size}{}", references.into_iter().count())
}
