//! A streaming NAR parser: reads exactly one NAR from a reader (never a byte past its end),
//! checks its structure, passes the bytes through to a writer and computes their SHA-256.
//!
//! The grammar and bounds are those of Nix's own parser (`parseDump` in Nix 2.3x): tags of
//! at most 32 bytes, entry names of at most 255 bytes that are not empty, `.`, `..` and hold
//! no `/` or NUL, strictly ascending within a directory, symlink targets of 1 to 4095 bytes
//! without NUL, zero padding, and at most 64 nested levels. A NAR that stock Nix would refuse
//! to unpack is refused here, before it is passed on as complete.
//!
//! ```no_run
//! # async fn f(mut daemon: tokio::io::BufReader<tokio::net::UnixStream>) -> Result<(), n2p_nix::nar::NarError> {
//! let mut sink = tokio::io::sink();
//! let summary = n2p_nix::nar::copy_nar(&mut daemon, &mut sink).await?;
//! println!("{} bytes, {}", summary.size, summary.hash);
//! # Ok(()) }
//! ```

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::NarHash;

/// Why a NAR was refused or could not be copied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NarError {
    /// Reading or writing failed (including an early end of the input).
    #[error("NAR stream: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a well-formed NAR.
    #[error("malformed NAR at byte {offset}: {reason}")]
    Malformed {
        /// Where.
        offset: u64,
        /// What.
        reason: String,
    },
}

/// What a copied NAR was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarSummary {
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub hash: NarHash,
}

/// The first string of every NAR.
const MAGIC: &[u8] = b"nix-archive-1";
/// Longest tag (`(`, `type`, `entry`, ...), as in Nix.
const MAX_TAG: usize = 32;
/// Longest directory entry name, as in Nix.
const MAX_NAME: usize = 255;
/// Longest symlink target, as in Nix.
const MAX_TARGET: usize = 4095;
/// Deepest directory nesting (the root node is at depth 0), as in Nix.
const MAX_DEPTH: usize = 64;
/// Small pieces (tags, names, small file contents) collect in one buffer of this size before
/// they are written, so a tree of many small files does not cost a write per tag.
const OUT_CAPACITY: usize = 64 * 1024;

/// Copies one NAR from `reader` to `writer`, validating it as it goes. Stops right after
/// the NAR's last byte; the reader may carry more data after it.
///
/// Every byte is written before the function returns `Ok` (the writer is flushed); on an
/// error, a prefix of the NAR may have been written: the caller must treat the output as
/// broken. An input that ends early is an [`std::io::ErrorKind::UnexpectedEof`] error.
pub async fn copy_nar<R, W>(reader: &mut R, writer: &mut W) -> Result<NarSummary, NarError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match copy_nar_until(reader, writer, None).await? {
        Copied::Whole(summary) => Ok(summary),
        Copied::Interrupted { offset } => Err(malformed(offset, "interrupted")),
    }
}

/// How [`copy_nar_until`] ended.
pub(crate) enum Copied {
    /// The whole NAR was copied.
    Whole(NarSummary),
    /// The stop word came where a string's length belonged (its 8 bytes are consumed).
    Interrupted {
        /// Where the stop word started.
        offset: u64,
    },
}

/// [`copy_nar`], except that `stop_word` where a tag, name or target length belongs (where
/// no valid NAR has it: those are at most 4095) ends the copy as [`Copied::Interrupted`]. A
/// nix-daemon that fails while it sends a NAR puts its `STDERR_ERROR` there.
pub(crate) async fn copy_nar_until<R, W>(
    reader: &mut R,
    writer: &mut W,
    stop_word: Option<u64>,
) -> Result<Copied, NarError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut copier = Copier {
        reader,
        writer,
        hasher: Sha256::new(),
        offset: 0,
        out: Vec::with_capacity(OUT_CAPACITY),
        token: Vec::with_capacity(MAX_TARGET + 1),
        stop_word,
        interrupted_at: None,
    };
    if let Err(error) = copier.nar().await {
        return match copier.interrupted_at {
            Some(offset) => Ok(Copied::Interrupted { offset }),
            None => Err(error),
        };
    }
    copier.flush_out().await?;
    copier.writer.flush().await?;
    Ok(Copied::Whole(NarSummary {
        size: copier.offset,
        hash: NarHash(copier.hasher.finalize().into()),
    }))
}

/// The parser's state: where it is in the input, the hash so far, pending output and the
/// last string read (all buffers reused for the whole NAR).
struct Copier<'a, R, W> {
    reader: &'a mut R,
    writer: &'a mut W,
    hasher: Sha256,
    /// Bytes consumed so far.
    offset: u64,
    /// Consumed bytes not yet written.
    out: Vec<u8>,
    /// The last string read.
    token: Vec<u8>,
    /// See [`copy_nar_until`].
    stop_word: Option<u64>,
    /// Where the stop word was seen.
    interrupted_at: Option<u64>,
}

/// A string for an error message.
fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

impl<R, W> Copier<'_, R, W>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// The whole NAR: the magic and the root node, walking directories with an explicit
    /// stack (one reused "previous name" buffer per level) instead of recursion.
    async fn nar(&mut self) -> Result<(), NarError> {
        let start = self.offset;
        let len = self.read_u64().await?;
        self.check_stop_word(start, len)?;
        if len != MAGIC.len() as u64 {
            return Err(malformed(start, "not a NAR (bad magic)"));
        }
        self.read_token_body(MAGIC.len()).await?;
        if self.token != MAGIC {
            return Err(malformed(start, "not a NAR (bad magic)"));
        }
        // prev_names[d] is the last entry name seen in the open directory at depth d.
        let mut prev_names: Vec<Vec<u8>> = Vec::new();
        let mut depth = 0usize;
        'node: loop {
            if depth >= MAX_DEPTH {
                return Err(malformed(
                    self.offset,
                    format!("directories nested deeper than {MAX_DEPTH}"),
                ));
            }
            if self.node().await? {
                if prev_names.len() <= depth {
                    prev_names.push(Vec::new());
                }
                prev_names[depth].clear();
                depth += 1;
            } else if depth > 0 {
                self.expect(b")").await?; // closes the entry holding this node
            } else {
                return Ok(());
            }
            // Inside the open directory at depth - 1: entries until its ")".
            loop {
                let at = self.offset;
                self.read_token(MAX_TAG).await?;
                match self.token.as_slice() {
                    b")" => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(());
                        }
                        self.expect(b")").await?; // closes the entry holding this directory
                    }
                    b"entry" => {
                        self.expect(b"(").await?;
                        self.expect(b"name").await?;
                        let at = self.offset;
                        self.read_token(MAX_NAME).await?;
                        let name = self.token.as_slice();
                        if name.is_empty()
                            || name == b"."
                            || name == b".."
                            || name.contains(&b'/')
                            || name.contains(&0)
                        {
                            return Err(malformed(
                                at,
                                format!("invalid entry name {}", show(name)),
                            ));
                        }
                        let prev = &mut prev_names[depth - 1];
                        if !prev.is_empty() && name <= prev.as_slice() {
                            return Err(malformed(
                                at,
                                format!(
                                    "entry {} does not sort after {} (unsorted or duplicate)",
                                    show(name),
                                    show(prev)
                                ),
                            ));
                        }
                        prev.clear();
                        prev.extend_from_slice(name);
                        self.expect(b"node").await?;
                        continue 'node;
                    }
                    other => {
                        return Err(malformed(
                            at,
                            format!("expected \"entry\" or \")\", got {}", show(other)),
                        ));
                    }
                }
            }
        }
    }

    /// One node up to its closing ")" for files and symlinks (returns false), or up to its
    /// first entry for a directory (returns true).
    async fn node(&mut self) -> Result<bool, NarError> {
        self.expect(b"(").await?;
        self.expect(b"type").await?;
        let at = self.offset;
        self.read_token(MAX_TAG).await?;
        match self.token.as_slice() {
            b"regular" => {
                let at = self.offset;
                self.read_token(MAX_TAG).await?;
                if self.token == b"executable" {
                    self.expect(b"").await?;
                    self.expect(b"contents").await?;
                } else if self.token != b"contents" {
                    return Err(malformed(
                        at,
                        format!("expected \"contents\", got {}", show(&self.token)),
                    ));
                }
                self.contents().await?;
                self.expect(b")").await?;
                Ok(false)
            }
            b"symlink" => {
                self.expect(b"target").await?;
                let at = self.offset;
                self.read_token(MAX_TARGET).await?;
                if self.token.is_empty() || self.token.contains(&0) {
                    return Err(malformed(
                        at,
                        format!("invalid symlink target {}", show(&self.token)),
                    ));
                }
                self.expect(b")").await?;
                Ok(false)
            }
            b"directory" => Ok(true),
            other => Err(malformed(at, format!("unknown file type {}", show(other)))),
        }
    }

    /// A file's contents: length, bytes (streamed in the reader's chunks), padding.
    async fn contents(&mut self) -> Result<(), NarError> {
        let len = self.read_u64().await?;
        let mut left = len;
        while left > 0 {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                return Err(early_eof(self.offset));
            }
            let n = usize::try_from(left).map_or(chunk.len(), |left| left.min(chunk.len()));
            let chunk = &chunk[..n];
            self.hasher.update(chunk);
            if self.out.len() + n <= OUT_CAPACITY {
                self.out.extend_from_slice(chunk);
            } else {
                if !self.out.is_empty() {
                    self.writer.write_all(&self.out).await?;
                    self.out.clear();
                }
                self.writer.write_all(chunk).await?;
            }
            self.reader.consume(n);
            self.offset += n as u64;
            left -= n as u64;
        }
        self.padding(len).await
    }

    /// Reads a string that must equal `expected`.
    async fn expect(&mut self, expected: &[u8]) -> Result<(), NarError> {
        let at = self.offset;
        self.read_token(MAX_TAG).await?;
        if self.token != expected {
            return Err(malformed(
                at,
                format!("expected {}, got {}", show(expected), show(&self.token)),
            ));
        }
        Ok(())
    }

    /// Reads a string of at most `max` bytes into `self.token`.
    async fn read_token(&mut self, max: usize) -> Result<(), NarError> {
        let at = self.offset;
        let len = self.read_u64().await?;
        self.check_stop_word(at, len)?;
        match usize::try_from(len) {
            Ok(len) if len <= max => self.read_token_body(len).await,
            _ => Err(malformed(
                at,
                format!("string of {len} bytes where at most {max} are allowed"),
            )),
        }
    }

    /// Ends the copy if `len`, read at `at`, is the stop word.
    fn check_stop_word(&mut self, at: u64, len: u64) -> Result<(), NarError> {
        if self.stop_word == Some(len) {
            self.interrupted_at = Some(at);
            return Err(malformed(at, "interrupted"));
        }
        Ok(())
    }

    /// Reads the `len` bytes and the padding of a string into `self.token`.
    async fn read_token_body(&mut self, len: usize) -> Result<(), NarError> {
        let mut token = std::mem::take(&mut self.token);
        token.resize(len, 0);
        let read = self.read_exact(&mut token).await;
        self.token = token;
        read?;
        self.padding(len as u64).await
    }

    /// Reads the zero padding after a string of `len` bytes.
    async fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let pad = ((8 - len % 8) % 8) as usize;
        let mut bytes = [0u8; 8];
        let at = self.offset;
        self.read_exact(&mut bytes[..pad]).await?;
        if bytes.iter().any(|&b| b != 0) {
            return Err(malformed(at, "non-zero padding"));
        }
        Ok(())
    }

    /// Reads a little-endian u64.
    async fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut bytes = [0u8; 8];
        self.read_exact(&mut bytes).await?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Fills `dst` from the reader, hashing the bytes and queueing them for the writer.
    async fn read_exact(&mut self, dst: &mut [u8]) -> Result<(), NarError> {
        let mut filled = 0;
        while filled < dst.len() {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                return Err(early_eof(self.offset));
            }
            let n = chunk.len().min(dst.len() - filled);
            dst[filled..filled + n].copy_from_slice(&chunk[..n]);
            self.reader.consume(n);
            filled += n;
            self.offset += n as u64;
        }
        self.hasher.update(&*dst);
        self.out.extend_from_slice(dst);
        if self.out.len() >= OUT_CAPACITY {
            self.flush_out().await?;
        }
        Ok(())
    }

    /// Writes the queued bytes.
    async fn flush_out(&mut self) -> Result<(), NarError> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}

fn malformed(offset: u64, reason: impl Into<String>) -> NarError {
    NarError::Malformed {
        offset,
        reason: reason.into(),
    }
}

fn early_eof(offset: u64) -> NarError {
    NarError::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("the NAR ends early, after {offset} bytes"),
    ))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, BufReader};

    use super::*;

    const TREE: &[u8] = include_bytes!("../tests/fixtures/tree.nar");
    const FILE: &[u8] = include_bytes!("../tests/fixtures/file.nar");
    const SYMLINK: &[u8] = include_bytes!("../tests/fixtures/symlink.nar");

    fn hex(text: &str) -> NarHash {
        let bytes = data_encoding::HEXLOWER
            .decode(text.as_bytes())
            .expect("hex in the test");
        NarHash(bytes.try_into().expect("32 bytes"))
    }

    /// Parses `input` through a reader with `capacity`-byte chunks; returns the result, what
    /// was written and what is left unread.
    async fn run(
        input: &[u8],
        capacity: usize,
    ) -> (Result<NarSummary, NarError>, Vec<u8>, Vec<u8>) {
        let mut reader = BufReader::with_capacity(capacity, input);
        let mut written = Vec::new();
        let result = copy_nar(&mut reader, &mut written).await;
        let mut rest = Vec::new();
        reader
            .read_to_end(&mut rest)
            .await
            .expect("reading a slice");
        (result, written, rest)
    }

    async fn refused(input: &[u8]) -> NarError {
        match run(input, 8192).await.0 {
            Ok(summary) => panic!("a bad NAR was accepted: {summary:?}"),
            Err(error) => error,
        }
    }

    async fn refused_as_malformed(input: &[u8], reason_part: &str) {
        match refused(input).await {
            NarError::Malformed { reason, .. } => assert!(
                reason.contains(reason_part),
                "refused for {reason:?}, expected {reason_part:?}"
            ),
            other => panic!("expected a malformed NAR, got {other}"),
        }
    }

    #[tokio::test]
    async fn recorded_nars_copy_whole_with_the_hash_nix_computes() {
        // nix-hash --type sha256 (base16) of what was dumped; see tests/fixtures/README.md.
        let cases = [
            (
                TREE,
                "cdc22848c921bd4a85f4197f79920319f7e90482c1de5c86e6da445b5a7edbb0",
            ),
            (
                FILE,
                "5e0accf02cedede5e4119ffa15e79e79a5fb1fb9bc43c3d434f33227a14477a0",
            ),
            (
                SYMLINK,
                "803dd03229da435730870cd90988ef09c191399a63dab9cdb522a930a9005298",
            ),
        ];
        for (nar, hash) in cases {
            // 1-byte chunks split every field; 8192 takes the NAR in one chunk.
            for capacity in [1, 3, 8, 100, 8192] {
                let (result, written, rest) = run(nar, capacity).await;
                let summary = result.expect("a NAR from nix-store --dump");
                assert_eq!(summary.size, nar.len() as u64);
                assert_eq!(summary.hash, hex(hash));
                assert_eq!(written, nar, "the output is the input");
                assert!(rest.is_empty());
            }
        }
        // And nix-hash --type sha256 --base32 of the tree.
        let (result, _, _) = run(TREE, 8192).await;
        assert_eq!(
            result.expect("valid").hash.nix32_digest(),
            "1c6vgrd5ni6sws35rpn1h82fkxqr0f97jzqryj2lmg91r542ihnd"
        );
    }

    #[tokio::test]
    async fn bytes_after_the_nar_are_left_unread() {
        let trailer = b"\x73\x74\x6c\x61 next reply";
        for nar in [TREE, FILE, SYMLINK] {
            let input = [nar, trailer].concat();
            for capacity in [1, 5, 8192] {
                let (result, written, rest) = run(&input, capacity).await;
                assert_eq!(result.expect("valid").size, nar.len() as u64);
                assert_eq!(written, nar);
                assert_eq!(rest, trailer, "capacity {capacity}");
            }
        }
    }

    #[tokio::test]
    async fn every_truncation_is_an_early_eof() {
        for nar in [TREE, FILE, SYMLINK] {
            for len in 0..nar.len() {
                match refused(&nar[..len]).await {
                    NarError::Io(error) => {
                        assert_eq!(
                            error.kind(),
                            std::io::ErrorKind::UnexpectedEof,
                            "prefix {len}"
                        )
                    }
                    other => panic!("prefix of {len} bytes: {other}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn large_contents_stream_through_in_chunks() {
        let contents: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let nar = Nar::new().regular(false, &contents).finish();
        let (result, written, _) = run(&nar, 4096).await;
        let summary = result.expect("valid");
        assert_eq!(written, nar);
        assert_eq!(summary.hash, NarHash(Sha256::digest(&nar).into()));
    }

    #[tokio::test]
    async fn a_bad_magic_is_refused() {
        let mut nar = TREE.to_vec();
        nar[8] = b'N';
        refused_as_malformed(&nar, "bad magic").await;
        let mut nar = TREE.to_vec();
        nar[0] = 12;
        refused_as_malformed(&nar, "bad magic").await;
        refused_as_malformed(&[0xff; 64], "bad magic").await;
    }

    #[tokio::test]
    async fn non_zero_padding_is_refused() {
        // The magic's 13 bytes are followed by 3 bytes of padding at 21..24.
        for at in 21..24 {
            let mut nar = TREE.to_vec();
            nar[at] = 1;
            refused_as_malformed(&nar, "padding").await;
        }
        // The padding of a file's contents (the last "contents" in file.nar).
        let mut nar = FILE.to_vec();
        let end = nar.len() - 16; // before the closing ")" string
        nar[end - 1] = b'x';
        refused_as_malformed(&nar, "padding").await;
    }

    #[tokio::test]
    async fn directory_entries_must_be_strictly_sorted() {
        let ok = Nar::new()
            .dir(&[b"a", b"b"], |nar| nar.regular(false, b""))
            .finish();
        run(&ok, 8192).await.0.expect("a sorted directory");
        for names in [&[&b"b"[..], b"a"], &[b"a", b"a"], &[b"ab", b"a"]] {
            let nar = Nar::new()
                .dir(names, |nar| nar.regular(false, b"x"))
                .finish();
            refused_as_malformed(&nar, "does not sort after").await;
        }
    }

    #[tokio::test]
    async fn bad_entry_names_are_refused() {
        let long = [b'n'; 256];
        for name in [&b""[..], b".", b"..", b"a/b", b"a\0b", &long] {
            let nar = Nar::new()
                .dir(&[name], |nar| nar.regular(false, b""))
                .finish();
            assert!(
                matches!(refused(&nar).await, NarError::Malformed { .. }),
                "name {name:?}"
            );
        }
        let ok = Nar::new()
            .dir(&[&[b'n'; 255]], |nar| nar.regular(false, b""))
            .finish();
        run(&ok, 8192).await.0.expect("a 255-byte name");
    }

    #[tokio::test]
    async fn unknown_types_tags_and_markers_are_refused() {
        let mut nar = Nar::new();
        nar.strs(&[b"(", b"type", b"fifo", b")"]);
        refused_as_malformed(&nar.finish(), "unknown file type").await;

        let mut nar = Nar::new();
        nar.strs(&[
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"yes",
            b"contents",
        ]);
        refused_as_malformed(&nar.finish(), "expected").await;

        let mut nar = Nar::new();
        nar.strs(&[b"(", b"kind", b"regular"]);
        refused_as_malformed(&nar.finish(), "expected").await;

        let mut nar = Nar::new();
        nar.strs(&[b"(", b"type", b"directory", b"file", b")"]);
        refused_as_malformed(&nar.finish(), "expected \"entry\"").await;

        // A tag longer than any Nix tag is refused by its length alone.
        let mut nar = Nar::new();
        nar.strs(&[b"(", b"type"]);
        nar.0.extend_from_slice(&(1u64 << 40).to_le_bytes());
        refused_as_malformed(&nar.0, "at most").await;
    }

    #[tokio::test]
    async fn bad_symlink_targets_are_refused() {
        for target in [&b""[..], b"a\0b", &[b't'; 4096]] {
            let mut nar = Nar::new();
            nar.strs(&[b"(", b"type", b"symlink", b"target", target, b")"]);
            assert!(matches!(
                refused(&nar.finish()).await,
                NarError::Malformed { .. }
            ));
        }
    }

    #[tokio::test]
    async fn nesting_is_bounded_as_in_nix() {
        fn nested(levels: usize) -> Vec<u8> {
            let mut nar = Nar::new();
            for _ in 0..levels {
                nar.strs(&[
                    b"(",
                    b"type",
                    b"directory",
                    b"entry",
                    b"(",
                    b"name",
                    b"d",
                    b"node",
                ]);
            }
            nar.regular(false, b"");
            for _ in 0..levels {
                nar.strs(&[b")", b")"]);
            }
            nar.finish()
        }
        run(&nested(63), 8192).await.0.expect("a node at depth 63");
        refused_as_malformed(&nested(64), "nested deeper").await;
    }

    #[tokio::test]
    async fn a_stop_word_for_a_string_length_interrupts_the_copy() {
        const STOP: u64 = 0x6378_7470;
        // Nix 2.8's daemon sends the magic, then its error instead of the root node.
        let input = [&TREE[..24], &STOP.to_le_bytes(), b"error..."].concat();
        let mut reader = &input[..];
        match copy_nar_until(&mut reader, &mut tokio::io::sink(), Some(STOP)).await {
            Ok(Copied::Interrupted { offset: 24 }) => assert_eq!(reader, b"error..."),
            Ok(_) => panic!("not interrupted at 24"),
            Err(error) => panic!("{error}"),
        }
        // The same word as a file's size is a size.
        let mut nar = Nar::new();
        nar.strs(&[b"(", b"type", b"regular", b"contents"]);
        nar.0.extend_from_slice(&STOP.to_le_bytes());
        let mut reader = &nar.0[..];
        let result = copy_nar_until(&mut reader, &mut tokio::io::sink(), Some(STOP)).await;
        assert!(matches!(result, Err(NarError::Io(_))), "an early end");
    }

    /// A NAR written by hand, for malformed cases.
    struct Nar(Vec<u8>);

    impl Nar {
        fn new() -> Self {
            let mut nar = Self(Vec::new());
            nar.str(MAGIC);
            nar
        }
        fn str(&mut self, s: &[u8]) -> &mut Self {
            self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
            self.0.extend_from_slice(s);
            self.0.resize(self.0.len().next_multiple_of(8), 0);
            self
        }
        fn strs(&mut self, strings: &[&[u8]]) -> &mut Self {
            for s in strings {
                self.str(s);
            }
            self
        }
        fn regular(&mut self, executable: bool, contents: &[u8]) -> &mut Self {
            self.strs(&[b"(", b"type", b"regular"]);
            if executable {
                self.strs(&[b"executable", b""]);
            }
            self.strs(&[b"contents", contents, b")"])
        }
        fn dir(
            &mut self,
            names: &[&[u8]],
            mut node: impl FnMut(&mut Self) -> &mut Self,
        ) -> &mut Self {
            self.strs(&[b"(", b"type", b"directory"]);
            for name in names {
                self.strs(&[b"entry", b"(", b"name", name, b"node"]);
                node(self);
                self.str(b")");
            }
            self.str(b")")
        }
        fn finish(&mut self) -> Vec<u8> {
            std::mem::take(&mut self.0)
        }
    }
}
