//! `.narinfo` files: rendering (always `Compression: none`, `URL` relative) and parsing
//! with the rules stock Nix applies.

use crate::{NarHash, PublicKey, SecretKey, Signature, StoreDir, StorePath};

/// Why a narinfo was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NarInfoError {
    /// A line is not `Key: value`.
    #[error("narinfo line {0}: not `Key: value`")]
    BadLine(usize),
    /// A required key is missing.
    #[error("narinfo has no {0}")]
    Missing(&'static str),
    /// A value is malformed.
    #[error("narinfo {key}: {reason}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// One path's metadata as a binary cache publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// The path.
    pub store_path: StorePath,
    /// Where the NAR is, relative to the cache root (e.g. `nar/<...>.nar`).
    pub url: String,
    /// The NAR's hash.
    pub nar_hash: NarHash,
    /// The NAR's size in bytes (> 0).
    pub nar_size: u64,
    /// References, as basenames.
    pub references: Vec<StorePath>,
    /// The deriver's basename, if known.
    pub deriver: Option<StorePath>,
    /// Signatures.
    pub sigs: Vec<Signature>,
    /// Content address (`fixed:...` / `text:...`), if any.
    pub ca: Option<String>,
}

impl NarInfo {
    /// The fingerprint Nix signs for this path.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        crate::signature::fingerprint(store_dir, &self.store_path, &self.nar_hash, self.nar_size, &self.references)
    }
    /// Adds `key`'s signature (replacing an older one by the same key name).
    pub fn sign(&mut self, store_dir: &StoreDir, key: &SecretKey) {
        todo!("{store_dir:?}{key:?}")
    }
    /// Whether some signature verifies under one of `keys`.
    pub fn signed_by_any(&self, store_dir: &StoreDir, keys: &[PublicKey]) -> bool {
        todo!("{store_dir:?}{keys:?}")
    }
    /// The narinfo text, `StoreDir`-qualified paths where Nix expects them, final newline.
    pub fn render(&self, store_dir: &StoreDir) -> String {
        todo!("{store_dir:?}")
    }
    /// Parses narinfo text as stock Nix would accept it.
    pub fn parse(text: &str, store_dir: &StoreDir) -> Result<Self, NarInfoError> {
        todo!("{text}{store_dir:?}")
    }
}
