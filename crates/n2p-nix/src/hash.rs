//! The SHA-256 NAR hash, in every spelling Nix uses: `sha256:<nix32>` (narinfo,
//! fingerprints), base16 (the worker protocol), `sha256-<base64>` (SRI).

use std::{fmt, str::FromStr};

/// A NAR's SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NarHash(pub [u8; 32]);

/// Why a hash string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a sha256 hash: {0:?}")]
pub struct HashParseError(pub String);

impl NarHash {
    /// `sha256:<nix32>`, as narinfo files and fingerprints write it.
    pub fn to_nix32_string(&self) -> String {
        todo!()
    }
    /// The bare 52-character nix32 digest (for URLs).
    pub fn nix32_digest(&self) -> String {
        todo!()
    }
    /// Lowercase base16, as the worker protocol sends it (without the `sha256:` prefix).
    pub fn to_base16(&self) -> String {
        todo!()
    }
    /// Parses the worker protocol's base16 form, with or without `sha256:`.
    pub fn from_base16(text: &str) -> Result<Self, HashParseError> {
        todo!("{text}")
    }
}

impl FromStr for NarHash {
    type Err = HashParseError;
    /// Accepts `sha256:<nix32>`, `sha256:<base16>` and `sha256-<base64>` (SRI).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        todo!("{text}")
    }
}

impl fmt::Display for NarHash {
    /// `sha256:<nix32>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix32_string())
    }
}

impl fmt::Debug for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NarHash({self})")
    }
}
