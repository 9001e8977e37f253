//! `.narinfo` files: rendering (always `Compression: none`, `URL` relative) and parsing
//! with the rules stock Nix applies.
//!
//! ```
//! use n2p_nix::{NarHash, NarInfo, SecretKey, StoreDir, StorePath};
//!
//! let dir = StoreDir::default();
//! let key = SecretKey::from_seed("alice-1", [7; 32]);
//! let mut info = NarInfo {
//!     store_path: StorePath::from_basename("00bgd045z0d4icpbc2yyz4gx48ak44la-hello").unwrap(),
//!     url: "nar/x.nar".into(),
//!     nar_hash: NarHash::of(b"nar"),
//!     nar_size: 3,
//!     references: vec![],
//!     deriver: None,
//!     sigs: vec![],
//!     ca: None,
//! };
//! info.sign(&dir, &key);
//! let text = info.render(&dir);
//! assert!(text.contains("Compression: none\n"));
//! let back = NarInfo::parse(&text, &dir).unwrap();
//! assert_eq!(back, info);
//! assert!(back.signed_by_any(&dir, &[key.public()]));
//! ```

use std::fmt::Write as _;

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

/// The `Compression` Nix assumes when a narinfo names none.
pub const DEFAULT_COMPRESSION: &str = "bzip2";

/// What Nix writes for a path whose deriver is unknown; read as no deriver.
const UNKNOWN_DERIVER: &str = "unknown-deriver";

impl NarInfo {
    /// The fingerprint Nix signs for this path.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        crate::signature::fingerprint(
            store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }
    /// Adds `key`'s signature (replacing an older one by the same key name).
    pub fn sign(&mut self, store_dir: &StoreDir, key: &SecretKey) {
        let sig = key.sign(&self.fingerprint(store_dir));
        self.sigs.retain(|old| old.key_name() != key.name());
        self.sigs.push(sig);
    }
    /// Whether some signature verifies under one of `keys`.
    pub fn signed_by_any(&self, store_dir: &StoreDir, keys: &[PublicKey]) -> bool {
        let fingerprint = self.fingerprint(store_dir);
        self.sigs.iter().any(|sig| {
            keys.iter()
                .filter(|key| key.name() == sig.key_name())
                .any(|key| key.verify(&fingerprint, sig))
        })
    }
    /// The narinfo text, `StoreDir`-qualified paths where Nix expects them, final newline.
    ///
    /// Keys in the order Nix writes them; `Compression: none`; the `References` line is
    /// written even when empty, as Nix does; no `FileHash`/`FileSize` (optional when
    /// uncompressed).
    pub fn render(&self, store_dir: &StoreDir) -> String {
        let mut text = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "StorePath: {}\nURL: {}\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: ",
            store_dir.display(&self.store_path),
            self.url,
            self.nar_hash.to_nix32_string(),
            self.nar_size,
        );
        for (i, reference) in self.references.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(reference.as_str());
        }
        text.push('\n');
        if let Some(deriver) = &self.deriver {
            let _ = writeln!(text, "Deriver: {deriver}");
        }
        for sig in &self.sigs {
            let _ = writeln!(text, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(text, "CA: {ca}");
        }
        text
    }
    /// Parses narinfo text as stock Nix would accept it, for an uncompressed NAR.
    ///
    /// A narinfo naming another compression (or none: Nix then assumes bzip2) is refused,
    /// as its URL does not lead to a NAR; [`NarInfo::parse_with_compression`] reads those.
    pub fn parse(text: &str, store_dir: &StoreDir) -> Result<Self, NarInfoError> {
        let (info, compression) = Self::parse_with_compression(text, store_dir)?;
        if compression != "none" {
            return Err(NarInfoError::BadValue {
                key: "Compression",
                reason: format!("{compression}: only uncompressed NARs (`none`) are handled"),
            });
        }
        Ok(info)
    }
    /// Parses narinfo text as stock Nix does, returning the `Compression` too
    /// ([`DEFAULT_COMPRESSION`] when the narinfo names none).
    ///
    /// Every line is `Key: value` with a final newline; `StorePath`, `URL`, `NarHash` and
    /// a non-zero `NarSize` are required; references, deriver, signatures, hashes and sizes
    /// must be well-formed; unknown keys are ignored; a key given twice is refused.
    pub fn parse_with_compression(
        text: &str,
        store_dir: &StoreDir,
    ) -> Result<(Self, String), NarInfoError> {
        let mut fields = Fields::default();
        let mut rest = text;
        let mut number = 0;
        while !rest.is_empty() {
            number += 1;
            let (line, after) = rest.split_once('\n').ok_or(NarInfoError::BadLine(number))?;
            rest = after;
            let (key, value) = line
                .split_once(": ")
                .filter(|(key, _)| !key.is_empty() && !key.contains(':'))
                .ok_or(NarInfoError::BadLine(number))?;
            fields.take(key, value, store_dir)?;
        }
        fields.finish()
    }
}

/// The values read so far.
#[derive(Default)]
struct Fields {
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<String>,
    nar_hash: Option<NarHash>,
    nar_size: Option<u64>,
    references: Option<Vec<StorePath>>,
    deriver: Option<Option<StorePath>>,
    sigs: Vec<Signature>,
    ca: Option<String>,
    file_hash: Option<NarHash>,
    file_size: Option<u64>,
}

/// Stores `value` in `slot`, refusing a second one.
fn set_once<T>(slot: &mut Option<T>, key: &'static str, value: T) -> Result<(), NarInfoError> {
    if slot.is_some() {
        return Err(bad(key, "given twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn bad(key: &'static str, reason: impl Into<String>) -> NarInfoError {
    NarInfoError::BadValue {
        key,
        reason: reason.into(),
    }
}

/// A decimal size: digits only.
fn size(key: &'static str, value: &str) -> Result<u64, NarInfoError> {
    if value.is_empty() || !value.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad(key, format!("{value:?} is not a size")));
    }
    value
        .parse()
        .map_err(|_| bad(key, format!("{value:?} is too large")))
}

fn hash(key: &'static str, value: &str) -> Result<NarHash, NarInfoError> {
    value.parse().map_err(|error| bad(key, format!("{error}")))
}

fn basename(key: &'static str, value: &str) -> Result<StorePath, NarInfoError> {
    StorePath::from_basename(value).map_err(|error| bad(key, format!("{error}")))
}

impl Fields {
    fn take(&mut self, key: &str, value: &str, dir: &StoreDir) -> Result<(), NarInfoError> {
        match key {
            "StorePath" => {
                let path = dir
                    .parse_path(value)
                    .map_err(|error| bad("StorePath", format!("{error}")))?;
                set_once(&mut self.store_path, "StorePath", path)
            }
            "URL" => set_once(&mut self.url, "URL", value.to_owned()),
            "Compression" => set_once(&mut self.compression, "Compression", value.to_owned()),
            "NarHash" => set_once(&mut self.nar_hash, "NarHash", hash("NarHash", value)?),
            "NarSize" => set_once(&mut self.nar_size, "NarSize", size("NarSize", value)?),
            "FileHash" => set_once(&mut self.file_hash, "FileHash", hash("FileHash", value)?),
            "FileSize" => set_once(&mut self.file_size, "FileSize", size("FileSize", value)?),
            "References" => {
                let references = value
                    .split(' ')
                    .filter(|word| !word.is_empty())
                    .map(|word| basename("References", word))
                    .collect::<Result<_, _>>()?;
                set_once(&mut self.references, "References", references)
            }
            "Deriver" => {
                let deriver = match value {
                    UNKNOWN_DERIVER => None,
                    _ => Some(basename("Deriver", value)?),
                };
                set_once(&mut self.deriver, "Deriver", deriver)
            }
            "Sig" => {
                let sig =
                    Signature::parse(value).map_err(|error| bad("Sig", format!("{error}")))?;
                self.sigs.push(sig);
                Ok(())
            }
            "CA" => {
                if !(value.starts_with("fixed:") || value.starts_with("text:")) {
                    return Err(bad("CA", format!("{value:?} is not fixed:... or text:...")));
                }
                set_once(&mut self.ca, "CA", value.to_owned())
            }
            // System, and whatever newer versions add.
            _ => Ok(()),
        }
    }

    fn finish(self) -> Result<(NarInfo, String), NarInfoError> {
        let url = self.url.ok_or(NarInfoError::Missing("URL"))?;
        if url.is_empty() {
            return Err(bad("URL", "empty"));
        }
        let nar_size = self.nar_size.ok_or(NarInfoError::Missing("NarSize"))?;
        if nar_size == 0 {
            return Err(bad("NarSize", "0"));
        }
        let info = NarInfo {
            store_path: self.store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url,
            nar_hash: self.nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size,
            references: self.references.unwrap_or_default(),
            deriver: self.deriver.flatten(),
            sigs: self.sigs,
            ca: self.ca,
        };
        let compression = self
            .compression
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| DEFAULT_COMPRESSION.to_owned());
        Ok((info, compression))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "00bgd045z0d4icpbc2yyz4gx48ak44la-me";
    const DEP: &str = "11bgd045z0d4icpbc2yyz4gx48ak44la-dep";
    const DRV: &str = "22bgd045z0d4icpbc2yyz4gx48ak44la-me.drv";
    const EMPTY_NIX32: &str = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    fn path(basename: &str) -> StorePath {
        StorePath::from_basename(basename).expect("valid basename")
    }

    fn sample() -> NarInfo {
        NarInfo {
            store_path: path(ME),
            url: "nar/abc.nar".into(),
            nar_hash: NarHash::of(b""),
            nar_size: 120,
            references: vec![path(DEP), path(ME)],
            deriver: Some(path(DRV)),
            sigs: vec![],
            ca: None,
        }
    }

    /// A minimal narinfo with `extra` lines appended.
    fn minimal(extra: &str) -> String {
        format!(
            "StorePath: /nix/store/{ME}\nURL: nar/x.nar\nCompression: none\n\
             NarHash: {EMPTY_NIX32}\nNarSize: 8\n{extra}"
        )
    }

    #[test]
    fn renders_what_nix_writes() {
        let dir = StoreDir::default();
        let mut info = sample();
        info.ca =
            Some("fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into());
        assert_eq!(
            info.render(&dir),
            format!(
                "StorePath: /nix/store/{ME}\nURL: nar/abc.nar\nCompression: none\n\
                 NarHash: {EMPTY_NIX32}\nNarSize: 120\nReferences: {DEP} {ME}\n\
                 Deriver: {DRV}\n\
                 CA: fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n"
            )
        );
        let mut bare = sample();
        bare.references.clear();
        bare.deriver = None;
        assert!(bare.render(&dir).ends_with("NarSize: 120\nReferences: \n"));
    }

    #[test]
    fn render_then_parse_round_trips() {
        let dir = StoreDir::default();
        let mut info = sample();
        info.sign(&dir, &SecretKey::from_seed("a-1", [1; 32]));
        info.sign(&dir, &SecretKey::from_seed("b-1", [2; 32]));
        let text = info.render(&dir);
        assert_eq!(NarInfo::parse(&text, &dir), Ok(info.clone()));
        let other = StoreDir::new("/tmp/store");
        assert_eq!(NarInfo::parse(&info.render(&other), &other), Ok(info));
    }

    #[test]
    fn signing_replaces_a_key_names_old_signature() {
        let dir = StoreDir::default();
        let key = SecretKey::from_seed("a-1", [1; 32]);
        let other = SecretKey::from_seed("b-1", [2; 32]);
        let mut info = sample();
        info.sign(&dir, &other);
        info.nar_size = 121; // an old signature of `key` over other content
        info.sigs.push(key.sign("stale"));
        assert!(!info.signed_by_any(&dir, &[key.public()]));
        info.sign(&dir, &key);
        assert_eq!(info.sigs.len(), 2);
        assert!(info.signed_by_any(&dir, &[key.public()]));
        // b-1 signed before the size changed: no longer valid.
        assert!(!info.signed_by_any(&dir, &[other.public()]));
        // A key with the right name but other bytes does not count.
        let impostor = SecretKey::from_seed("a-1", [3; 32]).public();
        assert!(!info.signed_by_any(&dir, &[impostor]));
        assert!(!info.signed_by_any(&dir, &[]));
        // Changing the references changes the fingerprint.
        info.references.pop();
        assert!(!info.signed_by_any(&dir, &[key.public()]));
    }

    #[test]
    fn parses_nix_conventions() {
        let dir = StoreDir::default();
        let text = minimal(&format!(
            "FileHash: {EMPTY_NIX32}\nFileSize: 8\nReferences: \nDeriver: unknown-deriver\n\
             System: x86_64-linux\nSomethingNew: whatever\n"
        ));
        let info = NarInfo::parse(&text, &dir).expect("valid");
        assert!(info.references.is_empty());
        assert_eq!(info.deriver, None);
        assert_eq!(info.nar_size, 8);
        // No References line at all is fine too, as is a base16 or SRI NarHash.
        let base16 = minimal("").replace(
            EMPTY_NIX32,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        assert_eq!(
            NarInfo::parse(&base16, &dir).map(|i| i.nar_hash),
            Ok(NarHash::of(b""))
        );
    }

    #[test]
    fn compression_defaults_to_bzip2() {
        let dir = StoreDir::default();
        let none = minimal("");
        let (_, compression) = NarInfo::parse_with_compression(&none, &dir).expect("valid");
        assert_eq!(compression, "none");
        let missing = none.replace("Compression: none\n", "");
        let (_, compression) = NarInfo::parse_with_compression(&missing, &dir).expect("valid");
        assert_eq!(compression, DEFAULT_COMPRESSION);
        for text in [missing, none.replace(": none", ": xz")] {
            assert!(
                matches!(
                    NarInfo::parse(&text, &dir),
                    Err(NarInfoError::BadValue {
                        key: "Compression",
                        ..
                    })
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn required_keys_are_required() {
        let dir = StoreDir::default();
        let full = minimal("");
        for (key, line) in [
            ("StorePath", format!("StorePath: /nix/store/{ME}\n")),
            ("URL", "URL: nar/x.nar\n".into()),
            ("NarHash", format!("NarHash: {EMPTY_NIX32}\n")),
            ("NarSize", "NarSize: 8\n".into()),
        ] {
            let text = full.replace(&line, "");
            assert_eq!(NarInfo::parse(&text, &dir), Err(NarInfoError::Missing(key)));
        }
        let zero = full.replace("NarSize: 8", "NarSize: 0");
        assert!(matches!(
            NarInfo::parse(&zero, &dir),
            Err(NarInfoError::BadValue { key: "NarSize", .. })
        ));
        let empty_url = full.replace("URL: nar/x.nar", "URL: ");
        assert!(matches!(
            NarInfo::parse(&empty_url, &dir),
            Err(NarInfoError::BadValue { key: "URL", .. })
        ));
    }

    #[test]
    fn malformed_lines_are_refused() {
        let dir = StoreDir::default();
        let full = minimal("");
        let unterminated = full.trim_end_matches('\n').to_owned();
        assert_eq!(
            NarInfo::parse(&unterminated, &dir),
            Err(NarInfoError::BadLine(5))
        );
        for extra in ["\n", "NoColon\n", "Key:value\n", ": value\n", "A:B: c\n"] {
            let text = minimal(extra);
            assert_eq!(
                NarInfo::parse(&text, &dir),
                Err(NarInfoError::BadLine(6)),
                "{extra:?}"
            );
        }
    }

    #[test]
    fn mutated_narinfos_never_panic_and_what_parses_renders_back() {
        let dir = StoreDir::default();
        let mut info = sample();
        info.sign(&dir, &SecretKey::from_seed("a-1", [1; 32]));
        let text: Vec<char> = info.render(&dir).chars().collect();
        let mut rng = n2p_testkit::rand::XorShift64::new(5);
        let pool: Vec<char> = ": \n-/.=+abcdz019AZé".chars().collect();
        for _ in 0..5_000 {
            let mut mutated = text.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(mutated.len() as u64) as usize;
                match rng.below(3) {
                    0 => mutated[at] = pool[rng.below(pool.len() as u64) as usize],
                    1 => {
                        mutated.remove(at);
                    }
                    _ => mutated.insert(at, pool[rng.below(pool.len() as u64) as usize]),
                }
            }
            let mutated: String = mutated.into_iter().collect();
            if let Ok(parsed) = NarInfo::parse(&mutated, &dir) {
                // Whatever is accepted is well-formed enough to render and parse again.
                assert_eq!(NarInfo::parse(&parsed.render(&dir), &dir), Ok(parsed));
            }
        }
    }

    #[test]
    fn malformed_values_are_refused() {
        let dir = StoreDir::default();
        let cases = [
            ("StorePath", minimal("").replace("/nix/store/", "/tmp/")),
            (
                "StorePath",
                minimal(&format!("StorePath: /nix/store/{DEP}\n")),
            ),
            ("NarHash", minimal("").replace(EMPTY_NIX32, "sha256:xyz")),
            ("NarHash", minimal("").replace(EMPTY_NIX32, "md5:00")),
            ("NarSize", minimal("").replace("NarSize: 8", "NarSize: -8")),
            ("NarSize", minimal("").replace("NarSize: 8", "NarSize: 8 ")),
            (
                "NarSize",
                minimal("").replace("NarSize: 8", "NarSize: 99999999999999999999"),
            ),
            ("FileSize", minimal("FileSize: x\n")),
            ("FileHash", minimal("FileHash: sha256:00\n")),
            (
                "References",
                minimal(&format!("References: {DEP} /nix/store/{DEP}\n")),
            ),
            ("References", minimal("References: not-a-path\n")),
            (
                "References",
                minimal(&format!("References: {DEP}\nReferences: {ME}\n")),
            ),
            ("Deriver", minimal("Deriver: x.drv\n")),
            ("Sig", minimal("Sig: a-1:notbase64!\n")),
            ("Sig", minimal("Sig: nameless\n")),
            ("CA", minimal("CA: sha256:abc\n")),
            ("URL", minimal("URL: nar/y.nar\n")),
        ];
        for (key, text) in cases {
            match NarInfo::parse(&text, &dir) {
                Err(NarInfoError::BadValue { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{key}: {other:?} for\n{text}"),
            }
        }
    }
}
