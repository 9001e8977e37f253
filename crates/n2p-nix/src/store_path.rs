//! Store paths: a store directory plus a basename `<32-char nix32 hash part>-<name>`.

use std::fmt;

/// Why a store path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorePathError {
    /// The path is not inside the store directory.
    #[error("{0:?} is not in the store directory {1}")]
    NotInStore(String, String),
    /// The hash part is not 32 nix32 characters.
    #[error("bad hash part in store path {0:?}")]
    BadHash(String),
    /// The name is empty, too long or has a character Nix does not allow.
    #[error("bad name in store path {0:?}")]
    BadName(String),
}

/// The store directory, `/nix/store` unless configured otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl Default for StoreDir {
    fn default() -> Self {
        Self("/nix/store".into())
    }
}

impl StoreDir {
    /// A store directory (absolute, no trailing slash).
    pub fn new(dir: impl Into<String>) -> Self {
        Self(dir.into())
    }
    /// The directory as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Parses a full path `<store dir>/<basename>`.
    pub fn parse_path(&self, full: &str) -> Result<StorePath, StorePathError> {
        todo!("{full}")
    }
    /// The full path of `path` in this store.
    pub fn display(&self, path: &StorePath) -> String {
        format!("{}/{}", self.0, path)
    }
}

/// A store path's basename, validated.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    basename: String,
}

impl StorePath {
    /// Length of the hash part.
    pub const HASH_LEN: usize = 32;
    /// Validates a basename `<hash>-<name>`.
    pub fn from_basename(basename: &str) -> Result<Self, StorePathError> {
        todo!("{basename}")
    }
    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        &self.basename[..Self::HASH_LEN]
    }
    /// The name after the hash part.
    pub fn name(&self) -> &str {
        &self.basename[Self::HASH_LEN + 1..]
    }
    /// The basename.
    pub fn as_str(&self) -> &str {
        &self.basename
    }
}

/// Whether `text` is a valid 32-character nix32 hash part.
pub fn is_hash_part(text: &str) -> bool {
    todo!("{text}")
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.basename)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.basename)
    }
}
