//! Whether a daemon lets this client add unsigned paths, asked by deed for daemons older than
//! protocol 1.35 (whose handshake does not say, see [`DaemonClient::trusted`]).
//!
//! The deed is one AddToStoreNar of an unsigned path with signature checks skipped (which
//! the daemon honours for trusted clients only) and a "NAR" that is not a NAR. An untrusted
//! client is refused at the signature check ("lacks a valid signature" on Nix 2.8, "lacks a
//! signature by a trusted key" later); a trusted one gets past it and is refused at the NAR
//! ("doesn't look like a Nix archive") before anything is written. Either way nothing is
//! added; a trusted probe may leave Nix's empty lock file `<store>/<path>.lock` behind (Nix
//! does not remove the lock files it takes), which is why the probed path has a fixed name.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use n2p_nix::{DaemonClient, StoreDir, worker::SignatureCheck};
//!
//! let socket = tokio::net::UnixStream::connect("/nix/var/nix/daemon-socket/socket").await?;
//! let mut daemon = DaemonClient::handshake(socket, StoreDir::default()).await?;
//! let trusted = match daemon.trusted() {
//!     Some(trusted) => trusted,
//!     None => matches!(
//!         daemon.probe_signature_check("my-probe").await?,
//!         SignatureCheck::Skipped(_)
//!     ),
//! };
//! # Ok(()) }
//! ```

use super::wire::{write_bytes, write_u64};
use super::{DaemonClient, ProtocolVersion, WorkerError, op};
use crate::StorePath;

/// The oldest protocol whose AddToStoreNar takes the NAR in frames: 1.23.
pub const SIGNATURE_PROBE_MIN_VERSION: ProtocolVersion = (1, 23);

/// The hash part of the probed path: all zeros, a hash no real path has.
const PROBE_HASH_PART: &str = "00000000000000000000000000000000";

/// The bytes sent in the NAR's place: a string that is not the NAR magic
/// (`nix-archive-1`), so the daemon stops at once.
const NOT_A_NAR: &[u8] = b"not-a-nar";

/// How the daemon answered [`DaemonClient::probe_signature_check`]; both answers are
/// refusals, each with the daemon's message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureCheck {
    /// It refused the unsigned path for its missing signature: it checks signatures on what
    /// this client adds (the client is not trusted).
    Enforced(String),
    /// It skipped the signature check as asked and refused the path for another reason (the
    /// NAR): this client may add unsigned paths (a trusted user, or `require-sigs = false`).
    Skipped(String),
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> DaemonClient<S> {
    /// Asks the daemon, by a refused AddToStoreNar (see the [module
    /// documentation](self)), whether it lets this client add unsigned paths. The path
    /// sent is `<store>/00000000000000000000000000000000-<name>`; `name` must be a valid
    /// store path name ([`WorkerError::InvalidPath`] before anything is sent otherwise) and
    /// should be the same on every call (a trusted probe may leave that path's lock file in
    /// the store).
    ///
    /// Needs protocol [`SIGNATURE_PROBE_MIN_VERSION`] (else [`WorkerError::TooOld`]); a
    /// daemon that accepts the path breaks the protocol ([`WorkerError::Protocol`]). The
    /// daemon reads the whole request before refusing it, so the connection stays usable.
    pub async fn probe_signature_check(
        &mut self,
        name: &str,
    ) -> Result<SignatureCheck, WorkerError> {
        if self.version < SIGNATURE_PROBE_MIN_VERSION {
            return Err(WorkerError::TooOld {
                operation: "AddToStoreNar (signature probe)",
                version: self.version,
                needs: SIGNATURE_PROBE_MIN_VERSION,
            });
        }
        let path = StorePath::from_basename(&format!("{PROBE_HASH_PART}-{name}"))?;
        let path = self.store_dir.display(&path);
        self.request(op::ADD_TO_STORE_NAR).await?;
        let s = &mut self.stream;
        write_bytes(s, path.as_bytes()).await?;
        write_bytes(s, b"").await?; // no deriver
        write_bytes(s, format!("sha256:{}", "0".repeat(64)).as_bytes()).await?;
        write_u64(s, 0).await?; // no references
        write_u64(s, 0).await?; // registration time
        write_u64(s, 16).await?; // NAR size
        write_u64(s, 0).await?; // not ultimate
        write_u64(s, 0).await?; // no signatures
        write_bytes(s, b"").await?; // not content-addressed
        write_u64(s, 0).await?; // no repair
        write_u64(s, 1).await?; // skip signature checks (honoured for trusted clients only)
        // The "NAR" in one frame, then the empty frame that ends it.
        let padded = NOT_A_NAR.len().div_ceil(8) * 8;
        write_u64(s, (8 + padded) as u64).await?;
        write_bytes(s, NOT_A_NAR).await?;
        write_u64(s, 0).await?;
        match self.await_reply().await {
            Err(WorkerError::Remote(message)) => Ok(classify(message)),
            Err(other) => Err(other),
            Ok(()) => {
                // The daemon sends no result after STDERR_LAST: the stream is in step.
                self.broken = false;
                Err(WorkerError::Protocol(format!(
                    "the daemon accepted {path}, whose NAR is not a NAR"
                )))
            }
        }
    }
}

/// Tells a refusal for a missing signature from any other refusal.
fn classify(message: String) -> SignatureCheck {
    // "lacks a valid signature" (Nix 2.8), "lacks a signature by a trusted key" (later).
    if message.contains("lacks a") && message.contains("signature") {
        SignatureCheck::Enforced(message)
    } else {
        SignatureCheck::Skipped(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::stderr::{STDERR_ERROR, STDERR_LAST};
    use crate::worker::tests::client_on;
    use crate::worker::wire::read_bytes;

    /// What a 1.34 daemon sends when it refuses an operation with `message`.
    async fn refusal(message: &str) -> Vec<u8> {
        let mut wire = STDERR_ERROR.to_le_bytes().to_vec();
        write_bytes(&mut wire, b"Error").await.expect("vec");
        write_u64(&mut wire, 0).await.expect("vec"); // level
        write_bytes(&mut wire, b"Error").await.expect("vec");
        write_bytes(&mut wire, message.as_bytes())
            .await
            .expect("vec");
        write_u64(&mut wire, 0).await.expect("vec"); // no position
        write_u64(&mut wire, 0).await.expect("vec"); // no traces
        wire
    }

    #[tokio::test]
    async fn a_signature_refusal_is_enforced_and_any_other_is_skipped() {
        for (message, want) in [
            (
                "cannot add path '/nix/store/0…-p' because it lacks a valid signature",
                SignatureCheck::Enforced as fn(String) -> SignatureCheck,
            ),
            (
                "cannot add path '/nix/store/0…-p' because it lacks a signature by a trusted key",
                SignatureCheck::Enforced,
            ),
            (
                "input doesn't look like a Nix archive",
                SignatureCheck::Skipped,
            ),
        ] {
            let wire = refusal(message).await;
            let mut client = client_on(&wire).await;
            let answer = client.probe_signature_check("p").await.expect("an answer");
            assert_eq!(answer, want(message.to_owned()));
            assert!(client.is_usable(), "a refusal leaves the connection usable");
        }
    }

    #[tokio::test]
    async fn the_request_is_an_unsigned_add_without_checks_and_a_framed_non_nar() {
        let wire = refusal("input doesn't look like a Nix archive").await;
        let mut client = client_on(&wire).await;
        client.probe_signature_check("p").await.expect("an answer");
        let sent = client.stream.into_inner().from_client;
        let mut from = &sent[..];
        let word =
            async |from: &mut &[u8]| crate::worker::wire::read_u64(from).await.expect("a word");
        assert_eq!(word(&mut from).await, op::ADD_TO_STORE_NAR);
        let path = read_bytes(&mut from, "path").await.expect("path");
        assert_eq!(path, b"/nix/store/00000000000000000000000000000000-p");
        assert!(
            read_bytes(&mut from, "deriver")
                .await
                .expect("deriver")
                .is_empty()
        );
        let hash = read_bytes(&mut from, "hash").await.expect("hash");
        assert_eq!(hash.len(), "sha256:".len() + 64);
        // references, registration time, NAR size, ultimate, signatures.
        for want in [0, 0, 16, 0, 0] {
            assert_eq!(word(&mut from).await, want);
        }
        assert!(read_bytes(&mut from, "ca").await.expect("ca").is_empty());
        assert_eq!(word(&mut from).await, 0, "no repair");
        assert_eq!(word(&mut from).await, 1, "skip signature checks");
        let frame = word(&mut from).await;
        let (body, rest) = from.split_at(frame as usize);
        assert_eq!(
            read_bytes(&mut &body[..], "NAR").await.expect("NAR"),
            NOT_A_NAR
        );
        assert_eq!(rest, 0u64.to_le_bytes(), "the empty frame ends the request");
    }

    #[tokio::test]
    async fn an_accepting_daemon_breaks_the_protocol_and_old_ones_are_not_asked() {
        let wire = STDERR_LAST.to_le_bytes();
        let mut client = client_on(&wire).await;
        assert!(matches!(
            client.probe_signature_check("p").await,
            Err(WorkerError::Protocol(_))
        ));
        let mut client = client_on(&[]).await;
        client.version = (1, 22);
        assert!(matches!(
            client.probe_signature_check("p").await,
            Err(WorkerError::TooOld { .. })
        ));
        assert!(
            client.stream.into_inner().from_client.is_empty(),
            "nothing was sent"
        );
        let mut client = client_on(&[]).await;
        assert!(matches!(
            client.probe_signature_check("not/a name").await,
            Err(WorkerError::InvalidPath(_))
        ));
        assert!(client.is_usable(), "nothing was sent");
    }
}
