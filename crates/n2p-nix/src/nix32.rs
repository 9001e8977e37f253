//! Nix's base32: the alphabet `0123456789abcdfghijklmnpqrsvwxyz`, least significant
//! bits first, as in store path hash parts and `sha256:` hashes in narinfo files.
//!
//! ```
//! use n2p_nix::nix32;
//!
//! let text = nix32::encode(&[0xff; 20]);
//! assert_eq!(text.len(), 32);
//! assert_eq!(nix32::decode::<20>(&text), Ok([0xff; 20]));
//! ```

/// The 32 characters, in digit order (no `e`, `o`, `t`, `u`).
const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

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

/// Marks a byte outside the alphabet in [`DIGITS`].
const NOT_A_DIGIT: u8 = 0xff;

/// Each byte's digit value, or [`NOT_A_DIGIT`].
const DIGITS: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut d = 0;
    while d < ALPHABET.len() {
        table[ALPHABET[d] as usize] = d as u8;
        d += 1;
    }
    table
};

/// The value of one nix32 character, if it is one.
fn digit(c: u8) -> Option<u8> {
    Some(DIGITS[usize::from(c)]).filter(|&d| d != NOT_A_DIGIT)
}

/// Whether every character of `text` is in the nix32 alphabet.
pub fn is_nix32(text: &str) -> bool {
    text.bytes().all(|c| digit(c).is_some())
}

/// Encodes `bytes` as nix32.
///
/// The first character holds the most significant 5-bit group of the bytes read as one
/// little-endian number, as Nix's `printHash32` writes it.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = bytes[i] >> j;
        let high = match bytes.get(i + 1) {
            // j > 3 only: the group spans into the next byte.
            Some(&next) if j > 3 => next << (8 - j),
            _ => 0,
        };
        out.push(ALPHABET[usize::from((low | high) & 0x1f)] as char);
    }
    out
}

/// Decodes a nix32 string of exactly `encoded_len(N)` characters into `N` bytes.
///
/// Refuses characters outside the alphabet, any other length, and strings whose first
/// character sets bits beyond `N` bytes (Nix refuses those too, so each value has one
/// spelling).
pub fn decode<const N: usize>(text: &str) -> Result<[u8; N], Nix32Error> {
    let len = encoded_len(N);
    if text.len() != len {
        return Err(Nix32Error::BadLength(text.chars().count(), N));
    }
    let mut out = [0u8; N];
    for (n, c) in text.bytes().rev().enumerate() {
        let Some(d) = digit(c) else {
            // Report the whole character, even when it is not ASCII.
            let bad = text[..text.len() - n]
                .chars()
                .next_back()
                .unwrap_or(char::REPLACEMENT_CHARACTER);
            return Err(Nix32Error::BadChar(bad));
        };
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= d << j;
        let carry = u16::from(d) >> (8 - j);
        if carry != 0 {
            match out.get_mut(i + 1) {
                Some(next) => *next |= carry as u8,
                None => return Err(Nix32Error::Overflow),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_of_store_hashes_and_sha256() {
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(0), 0);
    }

    #[test]
    fn known_sha256_vector() {
        // sha256("") in nix32, as `nix hash to-base32` prints it.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let text = encode(&bytes);
        assert_eq!(text, "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(decode::<32>(&text).expect("decodes").as_slice(), bytes);
    }

    #[test]
    fn round_trips_every_byte_position() {
        let mut bytes = [0u8; 32];
        for i in 0..32 {
            for value in [1u8, 0x80, 0xff, 0x5a] {
                bytes[i] = value;
                assert_eq!(decode::<32>(&encode(&bytes)), Ok(bytes));
                let short: [u8; 20] = bytes[..20].try_into().expect("20 bytes");
                assert_eq!(decode::<20>(&encode(&short)), Ok(short));
            }
        }
    }

    #[test]
    fn bad_characters_are_refused() {
        for bad in ['e', 'o', 't', 'u', 'A', '-', ' ', 'é'] {
            let mut text = "0".repeat(31);
            text.push(bad);
            let text: String = text.chars().rev().collect();
            // Non-ASCII changes the byte length; pad to the right length when possible.
            if text.len() == 32 {
                assert_eq!(
                    decode::<20>(&text),
                    Err(Nix32Error::BadChar(bad)),
                    "{bad:?}"
                );
            } else {
                assert!(decode::<20>(&text).is_err(), "{bad:?}");
            }
        }
        assert!(!is_nix32("0e"));
        assert!(is_nix32("0123456789abcdfghijklmnpqrsvwxyz"));
    }

    #[test]
    fn random_text_never_panics() {
        let mut rng = n2p_testkit::rand::XorShift64::new(11);
        let pool: Vec<char> = "0123456789abcdefghijklmnopqrstuvwxyzé-".chars().collect();
        for _ in 0..20_000 {
            let len = rng.below(60) as usize;
            let text: String = (0..len)
                .map(|_| pool[rng.below(pool.len() as u64) as usize])
                .collect();
            if let Ok(bytes) = decode::<32>(&text) {
                assert_eq!(encode(&bytes), text);
            }
            if let Ok(bytes) = decode::<20>(&text) {
                assert_eq!(encode(&bytes), text);
            }
        }
    }

    #[test]
    fn wrong_lengths_are_refused() {
        assert_eq!(
            decode::<20>(&"0".repeat(31)),
            Err(Nix32Error::BadLength(31, 20))
        );
        assert_eq!(
            decode::<20>(&"0".repeat(33)),
            Err(Nix32Error::BadLength(33, 20))
        );
        assert_eq!(decode::<32>(""), Err(Nix32Error::BadLength(0, 32)));
    }

    #[test]
    fn bits_beyond_the_length_are_refused() {
        // 52 characters carry 260 bits; 32 bytes are 256, so the first character may only
        // use its low bit.
        let ok = format!("1{}", "0".repeat(51));
        assert!(decode::<32>(&ok).is_ok());
        let over = format!("2{}", "0".repeat(51));
        assert_eq!(decode::<32>(&over), Err(Nix32Error::Overflow));
        // 32 characters carry exactly 160 bits: nothing to overflow for 20 bytes.
        assert_eq!(decode::<20>(&"z".repeat(32)), Ok([0xff; 20]));
    }
}
