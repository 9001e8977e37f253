//! Loading TOML config files with errors that name the file, line and column, and give a hint.
//!
//! Both the team file (mesh) and the personal file (cli) go through here. Their structs use
//! `#[serde(deny_unknown_fields)]`, so a misspelt key fails with the list of valid ones:
//!
//! ```
//! use n2p_core::config_file::parse_toml;
//! use std::path::Path;
//!
//! #[derive(Debug, serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Personal {
//!     name: String,
//! }
//!
//! let err = parse_toml::<Personal>("name = \"a\"\nnmae = \"b\"\n", Path::new("config.toml"))
//!     .unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "config.toml:2:1: unknown key `nmae`\n  hint: did you mean `name`? valid keys here: `name`"
//! );
//! ```
//!
//! Checks that serde cannot express (duplicates, cross-field rules) read the file through a
//! [`ConfigSource`], deserialize the values they check as [`Spanned`], and report with
//! [`ConfigSource::error_at`] so their errors look the same.

use std::{
    fmt, fs, io,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;

/// A value together with its byte span in the file, for errors found after parsing.
pub use toml::Spanned;

/// Separates a message from its hint inside a serde custom error (see [`de_error_with_hint`]).
const HINT_MARKER: &str = "\u{1f}hint: ";

/// Errors while loading or parsing a config file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The text is not valid TOML, has an unknown key, misses a required one, or holds a bad
    /// value. Displays as `<file>:<line>:<column>: <message>` and, when there is one, a
    /// `hint:` line below.
    #[error("{}", Rendered { path, location, message, hint })]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where in the file, when known.
        location: Option<Location>,
        /// What is wrong.
        message: String,
        /// How to fix it, when we can tell.
        hint: Option<String>,
    },
}

impl ConfigFileError {
    /// The hint of an [`Invalid`](Self::Invalid) error.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Self::Invalid { hint, .. } => hint.as_deref(),
            Self::Io { .. } => None,
        }
    }

    /// The location of an [`Invalid`](Self::Invalid) error.
    pub fn location(&self) -> Option<Location> {
        match self {
            Self::Invalid { location, .. } => *location,
            Self::Io { .. } => None,
        }
    }
}

/// A position in a text file, both numbers counted from 1; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// Line number, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `text` (clamped to the text; a split character counts
    /// as the one it starts in).
    pub fn of(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

struct Rendered<'a> {
    path: &'a Path,
    location: &'a Option<Location>,
    message: &'a str,
    hint: &'a Option<String>,
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(location) = self.location {
            write!(f, ":{location}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// The text of one config file and the path to name in its errors.
#[derive(Debug, Clone, Copy)]
pub struct ConfigSource<'a> {
    path: &'a Path,
    text: &'a str,
}

impl<'a> ConfigSource<'a> {
    /// Wraps text that came from `path` (the path is only used in messages).
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Self { path, text }
    }

    /// The path named in errors.
    pub fn path(&self) -> &'a Path {
        self.path
    }

    /// The text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// Deserializes the text; syntax errors, unknown or missing keys and bad values come
    /// back as [`ConfigFileError::Invalid`] with location and hint.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigFileError> {
        toml::from_str(self.text).map_err(|e| self.toml_error(&e))
    }

    /// An error at the byte span `span` (as given by [`Spanned::span`]).
    pub fn error_at(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigFileError {
        ConfigFileError::Invalid {
            path: self.path.to_owned(),
            location: Some(Location::of(self.text, span.start)),
            message: message.into(),
            hint,
        }
    }

    /// An error about the file as a whole.
    pub fn error(&self, message: impl Into<String>, hint: Option<String>) -> ConfigFileError {
        ConfigFileError::Invalid {
            path: self.path.to_owned(),
            location: None,
            message: message.into(),
            hint,
        }
    }

    fn toml_error(&self, err: &toml::de::Error) -> ConfigFileError {
        let (message, hint) = explain(err.message());
        ConfigFileError::Invalid {
            path: self.path.to_owned(),
            location: err.span().map(|span| Location::of(self.text, span.start)),
            message,
            hint,
        }
    }
}

/// Reads and deserializes the TOML file at `path`.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = read_config_text(path)?;
    ConfigSource::new(path, &text).parse()
}

/// Deserializes TOML `text`; `path` names the file in error messages.
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigFileError> {
    ConfigSource::new(path, text).parse()
}

/// Reads a config file as UTF-8 text; invalid UTF-8 is reported with its line and column.
pub fn read_config_text(path: &Path) -> Result<String, ConfigFileError> {
    let bytes = fs::read(path).map_err(|source| ConfigFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        // Everything before `valid` is UTF-8, so this conversion cannot fail.
        let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        ConfigFileError::Invalid {
            path: path.to_owned(),
            location: Some(Location::of(prefix, valid)),
            message: "the file is not valid UTF-8".to_owned(),
            hint: Some("save the file as UTF-8 text".to_owned()),
        }
    })
}

/// A serde custom error whose message carries a hint, for `Deserialize` impls of checked
/// values: the loader shows `message` at the value's location and `hint` below it.
pub fn de_error_with_hint<E: serde::de::Error>(message: impl fmt::Display, hint: &str) -> E {
    E::custom(format_args!("{message}{HINT_MARKER}{hint}"))
}

/// Turns serde/toml wording into ours: "key" instead of "field", and a hint where we can.
fn explain(raw: &str) -> (String, Option<String>) {
    if let Some((message, hint)) = raw.split_once(HINT_MARKER) {
        return (message.to_owned(), Some(hint.to_owned()));
    }
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        let Some((key, expected)) = rest.split_once('`') else {
            return (raw.to_owned(), None);
        };
        let valid = backticked(expected);
        let hint = if valid.is_empty() {
            "no keys are allowed here".to_owned()
        } else {
            let list = valid
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            match closest(key, &valid) {
                Some(near) => format!("did you mean `{near}`? valid keys here: {list}"),
                None => format!("valid keys here: {list}"),
            }
        };
        return (format!("unknown key `{key}`"), Some(hint));
    }
    if let Some(rest) = raw.strip_prefix("missing field `")
        && let Some((key, _)) = rest.split_once('`')
    {
        return (
            format!("missing key `{key}`"),
            Some(format!("this table needs a `{key}` key")),
        );
    }
    if let Some(rest) = raw.strip_prefix("unknown variant `")
        && let Some((value, expected)) = rest.split_once('`')
    {
        let valid = backticked(expected);
        let list = valid
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return (
            format!("unknown value `{value}`"),
            Some(format!("use one of {list}")),
        );
    }
    (raw.to_owned(), None)
}

/// The words between backticks in `s`.
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The valid key closest to a misspelt one, if it is close enough to be a typo.
fn closest<'k>(key: &str, valid: &[&'k str]) -> Option<&'k str> {
    valid
        .iter()
        .map(|v| (edit_distance(key, v), *v))
        .filter(|(d, v)| *d <= 2.max(v.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Levenshtein distance over characters, with adjacent swaps counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j]
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use std::{io::Write, net::SocketAddr};

    use serde::{Deserialize, Deserializer};

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // fields exist to be deserialized
    struct File {
        mesh: Mesh,
        #[serde(default)]
        member: Vec<Member>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // fields exist to be deserialized
    struct Mesh {
        secret_env: Option<String>,
        expiry_secs: Option<u64>,
        open: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // fields exist to be deserialized
    struct Member {
        name: Even,
        #[serde(default)]
        addrs: Vec<SocketAddr>,
    }

    /// A string of even length, to test hints from `Deserialize` impls.
    #[derive(Debug)]
    struct Even(#[allow(dead_code)] String);

    impl<'de> Deserialize<'de> for Even {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            if s.len() % 2 == 1 {
                return Err(de_error_with_hint(
                    format_args!("odd name `{s}`"),
                    "add a letter",
                ));
            }
            Ok(Self(s))
        }
    }

    fn parse_err(text: &str) -> ConfigFileError {
        parse_toml::<File>(text, Path::new("team.toml")).expect_err("should fail")
    }

    #[test]
    fn valid_file_parses() {
        let file: File = parse_toml(
            "[mesh]\nsecret_env = \"X\"\n[[member]]\nname = \"ab\"\naddrs = [\"127.0.0.1:1\"]\n",
            Path::new("t.toml"),
        )
        .expect("valid");
        assert_eq!(file.member.len(), 1);
        assert_eq!(file.member[0].addrs.len(), 1);
        assert_eq!(file.mesh.secret_env.as_deref(), Some("X"));
    }

    #[test]
    fn unknown_key_names_line_column_and_valid_keys() {
        let err = parse_err("[mesh]\nsecret_env = \"X\"\n  expiry_sec = 3\n");
        assert_eq!(
            err.to_string(),
            "team.toml:3:3: unknown key `expiry_sec`\n  hint: did you mean `expiry_secs`? \
             valid keys here: `secret_env`, `expiry_secs`, `open`"
        );
        assert_eq!(err.location(), Some(Location { line: 3, column: 3 }));
    }

    #[test]
    fn unknown_key_without_near_match_lists_keys() {
        let err = parse_err("[mesh]\nbanana = 1\n");
        assert_eq!(
            err.hint(),
            Some("valid keys here: `secret_env`, `expiry_secs`, `open`")
        );
    }

    #[test]
    fn unknown_table_is_reported() {
        let err = parse_err("[mesh]\n[bogus]\n");
        let text = err.to_string();
        assert!(
            text.starts_with("team.toml:2:2: unknown key `bogus`"),
            "{text}"
        );
        assert!(text.contains("`mesh`, `member`"), "{text}");
    }

    #[test]
    fn unknown_key_in_array_of_tables() {
        let err = parse_err("[mesh]\n[[member]]\nname = \"ab\"\npush = true\n");
        assert!(
            err.to_string()
                .starts_with("team.toml:4:1: unknown key `push`"),
            "{err}"
        );
    }

    #[test]
    fn missing_key() {
        let err = parse_err("[[member]]\nname = \"ab\"\n");
        assert!(
            err.to_string().contains("missing key `mesh`"),
            "{}",
            err.to_string()
        );
        assert_eq!(err.hint(), Some("this table needs a `mesh` key"));
    }

    #[test]
    fn bad_values_are_located() {
        let err = parse_err("[mesh]\nopen = \"yes\"\n");
        assert_eq!(err.location(), Some(Location { line: 2, column: 8 }));
        assert!(err.to_string().contains("expected a boolean"), "{err}");

        let err = parse_err("[mesh]\nexpiry_secs = -1\n");
        assert_eq!(
            err.location(),
            Some(Location {
                line: 2,
                column: 15
            })
        );

        let err = parse_err("[mesh]\n[[member]]\nname = \"ab\"\naddrs = [\"1.2.3.4\"]\n");
        assert_eq!(
            err.location(),
            Some(Location {
                line: 4,
                column: 10
            })
        );
        assert!(err.to_string().contains("socket address"), "{err}");
    }

    #[test]
    fn hint_from_deserialize_impl() {
        let err = parse_err("[mesh]\n[[member]]\nname = \"abc\"\n");
        assert_eq!(
            err.to_string(),
            "team.toml:3:8: odd name `abc`\n  hint: add a letter"
        );
    }

    #[test]
    fn syntax_error_is_located() {
        let err = parse_err("[mesh]\nsecret_env = 'x\n");
        assert_eq!(err.location().map(|l| l.line), Some(2));
        assert!(err.to_string().starts_with("team.toml:2:"), "{err}");
    }

    #[test]
    fn duplicate_key_is_an_error() {
        let err = parse_err("[mesh]\nopen = true\nopen = false\n");
        assert_eq!(err.location().map(|l| l.line), Some(3), "{err}");
    }

    #[test]
    fn error_at_uses_spans() {
        let text = "[mesh]\nsecret_env = \"X\"\n";
        let src = ConfigSource::new(Path::new("a/b.toml"), text);
        let err = src.error_at(20..21, "nope", Some("fix it".into()));
        assert_eq!(err.to_string(), "a/b.toml:2:14: nope\n  hint: fix it");
        let err = src.error("whole file", None);
        assert_eq!(err.to_string(), "a/b.toml: whole file");
    }

    #[test]
    fn location_counts_characters_and_clamps() {
        let text = "ä = 1\nöö = 2\n";
        assert_eq!(Location::of(text, 0), Location { line: 1, column: 1 });
        // "öö" is 4 bytes; offset 5 is the space after it.
        assert_eq!(Location::of(text, 7 + 4), Location { line: 2, column: 3 });
        // inside a character: counts as that character
        assert_eq!(Location::of(text, 8), Location { line: 2, column: 1 });
        assert_eq!(Location::of(text, 1000), Location { line: 3, column: 1 });
        assert_eq!(Location::of("", 5), Location { line: 1, column: 1 });
    }

    #[test]
    fn load_reports_io_errors_with_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.toml");
        let err = load_toml::<File>(&path).expect_err("missing file");
        assert!(matches!(err, ConfigFileError::Io { .. }));
        assert_eq!(err.to_string(), format!("cannot read {}", path.display()));
    }

    #[test]
    fn load_reads_and_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("team.toml");
        fs::write(&path, "[mesh]\nopen = true\nx = 1\n").expect("write");
        let err = load_toml::<File>(&path).expect_err("unknown key");
        assert!(
            err.to_string()
                .starts_with(&format!("{}:3:1: unknown key `x`", path.display())),
            "{err}"
        );
    }

    #[test]
    fn invalid_utf8_is_located() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("team.toml");
        let mut f = fs::File::create(&path).expect("create");
        f.write_all(b"[mesh]\nsecret_env = \"a\xff\"\n")
            .expect("write");
        let err = read_config_text(&path).expect_err("bad utf-8");
        assert_eq!(
            err.location(),
            Some(Location {
                line: 2,
                column: 16
            })
        );
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "acb"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest("secert_env", &["secret_env", "open"]),
            Some("secret_env")
        );
        assert_eq!(closest("zzz", &["secret_env", "open"]), None);
    }

    #[test]
    fn unknown_variant_hint() {
        #[derive(Debug, Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Mode {
            Fast,
            Slow,
        }
        #[derive(Debug, Deserialize)]
        struct M {
            #[allow(dead_code)]
            mode: Mode,
        }
        let err = parse_toml::<M>("mode = \"medium\"\n", Path::new("m.toml")).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "m.toml:1:8: unknown value `medium`\n  hint: use one of `fast`, `slow`"
        );
    }
}
