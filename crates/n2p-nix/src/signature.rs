//! Nix's ed25519 signatures: secret keys `name:base64(seed ‖ public)`, public keys
//! `name:base64(32 bytes)`, signatures `name:base64(64 bytes)` over the fingerprint
//! `1;<store path>;<sha256:nix32 NarHash>;<NarSize>;<sorted full reference paths, comma-joined>`.
//!
//! ```
//! use n2p_nix::{NarHash, SecretKey, StoreDir, StorePath, signature::fingerprint};
//!
//! let key = SecretKey::from_seed("alice-1", [7; 32]);
//! let path = StorePath::from_basename("00bgd045z0d4icpbc2yyz4gx48ak44la-hello").unwrap();
//! let text = fingerprint(&StoreDir::default(), &path, &NarHash::of(b"nar"), 3, []);
//! let sig = key.sign(&text);
//! assert_eq!(sig.key_name(), "alice-1");
//! assert!(key.public().verify(&text, &sig));
//! ```

use std::collections::BTreeSet;
use std::fmt;

use data_encoding::BASE64;
use ed25519_dalek::Signer;
use zeroize::Zeroizing;

use crate::{NarHash, StoreDir, StorePath};

/// Why a key or signature was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No `name:` prefix, or an empty name.
    #[error("a Nix key or signature is `name:base64`; got no name")]
    NoName,
    /// The part after the name is not base64 of the right length.
    ///
    /// For a secret key the payload holds the key's name only, never its bytes.
    #[error("bad base64 in Nix key or signature {0:?}")]
    BadData(String),
}

/// Splits `name:base64` and decodes the base64 into exactly `N` bytes (zeroized on drop,
/// as secret keys go through here too). `what` names the input in errors.
fn split_decode<const N: usize>(
    text: &str,
    what: impl Fn(&str) -> String,
) -> Result<(String, Zeroizing<[u8; N]>), KeyError> {
    let (name, data) = text.split_once(':').ok_or(KeyError::NoName)?;
    if name.is_empty() {
        return Err(KeyError::NoName);
    }
    let bad = || KeyError::BadData(what(name));
    let data = data.trim_end_matches(['\n', '\r']);
    let mut bytes = Zeroizing::new([0u8; N]);
    let len = BASE64.decode_len(data.len()).map_err(|_| bad())?;
    if len < N {
        return Err(bad());
    }
    // Decode into a buffer that is itself zeroized, then insist on exactly N bytes.
    let mut buffer = Zeroizing::new(vec![0u8; len]);
    let written = BASE64
        .decode_mut(data.as_bytes(), &mut buffer)
        .map_err(|_| bad())?;
    if written != N {
        return Err(bad());
    }
    bytes.copy_from_slice(&buffer[..N]);
    Ok((name.to_owned(), bytes))
}

/// A Nix signing (secret) key.
///
/// Its bytes are zeroized on drop (by `ed25519_dalek::SigningKey`) and never printed:
/// `Debug` shows the name only.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl SecretKey {
    /// A fresh key named `name` from 32 random bytes the caller supplies.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Self {
        Self {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }
    /// Parses `name:base64(64 bytes)`, the format of `nix key generate-secret`. A trailing
    /// newline is allowed; a public half that does not match the seed is refused.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_decode::<64>(text, |name| format!("secret key {name}"))?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes)
            .map_err(|_| KeyError::BadData(format!("secret key {name}")))?;
        Ok(Self { name, key })
    }
    /// `name:base64(64 bytes)`, the format Nix reads from `secret-key-files`. The result
    /// is the secret itself: write it to a 0600 file and drop it.
    pub fn to_nix_string(&self) -> String {
        let bytes = Zeroizing::new(self.key.to_keypair_bytes());
        format!("{}:{}", self.name, BASE64.encode(bytes.as_slice()))
    }
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }
    /// Signs a fingerprint.
    pub fn sign(&self, fingerprint: &str) -> Signature {
        Signature {
            name: self.name.clone(),
            bytes: self.key.sign(fingerprint.as_bytes()).to_bytes(),
        }
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
    /// Parses `name:base64(32 bytes)`; a trailing newline is allowed.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_decode::<32>(text, |_| text.to_owned())?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| KeyError::BadData(text.to_owned()))?;
        Ok(Self { name, key })
    }
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether `sig` is this key's signature of `fingerprint` (names must match too).
    ///
    /// Checked strictly (no small-order keys, canonical signatures), as libsodium, which
    /// Nix uses, checks them.
    pub fn verify(&self, fingerprint: &str, sig: &Signature) -> bool {
        sig.name == self.name
            && self
                .key
                .verify_strict(
                    fingerprint.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&sig.bytes),
                )
                .is_ok()
    }
}

impl fmt::Display for PublicKey {
    /// `name:base64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
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
        let (name, bytes) = split_decode::<64>(text, |_| text.to_owned())?;
        Ok(Self {
            name,
            bytes: *bytes,
        })
    }
    /// The signing key's name.
    pub fn key_name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Signature {
    /// `name:base64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(&self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

/// The text Nix signs for a path: `1;<path>;<sha256:nix32>;<size>;<refs>` with full paths,
/// references sorted and comma-joined (a reference given twice counts once, as in Nix's
/// set).
pub fn fingerprint<'a>(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &NarHash,
    nar_size: u64,
    references: impl IntoIterator<Item = &'a StorePath>,
) -> String {
    let references: BTreeSet<String> = references
        .into_iter()
        .map(|reference| store_dir.display(reference))
        .collect();
    let references: Vec<String> = references.into_iter().collect();
    format!(
        "1;{};{};{nar_size};{}",
        store_dir.display(path),
        nar_hash.to_nix32_string(),
        references.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(basename: &str) -> StorePath {
        StorePath::from_basename(basename).expect("valid basename")
    }

    #[test]
    fn keys_round_trip_and_sign() {
        let key = SecretKey::from_seed("test-1", [42; 32]);
        let text = key.to_nix_string();
        assert!(text.starts_with("test-1:"));
        let again = SecretKey::parse(&format!("{text}\n")).expect("parses");
        assert_eq!(again.to_nix_string(), text);
        assert_eq!(again.name(), "test-1");
        let public = key.public();
        let public_text = public.to_string();
        assert_eq!(PublicKey::parse(&public_text), Ok(public.clone()));
        assert_eq!(public.name(), "test-1");

        let sig = key.sign("hello");
        assert_eq!(Signature::parse(&sig.to_string()), Ok(sig.clone()));
        assert!(public.verify("hello", &sig));
        assert!(!public.verify("hellO", &sig));
        // Same bytes, other name: refused.
        let renamed =
            Signature::parse(&sig.to_string().replacen("test-1", "test-2", 1)).expect("parses");
        assert!(!public.verify("hello", &renamed));
        // Other key, same name: refused.
        let other = SecretKey::from_seed("test-1", [43; 32]);
        assert!(!other.public().verify("hello", &sig));
    }

    #[test]
    fn secret_key_debug_and_errors_do_not_leak() {
        let key = SecretKey::from_seed("leak-test", [9; 32]);
        let secret = key.to_nix_string();
        let data = secret.split_once(':').expect("name:data").1;
        assert_eq!(format!("{key:?}"), "SecretKey(leak-test:..)");
        // A secret with its public half damaged: the error names the key, not the bytes.
        let mut damaged = secret.clone().into_bytes();
        let last = damaged.len() - 3;
        damaged[last] = if damaged[last] == b'A' { b'B' } else { b'A' };
        let damaged = String::from_utf8(damaged).expect("ascii");
        let error = SecretKey::parse(&damaged).expect_err("public half does not match");
        assert!(!error.to_string().contains(&data[..20]), "{error}");
        let error = SecretKey::parse(&format!("{secret}!")).expect_err("bad base64");
        assert!(!error.to_string().contains(&data[..20]), "{error}");
    }

    #[test]
    fn malformed_keys_and_signatures_are_refused() {
        let key = SecretKey::from_seed("k", [1; 32]);
        let public = key.public().to_string();
        let sig = key.sign("x").to_string();
        let secret = key.to_nix_string();
        for text in ["", "nocolon", ":AAAA", &public[2..]] {
            assert_eq!(PublicKey::parse(text), Err(KeyError::NoName), "{text}");
        }
        assert_eq!(Signature::parse(&sig[2..]), Err(KeyError::NoName));
        assert_eq!(
            SecretKey::parse(&secret[2..]).map(|_| ()),
            Err(KeyError::NoName)
        );
        // Right format, wrong lengths: a public key is not a signature and vice versa.
        assert!(matches!(PublicKey::parse(&sig), Err(KeyError::BadData(_))));
        assert!(matches!(
            Signature::parse(&public),
            Err(KeyError::BadData(_))
        ));
        assert!(matches!(
            SecretKey::parse(&public),
            Err(KeyError::BadData(_))
        ));
        assert!(matches!(
            PublicKey::parse("k:AAAA"),
            Err(KeyError::BadData(_))
        ));
        assert!(matches!(
            PublicKey::parse("k:not base64!"),
            Err(KeyError::BadData(_))
        ));
        let unpadded = public.trim_end_matches('=');
        assert!(matches!(
            PublicKey::parse(unpadded),
            Err(KeyError::BadData(_))
        ));
    }

    #[test]
    fn fingerprint_sorts_and_qualifies_references() {
        let dir = StoreDir::default();
        let me = path("00bgd045z0d4icpbc2yyz4gx48ak44la-me");
        let a = path("11bgd045z0d4icpbc2yyz4gx48ak44la-a");
        let b = path("22bgd045z0d4icpbc2yyz4gx48ak44la-b");
        let hash = NarHash::of(b"");
        let text = fingerprint(&dir, &me, &hash, 120, [&b, &a, &b]);
        assert_eq!(
            text,
            "1;/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-me;\
             sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;120;\
             /nix/store/11bgd045z0d4icpbc2yyz4gx48ak44la-a,\
             /nix/store/22bgd045z0d4icpbc2yyz4gx48ak44la-b"
        );
        let none = fingerprint(&dir, &me, &hash, 1, []);
        assert!(none.ends_with(";1;"), "{none}");
    }
}
