//! Nix's base32: the alphabet `0123456789abcdfghijklmnpqrsvwxyz`, least significant
//! bits first, as in store path hash parts and `sha256:` hashes in narinfo files.

/// Why a nix32 string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Nix32Error {
    /// A character outside the nix32 alphabet.
    #[error("invalid nix32 character {0:?}")]
    BadChar(char),
    /// The length does not match the expected byte length.
    #[error("a nix32 string of {0} characters does not encode {1} bytes")]
    BadLength(usize, usize),
    /// Bits set beyond the encoded byte length.
    #[error("nix32 string has bits set beyond its length")]
    Overflow,
}

/// The length of the nix32 encoding of `bytes` bytes.
pub const fn encoded_len(bytes: usize) -> usize {
    (bytes * 8).div_ceil(5)
}

/// Encodes `bytes` as nix32.
pub fn encode(bytes: &[u8]) -> String {
    todo!("{bytes:?}")
}

/// Decodes a nix32 string of exactly `encoded_len(N)` characters into `N` bytes.
pub fn decode<const N: usize>(text: &str) -> Result<[u8; N], Nix32Error> {
    todo!("{text}")
}
