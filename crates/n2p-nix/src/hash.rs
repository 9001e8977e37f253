//! The SHA-256 NAR hash, in every spelling Nix uses: `sha256:<nix32>` (narinfo,
//! fingerprints), base16 (the worker protocol), `sha256-<base64>` (SRI).
//!
//! ```
//! use n2p_nix::NarHash;
//!
//! let hash = NarHash::of(b"");
//! let parsed: NarHash = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
//!     .parse()
//!     .unwrap();
//! assert_eq!(hash, parsed);
//! assert_eq!(NarHash::from_base16(&hash.to_base16()), Ok(hash));
//! ```

use std::{fmt, str::FromStr};

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use sha2::{Digest, Sha256};

use crate::nix32;

/// A NAR's SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NarHash(pub [u8; 32]);

/// Why a hash string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a sha256 hash: {0:?}")]
pub struct HashParseError(pub String);

/// Length of the base16 spelling.
const BASE16_LEN: usize = 64;
/// Length of the padded base64 spelling.
const BASE64_LEN: usize = 44;
/// Length of the nix32 spelling.
const NIX32_LEN: usize = nix32::encoded_len(32);

impl NarHash {
    /// The SHA-256 of `bytes` (for whole NARs held in memory: tests and small files; a
    /// stream is hashed with [`sha2::Sha256`] and wrapped with `NarHash(digest.into())`).
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
    /// `sha256:<nix32>`, as narinfo files and fingerprints write it.
    pub fn to_nix32_string(&self) -> String {
        format!("sha256:{}", self.nix32_digest())
    }
    /// The bare 52-character nix32 digest (for URLs).
    pub fn nix32_digest(&self) -> String {
        nix32::encode(&self.0)
    }
    /// Lowercase base16, as the worker protocol sends it (without the `sha256:` prefix).
    pub fn to_base16(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }
    /// `sha256-<base64>`, the SRI form `nix path-info --json` prints.
    pub fn to_sri(&self) -> String {
        format!("sha256-{}", BASE64.encode(&self.0))
    }
    /// Parses the worker protocol's base16 form, with or without `sha256:`.
    pub fn from_base16(text: &str) -> Result<Self, HashParseError> {
        let digest = text.strip_prefix("sha256:").unwrap_or(text);
        if digest.len() != BASE16_LEN {
            return Err(HashParseError(text.to_owned()));
        }
        Self::decode_base16(digest).ok_or_else(|| HashParseError(text.to_owned()))
    }

    /// The canonical padded base64 of 32 bytes only: 44 characters, one `=`.
    fn decode_base64(digest: &str) -> Option<Self> {
        let bytes = BASE64.decode(digest.as_bytes()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    fn decode_base16(digest: &str) -> Option<Self> {
        let bytes = HEXLOWER_PERMISSIVE.decode(digest.as_bytes()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl FromStr for NarHash {
    type Err = HashParseError;
    /// Accepts `sha256:<nix32>`, `sha256:<base16>`, `sha256:<base64>` and
    /// `sha256-<base64>` (SRI), as Nix's `parseAnyPrefixed` does for SHA-256.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || HashParseError(text.to_owned());
        if let Some(digest) = text.strip_prefix("sha256:") {
            match digest.len() {
                NIX32_LEN => nix32::decode(digest).map(Self).map_err(|_| bad()),
                BASE16_LEN => Self::decode_base16(digest).ok_or_else(bad),
                BASE64_LEN => Self::decode_base64(digest).ok_or_else(bad),
                _ => Err(bad()),
            }
        } else if let Some(digest) = text.strip_prefix("sha256-") {
            Self::decode_base64(digest).ok_or_else(bad)
        } else {
            Err(bad())
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256("") in the four spellings, as Nix 2.8's `nix hash to-*` prints them.
    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_NIX32: &str = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_SRI: &str = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    #[test]
    fn every_spelling_of_one_hash() {
        let hash = NarHash::of(b"");
        assert_eq!(hash.to_base16(), EMPTY_HEX);
        assert_eq!(hash.to_nix32_string(), EMPTY_NIX32);
        assert_eq!(hash.to_string(), EMPTY_NIX32);
        assert_eq!(hash.to_sri(), EMPTY_SRI);
        assert_eq!(format!("sha256:{}", hash.nix32_digest()), EMPTY_NIX32);
        for text in [
            EMPTY_NIX32.to_owned(),
            format!("sha256:{EMPTY_HEX}"),
            format!("sha256:{}", EMPTY_HEX.to_uppercase()),
            EMPTY_SRI.to_owned(),
            EMPTY_SRI.replace('-', ":"),
        ] {
            assert_eq!(text.parse::<NarHash>(), Ok(hash), "{text}");
        }
        assert_eq!(NarHash::from_base16(EMPTY_HEX), Ok(hash));
        assert_eq!(
            NarHash::from_base16(&format!("sha256:{EMPTY_HEX}")),
            Ok(hash)
        );
    }

    #[test]
    fn malformed_hashes_are_refused() {
        let bad = [
            "",
            "sha256:",
            EMPTY_HEX,         // no algorithm
            &EMPTY_NIX32[7..], // bare nix32
            "sha512:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7", // short
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e", // bad char
            "sha256:zmdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", // overflow
            "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU", // unpadded
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuA==", // 31 bytes
            "sha256-!7DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            " sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ];
        for text in bad {
            assert_eq!(
                text.parse::<NarHash>(),
                Err(HashParseError(text.to_owned())),
                "{text:?}"
            );
        }
        for text in ["", "sha256:", &EMPTY_HEX[1..], &EMPTY_NIX32[7..], "sha1:00"] {
            assert!(NarHash::from_base16(text).is_err(), "{text:?}");
        }
    }
}
