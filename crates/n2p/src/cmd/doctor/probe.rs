//! Asking a nix-daemon which Nix answers and whether it lets us add unsigned paths, with
//! n2p-nix's worker client: the handshake reports the Nix version (protocol 1.33 on) and the
//! trust (1.35 on). An older daemon is asked by deed with
//! [`DaemonClient::probe_signature_check`]: one AddToStoreNar of an unsigned path whose NAR
//! is not a NAR, which the daemon refuses either way, so nothing is added. The connection
//! is closed right after; only the trusted case may leave Nix's empty lock file
//! `<store>/00000000000000000000000000000000-n2p-doctor-probe.lock` behind (always that one
//! name, so at most one such file).

use std::{path::Path, time::Duration};

use n2p_nix::{DaemonClient, StoreDir, WorkerError, worker::SignatureCheck};
use tokio::net::UnixStream;

/// The name of the path the old-daemon probe offers (see the module documentation).
const PROBE_NAME: &str = "n2p-doctor-probe";

/// How long the whole probe may take.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DaemonFacts {
    /// Its protocol version, `(major, minor)`, as it offered it.
    pub(crate) protocol: (u8, u8),
    /// Its Nix version, when the protocol carries it (1.33 and later).
    pub(crate) nix_version: Option<String>,
    /// Whether it trusts this client: lets it add unsigned paths (a trusted user, or a
    /// daemon with `require-sigs = false`).
    pub(crate) trusted: bool,
}

/// Probes the daemon listening at `socket`; `store_dir` is its store directory (for the
/// path the old-daemon probe offers).
pub(crate) async fn probe(socket: &Path, store_dir: &str) -> Result<DaemonFacts, WorkerError> {
    let stream = UnixStream::connect(socket).await?;
    let mut daemon = DaemonClient::handshake(stream, StoreDir::new(store_dir)).await?;
    let trusted = match daemon.trusted() {
        Some(trusted) => trusted,
        None => match daemon.probe_signature_check(PROBE_NAME).await? {
            SignatureCheck::Enforced(_) => false,
            // Refused past the signature check it was asked to skip.
            _ => true,
        },
    };
    Ok(DaemonFacts {
        protocol: daemon.daemon_version(),
        nix_version: daemon.daemon_nix_version().map(str::to_owned),
        trusted,
    })
}
