//! The handshake's framing as seen from between a Nix client and its daemon: where each
//! side's part of each step ends, without doing any I/O.
//!
//! A forwarder that knows these boundaries can record one daemon's answers and give the
//! same answers to the next client that sends the same bytes, instead of waiting a round
//! trip for each (n2p's hello cache does, and checks the daemon's real answers when they
//! arrive). The handshake has three steps, each a client part and the daemon's answer:
//!
//! | step | client sends | daemon answers |
//! |---|---|---|
//! | [`Step::Magic`] | `WORKER_MAGIC_1` | `WORKER_MAGIC_2`, its protocol version |
//! | [`Step::Version`] | its protocol version, features (>= 1.38) | features (>= 1.38), else nothing |
//! | [`Step::Options`] | CPU affinity (>= 1.14), reserve-space (>= 1.11) | Nix version (>= 1.33), trust (>= 1.35), `STDERR_LAST` |
//!
//! Versions are the lower of the two sides'. Newer clients send their version together with
//! the magic, which changes nothing here: each part is framed from the bytes alone. A daemon
//! that logs something before its `STDERR_LAST` gives an answer that is not framed
//! ([`HelloError::Unexpected`]); so is anything else this module does not expect, and the
//! forwarder then just passes the bytes on.

use super::stderr::STDERR_LAST;
use super::{WORKER_MAGIC_1, WORKER_MAGIC_2, minor};

/// The steps of the handshake, in order.
pub const STEPS: [Step; 3] = [Step::Magic, Step::Version, Step::Options];

/// Longest feature name or Nix version string framed (real ones are a few bytes).
const MAX_TEXT: u64 = 256;
/// Most features framed in one list.
const MAX_FEATURES: u64 = 64;

/// One step of the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The magic words and the daemon's version.
    Magic,
    /// The client's version and the feature lists.
    Version,
    /// The client's obsolete options and the daemon's Nix version, trust and first
    /// `STDERR_LAST`.
    Options,
}

/// How far a part is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// At least this many more bytes are needed.
    Need(usize),
    /// The part is this many bytes from the start.
    Complete(usize),
}

/// Bytes that are not a handshake this module frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The client did not start with `WORKER_MAGIC_1`, or the daemon with `WORKER_MAGIC_2`.
    #[error("not the worker protocol's magic word")]
    NotMagic,
    /// A protocol version of another major version, or older than 1.10.
    #[error("unsupported protocol version {0:#x}")]
    Version(u64),
    /// A list or string longer than any real handshake has.
    #[error("a handshake field is too long")]
    TooLong,
    /// The daemon sent this message before its `STDERR_LAST` (a start-up log line or error).
    #[error("daemon message {0:#x} before the end of the handshake")]
    Unexpected(u64),
    /// A part was framed before the step it depends on.
    #[error("handshake step framed out of order")]
    OutOfOrder,
}

/// The framing state of one handshake: the versions learned from earlier parts.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    daemon_version: Option<u64>,
    client_version: Option<u64>,
}

impl Hello {
    /// A handshake not yet begun.
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames the client's part of `step` at the start of `bytes`. Framing
    /// [`Step::Version`] needs the daemon's answer to [`Step::Magic`] framed first, and
    /// records the client's version once complete.
    pub fn client_part(&mut self, step: Step, bytes: &[u8]) -> Result<Framing, HelloError> {
        let mut part = Cursor::new(bytes);
        let framed = match step {
            Step::Magic => part.magic(WORKER_MAGIC_1),
            Step::Version => {
                let daemon = self.daemon_version.ok_or(HelloError::OutOfOrder)?;
                part.version().and_then(|client| {
                    self.client_version = Some(client);
                    if minor(client.min(daemon)) >= 38 {
                        part.strings(MAX_FEATURES)?;
                    }
                    Ok(())
                })
            }
            Step::Options => {
                let version = self.negotiated()?;
                (|| {
                    if minor(version) >= 14 && part.u64()? != 0 {
                        part.u64()?;
                    }
                    if minor(version) >= 11 {
                        part.u64()?;
                    }
                    Ok(())
                })()
            }
        };
        part.finish(framed)
    }

    /// Frames the daemon's answer to `step` at the start of `bytes`. Framing
    /// [`Step::Magic`] records the daemon's version; later steps need the client's part of
    /// [`Step::Version`] framed first.
    pub fn daemon_part(&mut self, step: Step, bytes: &[u8]) -> Result<Framing, HelloError> {
        let mut part = Cursor::new(bytes);
        let framed = match step {
            Step::Magic => part.magic(WORKER_MAGIC_2).and_then(|()| {
                self.daemon_version = Some(part.version()?);
                Ok(())
            }),
            Step::Version => {
                let version = self.negotiated()?;
                if minor(version) >= 38 {
                    part.strings(MAX_FEATURES)
                } else {
                    Ok(())
                }
            }
            Step::Options => {
                let version = self.negotiated()?;
                (|| {
                    if minor(version) >= 33 {
                        part.string()?;
                    }
                    if minor(version) >= 35 {
                        part.u64()?;
                    }
                    match part.u64()? {
                        STDERR_LAST => Ok(()),
                        other => Err(Stop::Bad(HelloError::Unexpected(other))),
                    }
                })()
            }
        };
        part.finish(framed)
    }

    /// The protocol version both sides use (wire form), once both parts of
    /// [`Step::Version`] are framed.
    pub fn version(&self) -> Option<u64> {
        self.negotiated().ok()
    }

    /// The version both sides use, once both are known.
    fn negotiated(&self) -> Result<u64, HelloError> {
        match (self.daemon_version, self.client_version) {
            (Some(daemon), Some(client)) => Ok(daemon.min(client)),
            _ => Err(HelloError::OutOfOrder),
        }
    }
}

/// Why framing stopped before the end of a part.
enum Stop {
    /// The bytes end this many bytes too early.
    Need(usize),
    /// The bytes are not a handshake.
    Bad(HelloError),
}

impl From<HelloError> for Stop {
    fn from(error: HelloError) -> Self {
        Stop::Bad(error)
    }
}

/// Reads wire fields from the start of a part.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// Skips `len` bytes, or says how many are missing.
    fn take(&mut self, len: usize) -> Result<&'a [u8], Stop> {
        let end = self.at + len;
        match self.bytes.get(self.at..end) {
            Some(taken) => {
                self.at = end;
                Ok(taken)
            }
            None => Err(Stop::Need(end - self.bytes.len())),
        }
    }

    fn u64(&mut self) -> Result<u64, Stop> {
        let word = self.take(8)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(word);
        Ok(u64::from_le_bytes(le))
    }

    /// The magic word `expected`; a wrong one is refused as soon as its first bytes differ,
    /// so a client that sends a few other bytes and waits is not kept waiting.
    fn magic(&mut self, expected: u64) -> Result<(), Stop> {
        let want = expected.to_le_bytes();
        let have = &self.bytes[self.at..];
        let shared = have.len().min(want.len());
        if have[..shared] != want[..shared] {
            return Err(Stop::Bad(HelloError::NotMagic));
        }
        self.take(8).map(|_| ())
    }

    /// A protocol version the handshake can be framed with: major 1, minor >= 10.
    fn version(&mut self) -> Result<u64, Stop> {
        let version = self.u64()?;
        if version >> 8 != 1 || minor(version) < 10 {
            return Err(Stop::Bad(HelloError::Version(version)));
        }
        Ok(version)
    }

    /// A string: its length, its bytes and zero padding to a multiple of 8.
    fn string(&mut self) -> Result<(), Stop> {
        let len = self.u64()?;
        if len > MAX_TEXT {
            return Err(Stop::Bad(HelloError::TooLong));
        }
        let padded = (len as usize).div_ceil(8) * 8;
        self.take(padded).map(|_| ())
    }

    /// A list of at most `max` strings.
    fn strings(&mut self, max: u64) -> Result<(), Stop> {
        let count = self.u64()?;
        if count > max {
            return Err(Stop::Bad(HelloError::TooLong));
        }
        for _ in 0..count {
            self.string()?;
        }
        Ok(())
    }

    /// The framing once a part's fields have been read (or reading stopped).
    fn finish(self, framed: Result<(), Stop>) -> Result<Framing, HelloError> {
        match framed {
            Ok(()) => Ok(Framing::Complete(self.at)),
            Err(Stop::Need(more)) => Ok(Framing::Need(more)),
            Err(Stop::Bad(error)) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn string(text: &str) -> Vec<u8> {
        let mut bytes = words(&[text.len() as u64]);
        bytes.extend_from_slice(text.as_bytes());
        bytes.resize(8 + text.len().div_ceil(8) * 8, 0);
        bytes
    }

    /// Frames a whole exchange the way a forwarder does: every part complete at its end,
    /// and every shorter prefix asking for more.
    fn frame_exchange(parts: &[(Vec<u8>, Vec<u8>)]) {
        let mut hello = Hello::new();
        for (step, (client, daemon)) in STEPS.iter().zip(parts) {
            for cut in 0..client.len() {
                assert!(
                    matches!(hello.clone().client_part(*step, &client[..cut]), Ok(Framing::Need(n)) if n > 0),
                    "{step:?}: client prefix of {cut} bytes"
                );
            }
            assert_eq!(
                hello.client_part(*step, client),
                Ok(Framing::Complete(client.len()))
            );
            for cut in 0..daemon.len() {
                assert!(
                    matches!(hello.clone().daemon_part(*step, &daemon[..cut]), Ok(Framing::Need(n)) if n > 0),
                    "{step:?}: daemon prefix of {cut} bytes"
                );
            }
            assert_eq!(
                hello.daemon_part(*step, daemon),
                Ok(Framing::Complete(daemon.len())),
                "{step:?}"
            );
        }
    }

    /// Nix 2.8's client and daemon (1.34), as recorded with strace from a real pair: the
    /// magic alone, then version, affinity and reserve-space; the answer carries the Nix
    /// version and no trust.
    #[test]
    fn a_nix_2_8_handshake_is_framed() {
        frame_exchange(&[
            (words(&[WORKER_MAGIC_1]), words(&[WORKER_MAGIC_2, 0x122])),
            (words(&[0x122]), vec![]),
            (
                words(&[0, 0]),
                [string("2.8.0"), words(&[STDERR_LAST])].concat(),
            ),
        ]);
    }

    /// 1.38 exchanges feature lists before the options, and the answer carries the trust.
    #[test]
    fn a_1_38_handshake_with_features_is_framed() {
        let features = [words(&[1]), string("hash-mismatch-status")].concat();
        frame_exchange(&[
            (words(&[WORKER_MAGIC_1]), words(&[WORKER_MAGIC_2, 0x126])),
            ([words(&[0x126]), words(&[0])].concat(), features),
            (
                words(&[0, 0]),
                [string("2.31.0"), words(&[1, STDERR_LAST])].concat(),
            ),
        ]);
    }

    /// A client at 1.38 and a daemon at 1.34 use 1.34: no features, no trust.
    #[test]
    fn the_lower_version_decides_the_fields() {
        frame_exchange(&[
            (words(&[WORKER_MAGIC_1]), words(&[WORKER_MAGIC_2, 0x122])),
            (words(&[0x126]), vec![]),
            (
                words(&[0, 0]),
                [string("2.8.0"), words(&[STDERR_LAST])].concat(),
            ),
        ]);
    }

    /// The exchanges recorded from real daemons (Nix 2.8.0 at 1.34, Nix 2.26.3 at 1.38, see
    /// `tests/fixtures/README.md`) frame part by part, and what follows the handshake on
    /// the client's side is its first operation (QueryPathInfo, 26).
    #[test]
    fn recorded_exchanges_frame_up_to_the_first_operation() {
        let recordings: [(&[u8], &[u8]); 2] = [
            (
                include_bytes!("../../tests/fixtures/daemon-2.8.0.from-client.bin"),
                include_bytes!("../../tests/fixtures/daemon-2.8.0.from-daemon.bin"),
            ),
            (
                include_bytes!("../../tests/fixtures/daemon-2.26.3.from-client.bin"),
                include_bytes!("../../tests/fixtures/daemon-2.26.3.from-daemon.bin"),
            ),
        ];
        for (client, daemon) in recordings {
            let mut hello = Hello::new();
            let (mut c, mut d) = (0, 0);
            for step in STEPS {
                match hello.client_part(step, &client[c..]) {
                    Ok(Framing::Complete(n)) => c += n,
                    other => panic!("client {step:?}: {other:?}"),
                }
                match hello.daemon_part(step, &daemon[d..]) {
                    Ok(Framing::Complete(n)) => d += n,
                    other => panic!("daemon {step:?}: {other:?}"),
                }
            }
            assert_eq!(client[c..c + 8], 26u64.to_le_bytes());
        }
    }

    /// A set CPU affinity carries one more word.
    #[test]
    fn a_set_affinity_carries_its_cpu() {
        let mut hello = Hello::new();
        hello
            .daemon_part(Step::Magic, &words(&[WORKER_MAGIC_2, 0x122]))
            .expect("framed");
        hello
            .client_part(Step::Version, &words(&[0x122]))
            .expect("framed");
        assert_eq!(
            hello.client_part(Step::Options, &words(&[1, 3])),
            Ok(Framing::Need(8))
        );
        assert_eq!(
            hello.client_part(Step::Options, &words(&[1, 3, 0])),
            Ok(Framing::Complete(24))
        );
    }

    #[test]
    fn other_bytes_are_refused_at_once() {
        let mut hello = Hello::new();
        assert_eq!(
            hello.client_part(Step::Magic, b"GET"),
            Err(HelloError::NotMagic)
        );
        assert_eq!(
            hello.client_part(Step::Magic, &WORKER_MAGIC_1.to_le_bytes()[..3]),
            Ok(Framing::Need(5))
        );
        assert_eq!(
            hello.daemon_part(Step::Magic, &words(&[WORKER_MAGIC_2, 0x200])),
            Err(HelloError::Version(0x200))
        );
        assert_eq!(
            hello.client_part(Step::Version, &words(&[0x122])),
            Err(HelloError::OutOfOrder)
        );
    }

    /// A daemon that logs before its first `STDERR_LAST`, or sends huge fields, is not
    /// framed: its answer cannot be given again as it was.
    #[test]
    fn a_daemon_that_logs_or_sends_huge_fields_is_not_framed() {
        let mut hello = Hello::new();
        hello
            .daemon_part(Step::Magic, &words(&[WORKER_MAGIC_2, 0x126]))
            .expect("framed");
        hello
            .client_part(Step::Version, &words(&[0x126, 0]))
            .expect("framed");
        assert_eq!(
            hello.daemon_part(Step::Version, &words(&[MAX_FEATURES + 1])),
            Err(HelloError::TooLong)
        );
        let logs = [
            string("2.31.0"),
            words(&[1, super::super::stderr::STDERR_NEXT]),
        ]
        .concat();
        assert_eq!(
            hello.daemon_part(Step::Options, &logs),
            Err(HelloError::Unexpected(super::super::stderr::STDERR_NEXT))
        );
        assert_eq!(
            hello.daemon_part(Step::Options, &words(&[MAX_TEXT + 1])),
            Err(HelloError::TooLong)
        );
    }
}
