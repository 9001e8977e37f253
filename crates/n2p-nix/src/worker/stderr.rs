//! The daemon's "stderr" messages that precede every reply: log lines and activities (passed
//! to `tracing`), a request for data (which none of our operations expects), and the end of
//! the work, either `STDERR_LAST` or `STDERR_ERROR` with the daemon's error.

use tokio::io::AsyncRead;

use super::wire::{read_list_len, read_text, read_u64};
use super::{ProtocolVersion, WorkerError};

/// A log line.
pub(crate) const STDERR_NEXT: u64 = 0x6f6c_6d67;
/// The daemon wants data from the client.
pub(crate) const STDERR_READ: u64 = 0x6461_7461;
/// The daemon sends data for a client sink.
pub(crate) const STDERR_WRITE: u64 = 0x6461_7416;
/// The work is done; the reply follows.
pub(crate) const STDERR_LAST: u64 = 0x616c_7473;
/// The work failed; an error follows.
pub(crate) const STDERR_ERROR: u64 = 0x6378_7470;
/// An activity starts.
pub(crate) const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
/// An activity ends.
pub(crate) const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
/// An activity's result.
pub(crate) const STDERR_RESULT: u64 = 0x5253_4c54;

/// Reads messages up to and including `STDERR_LAST`. A `STDERR_ERROR` becomes
/// [`WorkerError::Remote`], after which the daemon waits for the next operation.
pub(crate) async fn process<R: AsyncRead + Unpin>(
    from: &mut R,
    version: ProtocolVersion,
) -> Result<(), WorkerError> {
    loop {
        match read_u64(from).await? {
            STDERR_LAST => return Ok(()),
            STDERR_ERROR => return Err(read_error(from, version).await?),
            STDERR_NEXT => {
                let line = read_text(from, "log line").await?;
                tracing::debug!(target: "n2p_nix::daemon", "{}", strip_ansi(line.trim_end()));
            }
            STDERR_START_ACTIVITY => {
                let id = read_u64(from).await?;
                let level = read_u64(from).await?;
                let kind = read_u64(from).await?;
                let text = read_text(from, "activity text").await?;
                skip_fields(from).await?;
                let parent = read_u64(from).await?;
                tracing::trace!(
                    target: "n2p_nix::daemon",
                    id, level, kind, parent, "activity starts: {}", strip_ansi(&text)
                );
            }
            STDERR_STOP_ACTIVITY => {
                let id = read_u64(from).await?;
                tracing::trace!(target: "n2p_nix::daemon", id, "activity stops");
            }
            STDERR_RESULT => {
                let id = read_u64(from).await?;
                let kind = read_u64(from).await?;
                skip_fields(from).await?;
                tracing::trace!(target: "n2p_nix::daemon", id, kind, "activity result");
            }
            STDERR_READ | STDERR_WRITE => {
                return Err(WorkerError::Protocol(
                    "the daemon asked to exchange data, which no operation of this client does"
                        .into(),
                ));
            }
            other => {
                return Err(WorkerError::Protocol(format!(
                    "unknown message {other:#x} from the daemon"
                )));
            }
        }
    }
}

/// Reads the error after `STDERR_ERROR`: a message and a status before protocol 1.26, the
/// structured form (type, level, name, message, position, traces) since. Returns it as
/// [`WorkerError::Remote`], or the protocol error that reading it hit.
pub(crate) async fn read_error<R: AsyncRead + Unpin>(
    from: &mut R,
    version: ProtocolVersion,
) -> Result<WorkerError, WorkerError> {
    if version < (1, 26) {
        let message = read_text(from, "error message").await?;
        let _status = read_u64(from).await?;
        return Ok(WorkerError::Remote(strip_ansi(message.trim_end())));
    }
    let kind = read_text(from, "error type").await?;
    if kind != "Error" {
        return Err(WorkerError::Protocol(format!(
            "unexpected error type {kind:?} from the daemon"
        )));
    }
    let _level = read_u64(from).await?;
    let _name = read_text(from, "error name").await?;
    let mut message = strip_ansi(read_text(from, "error message").await?.trim_end());
    if read_u64(from).await? != 0 {
        return Err(WorkerError::Protocol(
            "the daemon sent an error position, which the protocol does not define".into(),
        ));
    }
    let traces = read_list_len(from, "error traces").await?;
    for _ in 0..traces {
        if read_u64(from).await? != 0 {
            return Err(WorkerError::Protocol(
                "the daemon sent a trace position, which the protocol does not define".into(),
            ));
        }
        let trace = read_text(from, "error trace").await?;
        message.push_str("\n… ");
        message.push_str(&strip_ansi(trace.trim_end()));
    }
    Ok(WorkerError::Remote(message))
}

/// Reads and drops an activity's fields (numbers or strings).
async fn skip_fields<R: AsyncRead + Unpin>(from: &mut R) -> Result<(), WorkerError> {
    let count = read_list_len(from, "activity fields").await?;
    for _ in 0..count {
        match read_u64(from).await? {
            0 => {
                read_u64(from).await?;
            }
            1 => {
                read_text(from, "activity field").await?;
            }
            other => {
                return Err(WorkerError::Protocol(format!(
                    "unknown activity field type {other}"
                )));
            }
        }
    }
    Ok(())
}

/// Removes the terminal colour codes (`ESC [ ... letter`) Nix puts in its messages.
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            let mut rest = chars.clone();
            if rest.next() == Some('[') {
                for c in rest.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
                chars = rest;
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::wire::{write_bytes, write_u64};

    #[test]
    fn colour_codes_are_removed() {
        assert_eq!(
            strip_ansi("path '\u{1b}[35;1m/nix/store/x\u{1b}[0m' is not valid"),
            "path '/nix/store/x' is not valid"
        );
        assert_eq!(strip_ansi("plain ✓"), "plain ✓");
    }

    async fn frames(build: impl AsyncFnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut wire = Vec::new();
        build(&mut wire).await;
        wire
    }

    #[tokio::test]
    async fn logs_and_activities_are_read_up_to_last() {
        let wire = frames(async |w| {
            write_u64(w, STDERR_NEXT).await.expect("vec");
            write_bytes(w, b"copying...\n").await.expect("vec");
            write_u64(w, STDERR_START_ACTIVITY).await.expect("vec");
            for n in [7, 3, 100] {
                write_u64(w, n).await.expect("vec");
            }
            write_bytes(w, b"building").await.expect("vec");
            write_u64(w, 2).await.expect("vec"); // two fields
            write_u64(w, 0).await.expect("vec");
            write_u64(w, 42).await.expect("vec");
            write_u64(w, 1).await.expect("vec");
            write_bytes(w, b"field").await.expect("vec");
            write_u64(w, 0).await.expect("vec"); // parent
            write_u64(w, STDERR_RESULT).await.expect("vec");
            write_u64(w, 7).await.expect("vec");
            write_u64(w, 105).await.expect("vec");
            write_u64(w, 0).await.expect("vec"); // no fields
            write_u64(w, STDERR_STOP_ACTIVITY).await.expect("vec");
            write_u64(w, 7).await.expect("vec");
            write_u64(w, STDERR_LAST).await.expect("vec");
            w.extend_from_slice(b"reply");
        })
        .await;
        let mut from = &wire[..];
        process(&mut from, (1, 38)).await.expect("well-formed");
        assert_eq!(from, b"reply", "nothing past STDERR_LAST is read");
    }

    #[tokio::test]
    async fn errors_of_both_forms_become_remote() {
        let old = frames(async |w| {
            write_u64(w, STDERR_ERROR).await.expect("vec");
            write_bytes(w, b"old-style failure").await.expect("vec");
            write_u64(w, 1).await.expect("vec");
        })
        .await;
        match process(&mut &old[..], (1, 25)).await {
            Err(WorkerError::Remote(message)) => assert_eq!(message, "old-style failure"),
            other => panic!("{other:?}"),
        }
        let new = frames(async |w| {
            write_u64(w, STDERR_ERROR).await.expect("vec");
            write_bytes(w, b"Error").await.expect("vec");
            write_u64(w, 0).await.expect("vec");
            write_bytes(w, b"Error").await.expect("vec");
            write_bytes(w, b"\x1b[31;1merror:\x1b[0m it broke")
                .await
                .expect("vec");
            write_u64(w, 0).await.expect("vec"); // no position
            write_u64(w, 1).await.expect("vec"); // one trace
            write_u64(w, 0).await.expect("vec");
            write_bytes(w, b"while doing it").await.expect("vec");
        })
        .await;
        match process(&mut &new[..], (1, 34)).await {
            Err(WorkerError::Remote(message)) => {
                assert_eq!(message, "error: it broke\n… while doing it")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn unknown_and_data_messages_are_protocol_errors() {
        for message in [STDERR_READ, STDERR_WRITE, 0x1234] {
            let wire = message.to_le_bytes();
            assert!(matches!(
                process(&mut &wire[..], (1, 34)).await,
                Err(WorkerError::Protocol(_))
            ));
        }
        // An end of stream in the middle is an I/O error, never a success.
        let wire = STDERR_NEXT.to_le_bytes();
        assert!(matches!(
            process(&mut &wire[..], (1, 34)).await,
            Err(WorkerError::Io(_))
        ));
    }
}
