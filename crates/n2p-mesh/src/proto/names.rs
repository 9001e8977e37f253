//! Peer names as socket file stems: checking the names a team file gives and turning any
//! announced name into one that is safe to put under the peers directory.
//!
//! ```
//! use n2p_mesh::proto::names::{sanitize_name, socket_file_name, validate_name};
//!
//! assert!(validate_name("alice").is_ok());
//! assert!(validate_name("../x").is_err());
//! assert_eq!(sanitize_name("../../etc/passwd"), "etc-passwd");
//! assert_eq!(socket_file_name("alice"), "alice.sock");
//! ```
//!
//! A name is at most [`MAX_NAME_LEN`] characters from `[A-Za-z0-9._-]` and starts with a
//! letter, digit or `_`. That rules out `/`, `.`, `..`, hidden files and names a shell tool
//! would read as an option. Names that differ only in case are the same name (see
//! [`name_key`]), because the peers directory may live on a case-insensitive file system.

use iroh::EndpointId;

/// The longest name a team file may give or a sanitised announcement keeps, in characters.
pub const MAX_NAME_LEN: usize = 32;

/// The longest socket file stem the mesh ever uses: a name, a name with a short id suffix, or
/// (the last resort when even that collides) the peer's full id in z-base-32.
pub const MAX_STEM_LEN: usize = 52;

/// The name given to a peer whose announced name has nothing usable in it.
pub const FALLBACK_NAME: &str = "peer";

/// Number of id bytes in a `<name>-<short id>` suffix (shown as twice as many hex digits).
const SHORT_ID_BYTES: usize = 5;

/// Why a team-file name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] characters.
    #[error("the name is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong {
        /// Its length in characters.
        len: usize,
    },
    /// The name holds a character outside `[A-Za-z0-9._-]`.
    #[error("the name contains {ch:?}; only letters, digits, '.', '_' and '-' are allowed")]
    BadChar {
        /// The first offending character.
        ch: char,
    },
    /// The name starts with `.` or `-`.
    #[error("the name starts with {ch:?}; it must start with a letter, digit or '_'")]
    BadStart {
        /// The first character.
        ch: char,
    },
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn is_start_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Checks a name as written in a team file: accepted as is, or refused with the reason.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let first = chars.next().ok_or(NameError::Empty)?;
    if let Some(ch) = name.chars().find(|c| !is_name_char(*c)) {
        return Err(NameError::BadChar { ch });
    }
    if !is_start_char(first) {
        return Err(NameError::BadStart { ch: first });
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong { len });
    }
    Ok(())
}

/// Turns any announced name into a valid one (see [`validate_name`]): characters outside
/// `[A-Za-z0-9._-]` become `-`, leading `.` and `-` are dropped, the rest is cut to
/// [`MAX_NAME_LEN`], and an empty result becomes [`FALLBACK_NAME`].
pub fn sanitize_name(raw: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| if is_name_char(c) { c } else { '-' })
        .collect();
    let trimmed = mapped.trim_start_matches(['.', '-']);
    // Only ASCII is left, so bytes are characters.
    let cut = &trimmed[..trimmed.len().min(MAX_NAME_LEN)];
    if cut.is_empty() {
        FALLBACK_NAME.to_owned()
    } else {
        cut.to_owned()
    }
}

/// The key two names collide on: names equal up to ASCII case are one name.
pub fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// `<name>-<short id>`: a valid name (cut so the result stays within [`MAX_NAME_LEN`]) with
/// the first bytes of `id` in hex, as in iroh's `fmt_short`.
pub fn suffixed_name(name: &str, id: &EndpointId) -> String {
    let short = id.fmt_short().to_string();
    let room = MAX_NAME_LEN - 1 - 2 * SHORT_ID_BYTES;
    let base = sanitize_name(name);
    let base = base[..base.len().min(room)].trim_end_matches(['.', '-']);
    let base = if base.is_empty() { FALLBACK_NAME } else { base };
    format!("{base}-{short}")
}

/// The last-resort stem for a peer, unique because it is the whole id (z-base-32, 52
/// characters, always a valid stem).
pub fn id_stem(id: &EndpointId) -> String {
    id.to_z32()
}

/// Whether `stem` may be used as a socket file stem as is: the name rules with the longer
/// [`MAX_STEM_LEN`] limit.
pub fn is_safe_stem(stem: &str) -> bool {
    match stem.chars().next() {
        Some(first) => {
            is_start_char(first) && stem.len() <= MAX_STEM_LEN && stem.chars().all(is_name_char)
        }
        None => false,
    }
}

/// `<name>.sock`, the file name of a peer's socket in the peers directory. A stem that is not
/// safe (see [`is_safe_stem`]) is sanitised first, so the result is always a plain file name.
pub fn socket_file_name(name: &str) -> String {
    if is_safe_stem(name) {
        format!("{name}.sock")
    } else {
        format!("{}.sock", sanitize_name(name))
    }
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;

    fn id(seed: u8) -> EndpointId {
        SecretKey::from_bytes(&[seed; 32]).public()
    }

    #[test]
    fn valid_names() {
        for name in [
            "alice",
            "Bob",
            "_x",
            "a.b-c_d",
            "0",
            &"a".repeat(MAX_NAME_LEN),
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn invalid_names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("."), Err(NameError::BadStart { ch: '.' }));
        assert_eq!(validate_name(".."), Err(NameError::BadStart { ch: '.' }));
        assert_eq!(
            validate_name(".hidden"),
            Err(NameError::BadStart { ch: '.' })
        );
        assert_eq!(validate_name("-rf"), Err(NameError::BadStart { ch: '-' }));
        assert_eq!(validate_name("a/b"), Err(NameError::BadChar { ch: '/' }));
        assert_eq!(validate_name("../x"), Err(NameError::BadChar { ch: '/' }));
        assert_eq!(validate_name("a b"), Err(NameError::BadChar { ch: ' ' }));
        assert_eq!(validate_name("é"), Err(NameError::BadChar { ch: 'é' }));
        assert_eq!(validate_name("a\0"), Err(NameError::BadChar { ch: '\0' }));
        assert_eq!(
            validate_name(&"a".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong {
                len: MAX_NAME_LEN + 1
            })
        );
    }

    #[test]
    fn sanitize_path_tricks() {
        assert_eq!(sanitize_name("../../x"), "x");
        assert_eq!(sanitize_name("../.."), FALLBACK_NAME);
        assert_eq!(sanitize_name("."), FALLBACK_NAME);
        assert_eq!(sanitize_name(".."), FALLBACK_NAME);
        assert_eq!(sanitize_name(".hidden"), "hidden");
        assert_eq!(sanitize_name("/etc/passwd"), "etc-passwd");
        assert_eq!(sanitize_name("a/../b"), "a-..-b");
        assert_eq!(sanitize_name("-rf"), "rf");
        assert_eq!(sanitize_name(""), FALLBACK_NAME);
    }

    #[test]
    fn sanitize_unicode_and_controls() {
        assert_eq!(sanitize_name("zoë"), "zo-");
        assert_eq!(sanitize_name("名前"), FALLBACK_NAME);
        assert_eq!(sanitize_name("a\nb\tc\0d\u{7f}"), "a-b-c-d-");
        assert_eq!(sanitize_name("a\u{202e}b"), "a-b");
        assert_eq!(sanitize_name("x y"), "x-y");
    }

    #[test]
    fn sanitize_long_names() {
        let long = "b".repeat(1000);
        assert_eq!(sanitize_name(&long), "b".repeat(MAX_NAME_LEN));
        // multi-byte characters become one '-' each, so the cut is on a boundary
        let wide = format!("a{}", "é".repeat(100));
        let out = sanitize_name(&wide);
        assert_eq!(out.len(), MAX_NAME_LEN);
        assert!(out.starts_with("a-"));
    }

    #[test]
    fn sanitized_names_are_always_valid() {
        let samples = [
            "",
            ".",
            "..",
            "...",
            "../../x",
            ".hidden",
            "-",
            "--x",
            "é",
            "a/b",
            "\0",
            "ok",
            "a.sock",
            "ünïcödé",
            "   ",
            "\u{1F600}",
            "CON",
            "a\\b",
        ];
        for s in samples {
            let out = sanitize_name(s);
            assert_eq!(validate_name(&out), Ok(()), "{s:?} -> {out:?}");
            assert!(is_safe_stem(&out));
        }
        let long = "é".repeat(500) + "x";
        assert_eq!(validate_name(&sanitize_name(&long)), Ok(()));
    }

    #[test]
    fn valid_names_survive_sanitizing() {
        for name in ["alice", "Bob", "_x", "a.b-c_d"] {
            assert_eq!(sanitize_name(name), name);
        }
    }

    #[test]
    fn socket_file_names() {
        assert_eq!(socket_file_name("alice"), "alice.sock");
        assert_eq!(socket_file_name("../../x"), "x.sock");
        assert_eq!(socket_file_name(".hidden"), "hidden.sock");
        assert_eq!(socket_file_name(""), "peer.sock");
        let stem = id_stem(&id(1));
        assert_eq!(socket_file_name(&stem), format!("{stem}.sock"));
        for s in ["a/b", "..", "x\0"] {
            let f = socket_file_name(s);
            assert!(
                !f.contains('/') && !f.starts_with('.') && !f.contains('\0'),
                "{f}"
            );
        }
    }

    #[test]
    fn suffixed_names_are_valid_and_bounded() {
        let peer = id(7);
        let short = peer.fmt_short().to_string();
        assert_eq!(suffixed_name("alice", &peer), format!("alice-{short}"));
        let long = suffixed_name(&"z".repeat(100), &peer);
        assert_eq!(long.len(), MAX_NAME_LEN);
        assert_eq!(validate_name(&long), Ok(()));
        assert_eq!(suffixed_name("..", &peer), format!("peer-{short}"));
        // a base that would end in '-' after the cut loses the dashes
        let dashy = format!("{}-----------", "a".repeat(20));
        assert_eq!(
            suffixed_name(&dashy, &peer),
            format!("{}-{short}", "a".repeat(20))
        );
    }

    #[test]
    fn id_stems_are_safe_and_unique() {
        let a = id_stem(&id(1));
        let b = id_stem(&id(2));
        assert_ne!(a, b);
        assert_eq!(a.len(), MAX_STEM_LEN);
        assert!(is_safe_stem(&a) && is_safe_stem(&b));
    }

    #[test]
    fn keys_ignore_case() {
        assert_eq!(name_key("Alice"), name_key("aLICE"));
        assert_ne!(name_key("alice"), name_key("alice2"));
    }
}
