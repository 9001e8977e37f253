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
//! The text is parsed into toml's spanned document tree, which a small deserializer of ours
//! feeds to serde. Its error type keeps what serde reports as data (an unknown key and the
//! valid ones, a missing key, an unknown value and the allowed ones, the expected and the
//! found type) together with the byte span of the key or value it is about, so messages,
//! hints and locations never depend on serde's or toml's wording.
//!
//! Checks that serde cannot express (duplicates, cross-field rules) read the file through a
//! [`ConfigSource`], deserialize the values they check as [`Spanned`], and report with
//! [`ConfigSource::error_at`] so their errors look the same.

mod de;

use std::{
    fmt, fs, io,
    marker::PhantomData,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

use self::de::Node;

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
    #[error(
        "{}{}: {message}{}",
        path.display(),
        location.map(|l| format!(":{l}")).unwrap_or_default(),
        hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default()
    )]
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
        // A syntax error: toml's parser describes it (it is not serde's), we place it.
        let root = DeTable::parse(self.text)
            .map_err(|e| self.invalid(e.span(), e.message().to_owned(), None))?;
        let root = Node(Spanned::new(root.span(), DeValue::Table(root.into_inner())));
        root.seed(PhantomData::<T>)
            .map_err(|e| self.invalid(e.span, e.message, e.hint))
    }

    /// An error at the byte span `span` (as given by [`Spanned::span`]).
    pub fn error_at(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigFileError {
        self.invalid(Some(span), message.into(), hint)
    }

    /// An error about the file as a whole.
    pub fn error(&self, message: impl Into<String>, hint: Option<String>) -> ConfigFileError {
        self.invalid(None, message.into(), hint)
    }

    fn invalid(
        &self,
        span: Option<Range<usize>>,
        message: String,
        hint: Option<String>,
    ) -> ConfigFileError {
        ConfigFileError::Invalid {
            path: self.path.to_owned(),
            location: span.map(|span| Location::of(self.text, span.start)),
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
///
/// (serde's `custom` takes only a message, so the hint travels after a separator of ours.)
pub fn de_error_with_hint<E: serde::de::Error>(message: impl fmt::Display, hint: &str) -> E {
    E::custom(format_args!("{message}{HINT_MARKER}{hint}"))
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

    #[test]
    fn wrong_type_names_expected_and_found() {
        let err = parse_err("[mesh]\nopen = \"yes\"\n");
        assert_eq!(
            err.to_string(),
            "team.toml:2:8: expected a boolean, found string \"yes\""
        );
        let err = parse_err("[mesh]\nexpiry_secs = -1\n");
        assert_eq!(
            err.to_string(),
            "team.toml:2:15: invalid value: expected u64, found integer `-1`"
        );
        let err = parse_err("mesh = 3\n");
        assert_eq!(
            err.to_string(),
            "team.toml:1:8: expected struct Mesh, found integer `3`"
        );
        let err = parse_err("[mesh]\nexpiry_secs = 1979-05-27\n");
        assert_eq!(
            err.location(),
            Some(Location {
                line: 2,
                column: 15
            })
        );
        assert!(err.to_string().contains("found a date-time"), "{err}");
        let err = parse_err("[mesh]\nexpiry_secs = 99999999999999999999\n");
        assert!(err.to_string().starts_with("team.toml:2:15: "), "{err}");
    }

    #[test]
    fn missing_key_is_located_at_its_table() {
        let err = parse_err("[mesh]\n[[member]]\naddrs = []\n");
        assert_eq!(
            err.to_string(),
            "team.toml:2:1: missing key `name`\n  hint: this table needs a `name` key"
        );
        let err = parse_err("");
        assert_eq!(err.location(), Some(Location { line: 1, column: 1 }));
        assert_eq!(err.hint(), Some("this table needs a `mesh` key"));
    }

    #[test]
    fn unknown_key_with_suggestion_in_inline_table_and_nowhere_to_go() {
        let err = parse_err("mesh = { open = true, opne = false }\n");
        assert_eq!(
            err.to_string(),
            "team.toml:1:23: unknown key `opne`\n  hint: did you mean `open`? valid keys \
             here: `secret_env`, `expiry_secs`, `open`"
        );

        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Empty {}
        let err = parse_toml::<Empty>("\n  x = 1\n", Path::new("e.toml")).expect_err("no keys");
        assert_eq!(
            err.to_string(),
            "e.toml:2:3: unknown key `x`\n  hint: no keys are allowed here"
        );
    }

    #[test]
    fn syntax_errors_come_from_the_parser_with_their_place() {
        let err = parse_err("[mesh]\nopen = \n");
        assert_eq!(err.location().map(|l| l.line), Some(2), "{err}");
        assert_eq!(err.hint(), None);
        let err = parse_err("[mesh\n");
        assert!(err.to_string().starts_with("team.toml:1:"), "{err}");
        let err = parse_err("[mesh]\nopen = true\n[mesh]\n");
        assert_eq!(err.location().map(|l| l.line), Some(3), "{err}");
    }

    #[test]
    fn errors_inside_arrays_point_at_the_element() {
        // A hint from a `Deserialize` impl, two tables down, in the second element.
        #[derive(Debug, Deserialize)]
        struct Names {
            #[allow(dead_code)]
            names: Vec<Even>,
        }
        let err = parse_toml::<Names>("names = [\"ab\",\n  \"abc\"]\n", Path::new("n.toml"))
            .expect_err("odd");
        assert_eq!(
            err.to_string(),
            "n.toml:2:3: odd name `abc`\n  hint: add a letter"
        );
    }

    #[test]
    fn spans_and_values_pass_through() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct S {
            name: Spanned<String>,
            list: Option<Spanned<Vec<Spanned<u32>>>>,
            ratio: f64,
            hex: u8,
            big: u64,
            path: PathBuf,
            #[serde(default)]
            absent: Option<bool>,
        }
        let text = "name = \"x\"\nlist = [1, 2]\nratio = 0.5\nhex = 0xff\nbig = 18446744073709551615\npath = 'a/b'\n";
        let s: S = parse_toml(text, Path::new("s.toml")).expect("valid");
        assert_eq!(s.name.get_ref(), "x");
        assert_eq!(&text[s.name.span()], "\"x\"");
        let list = s.list.expect("list");
        assert_eq!(&text[list.span()], "[1, 2]");
        assert_eq!(*list.get_ref()[1].get_ref(), 2);
        assert_eq!(&text[list.get_ref()[1].span()], "2");
        assert_eq!(s.ratio, 0.5);
        assert_eq!(s.hex, 255);
        assert_eq!(s.big, u64::MAX);
        assert_eq!(s.path, Path::new("a/b"));
        assert_eq!(s.absent, None);

        let err = parse_toml::<S>(
            "name = \"x\"\nratio = 1\nhex = 256\nbig = 1\npath = ''\n",
            Path::new("s.toml"),
        )
        .expect_err("hex out of range");
        assert_eq!(
            err.location(),
            Some(Location { line: 3, column: 7 }),
            "{err}"
        );
    }
}
