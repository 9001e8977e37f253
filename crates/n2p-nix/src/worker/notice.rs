//! Telling a Nix client, in its own protocol, that the connection to its daemon failed:
//! where a forwarder stands in the daemon's messages, without doing any I/O.
//!
//! A forwarder between a Nix client and a daemon that loses the daemon half-way can only
//! close the client's connection, and a closed connection is not always an error to Nix.
//! Nix 2.8 uploads on one thread while another reads the daemon's messages; an end of file
//! seen by the reader is handed to the uploader, whose `Source::drainInto` catches exactly
//! that exception as the end of *its own input* — and `nix copy` exits 0 with nothing
//! stored. A `STDERR_ERROR` message is an error to every Nix version, and the client shows
//! its text. It can only be given where the client reads the daemon's messages of an
//! operation ("stderr"), at a message boundary; anywhere else (in a reply, mid-message)
//! the bytes would be read as something else.
//!
//! [`FailureNotice`] follows the daemon's side after the handshake: after the client sends
//! an operation, the daemon's stderr messages until `STDERR_LAST` or `STDERR_ERROR`, then
//! the reply, whose length only the operation knows, until the client sends its next
//! operation. A Nix client sends nothing between `STDERR_LAST` and reading the whole reply,
//! so bytes from the client after the end of the work always start a new operation. The
//! forwarder counts the client's bytes (counted before they are sent on, so before the
//! daemon can answer them) and passes the count with each chunk of the daemon's bytes.
//! (Daemons of Nix 2.4 and 2.5 end the work of a framed upload before reading its last,
//! empty frame; their clients send that frame with the one before, so in practice it is
//! counted first too. Were it not, a daemon closing right after such an upload would be
//! taken for one that failed the client.)

use super::minor;
use super::stderr::{
    STDERR_ERROR, STDERR_LAST, STDERR_NEXT, STDERR_READ, STDERR_RESULT, STDERR_START_ACTIVITY,
    STDERR_STOP_ACTIVITY, STDERR_WRITE,
};

/// Most fields of an activity or traces of an error followed (real ones have a few).
const MAX_ITEMS: u64 = 256;

/// Where one forwarded connection stands, after its handshake.
#[derive(Debug, Clone)]
pub struct FailureNotice {
    version: u64,
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    /// The work of the last operation ended (or the handshake did) when the client had
    /// sent this many bytes; the daemon's bytes since are its reply.
    Idle { client_sent: u64 },
    /// The daemon's messages of an operation, framed this far.
    Stderr(Messages),
    /// The daemon sent something this module does not frame: nothing is ever given.
    Lost,
}

impl FailureNotice {
    /// Follows a connection whose handshake just ended (with its `STDERR_LAST`), on the
    /// protocol `version` both sides use (the wire form, `1 << 8 | minor`); the client's
    /// bytes are counted from there.
    pub fn after_handshake(version: u64) -> Self {
        Self {
            version,
            state: State::Idle { client_sent: 0 },
        }
    }

    /// Takes the next `bytes` the daemon sent, read when the client had sent `client_sent`
    /// bytes in all (counted before they were passed on).
    pub fn daemon_sent(&mut self, mut bytes: &[u8], client_sent: u64) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Lost => return,
                State::Idle {
                    client_sent: at_end,
                } => {
                    if client_sent == *at_end {
                        // Reply bytes: the client has not sent its next operation yet.
                        return;
                    }
                    self.state = State::Stderr(Messages::new(self.version));
                }
                State::Stderr(messages) => match messages.take(&mut bytes) {
                    Ok(Framed::More) => {}
                    Ok(Framed::WorkEnded) => self.state = State::Idle { client_sent },
                    Err(Unframed) => {
                        tracing::debug!(
                            "the daemon sent a message not framed here: a failure on this \
                             connection can no longer be told to its client"
                        );
                        self.state = State::Lost;
                    }
                },
            }
        }
    }

    /// Whether the client, having sent `client_sent` bytes, waits for the end of an
    /// operation's work: it sent the operation and the daemon has not ended the work. A
    /// daemon that closes the connection then has failed the client, whereas one that
    /// closes between operations may just be done. False where this is not known.
    pub fn in_operation(&self, client_sent: u64) -> bool {
        match &self.state {
            State::Idle {
                client_sent: at_end,
            } => client_sent > *at_end,
            State::Stderr(_) => true,
            State::Lost => false,
        }
    }

    /// The `STDERR_ERROR` message with `text` to give the client now, if the client, having
    /// sent `client_sent` bytes, is [`Self::in_operation`] and the last byte it got ended a
    /// message; None where the message would be read as something else.
    pub fn message(&self, client_sent: u64, text: &str) -> Option<Vec<u8>> {
        let at_boundary = match &self.state {
            State::Stderr(messages) => messages.at_boundary(),
            _ => true,
        };
        (self.in_operation(client_sent) && at_boundary).then(|| error_message(self.version, text))
    }
}

/// A `STDERR_ERROR` message with `text`, in the form of protocol `version`: the structured
/// error since 1.26 (level error, no position, no traces), a text and exit status 1 before.
pub fn error_message(version: u64, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + text.len());
    put_u64(&mut out, STDERR_ERROR);
    if minor(version) >= 26 {
        put_text(&mut out, "Error");
        put_u64(&mut out, 0);
        put_text(&mut out, "Error");
        put_text(&mut out, text);
        put_u64(&mut out, 0);
        put_u64(&mut out, 0);
    } else {
        put_text(&mut out, text);
        put_u64(&mut out, 1);
    }
    out
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_u64(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
    out.resize(out.len() + (8 - text.len() % 8) % 8, 0);
}

/// What comes next in a message.
#[derive(Debug, Clone, Copy)]
enum Item {
    /// A number, skipped.
    Word,
    /// A string: its length, then its bytes padded to a multiple of 8.
    Text,
    /// A count of activity fields, then the fields.
    Fields,
    /// A field's type, then a number or a string.
    Field,
    /// A count of an error's traces, then each trace (a position, a string).
    Traces,
    /// An error's or trace's position: always 0.
    NoPosition,
}

/// The daemon's stderr messages, framed incrementally.
#[derive(Debug, Clone)]
struct Messages {
    /// The protocol version, which decides the form of `STDERR_ERROR`.
    version: u64,
    /// The word being read, and how much of it has arrived.
    word: [u8; 8],
    filled: usize,
    /// String bytes (and padding) still to skip.
    skip: u64,
    /// The rest of the current message, last item first; empty between messages.
    rest: Vec<Item>,
    /// The current message is `STDERR_ERROR`: its end ends the work.
    error: bool,
}

/// How far [`Messages::take`] got.
enum Framed {
    /// All bytes taken, within the work.
    More,
    /// The work ended (`STDERR_LAST`, or the end of `STDERR_ERROR`); the rest of the bytes
    /// is left.
    WorkEnded,
}

/// The bytes are not messages this module frames.
struct Unframed;

impl Messages {
    fn new(version: u64) -> Self {
        Self {
            version,
            word: [0; 8],
            filled: 0,
            skip: 0,
            rest: Vec::new(),
            error: false,
        }
    }

    fn at_boundary(&self) -> bool {
        self.filled == 0 && self.skip == 0 && self.rest.is_empty()
    }

    /// Frames from the start of `bytes`, advancing it past what was taken.
    fn take(&mut self, bytes: &mut &[u8]) -> Result<Framed, Unframed> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(bytes.len(), |s| s.min(bytes.len()));
                self.skip -= n as u64;
                *bytes = &bytes[n..];
            } else {
                let n = (8 - self.filled).min(bytes.len());
                self.word[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                self.filled += n;
                *bytes = &bytes[n..];
                if self.filled < 8 {
                    break;
                }
                self.filled = 0;
                let word = u64::from_le_bytes(self.word);
                if self.word_read(word)? {
                    return Ok(Framed::WorkEnded);
                }
            }
            if self.error && self.at_boundary() {
                return Ok(Framed::WorkEnded);
            }
        }
        Ok(Framed::More)
    }

    /// Takes one whole word; true if it ended the work.
    fn word_read(&mut self, word: u64) -> Result<bool, Unframed> {
        use Item::*;
        let Some(item) = self.rest.pop() else {
            let rest: &[Item] = match word {
                STDERR_LAST => return Ok(true),
                STDERR_NEXT | STDERR_WRITE => &[Text],
                STDERR_READ | STDERR_STOP_ACTIVITY => &[Word],
                STDERR_START_ACTIVITY => &[Word, Fields, Text, Word, Word, Word],
                STDERR_RESULT => &[Fields, Word, Word],
                STDERR_ERROR => {
                    self.error = true;
                    if minor(self.version) >= 26 {
                        // Type, level, name, text, position, traces (pushed last first).
                        &[Traces, NoPosition, Text, Text, Word, Text]
                    } else {
                        &[Word, Text]
                    }
                }
                _ => return Err(Unframed),
            };
            self.rest.extend_from_slice(rest);
            return Ok(false);
        };
        match item {
            Word => {}
            Text => {
                let padded = word.checked_add(7).ok_or(Unframed)? & !7;
                self.skip = padded;
            }
            Fields => self.push_items(word, &[Field])?,
            Field => self.rest.push(match word {
                0 => Word,
                1 => Text,
                _ => return Err(Unframed),
            }),
            Traces => self.push_items(word, &[Text, NoPosition])?,
            NoPosition if word == 0 => {}
            NoPosition => return Err(Unframed),
        }
        Ok(false)
    }

    /// Pushes `count` times the `each` items (last first).
    fn push_items(&mut self, count: u64, each: &[Item]) -> Result<(), Unframed> {
        if count > MAX_ITEMS {
            return Err(Unframed);
        }
        for _ in 0..count {
            self.rest.extend_from_slice(each);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::WorkerError;

    /// Protocol 1.34 (Nix 2.8) and 1.25 (before the structured error).
    const NEW: u64 = 0x122;
    const OLD: u64 = 0x119;

    fn words(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn text(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_text(&mut out, text);
        out
    }

    /// A log line, an activity with a number and a string field, its result and its end:
    /// one message each.
    fn messages() -> Vec<Vec<u8>> {
        let mut start = words(&[STDERR_START_ACTIVITY, 7, 3, 100]);
        start.extend(text("copying path"));
        start.extend(words(&[2, 0, 42, 1]));
        start.extend(text("/nix/store/x"));
        start.extend(words(&[0]));
        let mut result = words(&[STDERR_RESULT, 7, 105, 1, 1]);
        result.extend(text("12345"));
        let mut next = words(&[STDERR_NEXT]);
        next.extend(text("a log line\n"));
        vec![next, start, result, words(&[STDERR_STOP_ACTIVITY, 7])]
    }

    /// Feeds `bytes` one at a time, asserting a message may be given exactly at the
    /// `boundaries` (offsets into `bytes`, after the byte at offset - 1).
    fn feed_checking(notice: &mut FailureNotice, bytes: &[u8], sent: u64, boundaries: &[usize]) {
        for (at, byte) in bytes.iter().enumerate() {
            notice.daemon_sent(std::slice::from_ref(byte), sent);
            let given = notice.message(sent, "x").is_some();
            assert_eq!(
                given,
                boundaries.contains(&(at + 1)),
                "after {} of {} bytes",
                at + 1,
                bytes.len()
            );
        }
    }

    #[test]
    fn a_message_is_given_only_between_the_daemons_messages_of_an_operation() {
        let mut notice = FailureNotice::after_handshake(NEW);
        assert!(
            notice.message(0, "x").is_none(),
            "no operation sent: the client reads nothing"
        );
        assert!(
            notice.message(24, "x").is_some(),
            "an operation sent, nothing back yet: the client waits for its messages"
        );
        let mut bytes = Vec::new();
        let mut boundaries = Vec::new();
        for message in messages() {
            bytes.extend(message);
            boundaries.push(bytes.len());
        }
        feed_checking(&mut notice, &bytes, 24, &boundaries);
    }

    #[test]
    fn no_message_is_given_in_a_reply_until_the_client_sends_its_next_operation() {
        let mut notice = FailureNotice::after_handshake(NEW);
        let mut bytes = messages().concat();
        bytes.extend(words(&[STDERR_LAST]));
        notice.daemon_sent(&bytes, 24);
        assert!(notice.message(24, "x").is_none(), "the reply comes next");
        // A reply whose words look like messages changes nothing.
        notice.daemon_sent(&words(&[STDERR_NEXT, STDERR_LAST, 1, 2, 3]), 24);
        assert!(notice.message(24, "x").is_none(), "still in the reply");
        assert!(
            notice.message(40, "x").is_some(),
            "the next operation was sent: the reply was read whole"
        );
        let next = messages().remove(0);
        let end = next.len();
        feed_checking(&mut notice, &next, 40, &[end]);
    }

    #[test]
    fn an_error_from_the_daemon_ends_the_work_in_either_form() {
        for version in [NEW, OLD] {
            let mut notice = FailureNotice::after_handshake(version);
            let error = error_message(version, "daemon says no");
            let mut bytes = messages().concat();
            bytes.extend(&error);
            notice.daemon_sent(&bytes, 8);
            assert!(
                notice.message(8, "x").is_none(),
                "version {version:#x}: the error ended the work"
            );
            notice.daemon_sent(&words(&[STDERR_LAST]), 16);
            assert!(
                notice.message(16, "x").is_none(),
                "version {version:#x}: the next operation's work ended"
            );
        }
    }

    #[test]
    fn an_operation_lasts_from_the_clients_bytes_to_the_end_of_the_work() {
        let mut notice = FailureNotice::after_handshake(NEW);
        assert!(!notice.in_operation(0), "after the handshake");
        assert!(notice.in_operation(8), "an operation sent");
        let mut next = words(&[STDERR_NEXT]);
        next.extend(text("half"));
        notice.daemon_sent(&next[..12], 8);
        assert!(notice.in_operation(8), "mid-message");
        assert!(
            notice.message(8, "x").is_none(),
            "mid-message: nothing to give"
        );
        notice.daemon_sent(&next[12..], 8);
        notice.daemon_sent(&words(&[STDERR_LAST, 1]), 8);
        assert!(!notice.in_operation(8), "the work ended; its reply follows");
        let mut lost = FailureNotice::after_handshake(NEW);
        lost.daemon_sent(&words(&[0x1234_5678]), 8);
        assert!(
            !lost.in_operation(16),
            "unknown: not said to be in an operation"
        );
    }

    #[test]
    fn a_long_string_split_across_chunks_is_skipped() {
        let mut notice = FailureNotice::after_handshake(NEW);
        let mut bytes = words(&[STDERR_WRITE]);
        bytes.extend(text(&"n".repeat(100_003)));
        let (first, second) = bytes.split_at(50_000);
        notice.daemon_sent(first, 8);
        assert!(notice.message(8, "x").is_none(), "mid-string");
        notice.daemon_sent(second, 8);
        assert!(notice.message(8, "x").is_some(), "after the string");
    }

    #[test]
    fn an_unknown_message_means_nothing_is_ever_given_again() {
        let mut notice = FailureNotice::after_handshake(NEW);
        notice.daemon_sent(&words(&[0x1234_5678]), 8);
        assert!(notice.message(8, "x").is_none());
        notice.daemon_sent(&words(&[STDERR_LAST]), 8);
        assert!(notice.message(99, "x").is_none(), "lost for good");
        let mut bad_field = FailureNotice::after_handshake(NEW);
        bad_field.daemon_sent(&words(&[STDERR_RESULT, 1, 2, 1, 9]), 8);
        bad_field.daemon_sent(&words(&[STDERR_LAST]), 8);
        assert!(bad_field.message(99, "x").is_none(), "unknown field type");
    }

    /// The message reads back as the daemon's error with our reader, in both forms.
    #[tokio::test]
    async fn the_error_message_reads_as_a_daemon_error() {
        for (version, wire) in [(NEW, (1, 34)), (OLD, (1, 25))] {
            let bytes = error_message(version, "n2p: the peer's daemon went away");
            let mut from = &bytes[..];
            let tag = crate::worker::wire::read_u64(&mut from).await.expect("tag");
            assert_eq!(tag, STDERR_ERROR);
            match crate::worker::stderr::read_error(&mut from, wire).await {
                Ok(WorkerError::Remote(text)) => {
                    assert_eq!(text, "n2p: the peer's daemon went away", "{wire:?}")
                }
                other => panic!("{wire:?}: {other:?}"),
            }
            assert!(from.is_empty(), "{wire:?}: {} bytes left over", from.len());
        }
    }
}
