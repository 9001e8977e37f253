//! Store paths: a store directory plus a basename `<32-char nix32 hash part>-<name>`.
//!
//! ```
//! use n2p_nix::{StoreDir, StorePath};
//!
//! let path = StoreDir::default()
//!     .parse_path("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60")
//!     .unwrap();
//! assert_eq!(path.hash_part(), "00bgd045z0d4icpbc2yyz4gx48ak44la");
//! assert_eq!(path.name(), "net-tools-1.60");
//! assert!(StorePath::from_basename("00bgd045z0d4icpbc2yyz4gx48ak44la-.hidden").is_err());
//! ```

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
    ///
    /// The path must be exactly that: no `..`, no doubled or trailing `/`, nothing below
    /// the store path.
    pub fn parse_path(&self, full: &str) -> Result<StorePath, StorePathError> {
        let not_in_store = || StorePathError::NotInStore(full.to_owned(), self.0.clone());
        let basename = full
            .strip_prefix(self.0.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(not_in_store)?;
        if basename.contains('/') {
            return Err(not_in_store());
        }
        StorePath::from_basename(basename)
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
    /// Longest name Nix accepts.
    pub const MAX_NAME_LEN: usize = 211;
    /// Validates a basename `<hash>-<name>`: a 32-character nix32 hash part, `-`, and a
    /// name of 1 to 211 characters from `A-Za-z0-9+-._?=` that does not start with `.`.
    pub fn from_basename(basename: &str) -> Result<Self, StorePathError> {
        let hash_ok = basename.get(..Self::HASH_LEN).is_some_and(is_hash_part);
        if !hash_ok || basename.as_bytes().get(Self::HASH_LEN) != Some(&b'-') {
            return Err(StorePathError::BadHash(basename.to_owned()));
        }
        if !is_valid_name(&basename[Self::HASH_LEN + 1..]) {
            return Err(StorePathError::BadName(basename.to_owned()));
        }
        Ok(Self {
            basename: basename.to_owned(),
        })
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
    text.len() == StorePath::HASH_LEN && crate::nix32::is_nix32(text)
}

/// Whether `name` is a store path name Nix accepts (newer Nix also refuses a leading `.`,
/// so `.` and `..` can never be names).
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= StorePath::MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
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

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "00bgd045z0d4icpbc2yyz4gx48ak44la";

    #[test]
    fn valid_paths_parse() {
        let dir = StoreDir::default();
        let full = format!("/nix/store/{HASH}-a+b-1.0_x?y=z.tar.gz");
        let path = dir.parse_path(&full).expect("valid");
        assert_eq!(path.hash_part(), HASH);
        assert_eq!(path.name(), "a+b-1.0_x?y=z.tar.gz");
        assert_eq!(path.as_str(), &full[11..]);
        assert_eq!(path.to_string(), &full[11..]);
        assert_eq!(dir.display(&path), full);
        let longest = format!("{HASH}-{}", "x".repeat(211));
        assert!(StorePath::from_basename(&longest).is_ok());
        let other = StoreDir::new("/tmp/store");
        assert!(other.parse_path(&format!("/tmp/store/{HASH}-x")).is_ok());
    }

    #[test]
    fn paths_outside_the_store_are_refused() {
        let dir = StoreDir::default();
        for full in [
            format!("/nix/store{HASH}-x"),
            format!("/nix/store//{HASH}-x"),
            format!("/nix/storex/{HASH}-x"),
            format!("/nix/store/{HASH}-x/bin"),
            format!("/nix/store/{HASH}-x/"),
            format!("nix/store/{HASH}-x"),
            format!("/tmp/{HASH}-x"),
            "/nix/store".to_owned(),
            String::new(),
        ] {
            assert!(
                matches!(dir.parse_path(&full), Err(StorePathError::NotInStore(..))),
                "{full}"
            );
        }
    }

    #[test]
    fn bad_hash_parts_are_refused() {
        for basename in [
            String::new(),
            "x".into(),
            HASH.into(),
            format!("{}-x", &HASH[1..]),
            format!("{HASH}x-x"),
            format!("{}e-x", &HASH[1..]),
            format!("{}-x", HASH.to_uppercase()),
            format!("é{}-x", &HASH[2..]),
        ] {
            assert!(
                matches!(
                    StorePath::from_basename(&basename),
                    Err(StorePathError::BadHash(_))
                ),
                "{basename}"
            );
        }
        assert!(is_hash_part(HASH));
        assert!(!is_hash_part(&HASH[1..]));
    }

    #[test]
    fn bad_names_are_refused() {
        for name in [
            String::new(),
            ".".into(),
            "..".into(),
            ".hidden".into(),
            "a b".into(),
            "a/b".into(),
            "a:b".into(),
            "café".into(),
            "x".repeat(212),
        ] {
            let basename = format!("{HASH}-{name}");
            assert!(
                matches!(
                    StorePath::from_basename(&basename),
                    Err(StorePathError::BadName(_))
                ),
                "{basename}"
            );
        }
    }
}
