//! Timing a new daemon connection without a `nix` process around it: connect, the worker
//! handshake and one QueryValidPaths of one path, with n2p-nix's [`DaemonClient`], then
//! close.
//!
//! ```ignore
//! let (took, valid) = connect_and_query(Path::new("/run/d.sock"), "/nix/store/…-hello")?;
//! ```

use std::{
    io,
    path::Path,
    time::{Duration, Instant},
};

use n2p_nix::{DaemonClient, StoreDir, WorkerError};
use tokio::net::UnixStream;

/// Longest one connection and its query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to the daemon socket at `socket`, does the handshake and asks whether `path` is
/// valid; returns how long all that took and the answer. The runtime it runs on is made
/// before the clock starts.
pub(crate) fn connect_and_query(
    socket: &Path,
    path: &str,
) -> Result<(Duration, bool), WorkerError> {
    let path = StoreDir::default().parse_path(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let started = Instant::now();
        let query = async {
            let stream = UnixStream::connect(socket).await?;
            let mut daemon = DaemonClient::handshake(stream, StoreDir::default()).await?;
            let valid = daemon
                .query_valid_paths(std::slice::from_ref(&path))
                .await?;
            Ok::<_, WorkerError>((daemon, valid))
        };
        // The connection closes after the clock stops, as `daemon` is dropped.
        let (_daemon, valid) =
            tokio::time::timeout(QUERY_TIMEOUT, query)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {QUERY_TIMEOUT:?}"),
                    )
                })??;
        Ok((started.elapsed(), valid.contains(&path)))
    })
}

#[cfg(test)]
mod tests {
    use n2p_testkit::nix::{NixDaemon, SourceStore, assert_copy_succeeds, require_nix};

    use super::*;

    #[test]
    fn a_new_connection_answers_whether_a_path_is_valid() {
        if !require_nix("a_new_connection_answers_whether_a_path_is_valid") {
            return;
        }
        let daemon = NixDaemon::start();
        let source = SourceStore::new();
        let hello = source.add_text_with_references("hello", "hello", &[]);
        assert_copy_succeeds(&source, &daemon.store_url(), &[&hello]);
        let socket = daemon.socket_path().to_owned();
        let socket = socket.as_path();

        let (took, valid) = connect_and_query(socket, &hello).expect("a valid path");
        assert!(valid, "{hello} is valid in the daemon");
        assert!(took < QUERY_TIMEOUT);
        let missing = "/nix/store/00000000000000000000000000000000-missing";
        let (_, valid) = connect_and_query(socket, missing).expect("a missing path");
        assert!(!valid, "{missing} is not valid");

        assert!(matches!(
            connect_and_query(socket, "/tmp/not-a-store-path"),
            Err(WorkerError::InvalidPath(_))
        ));
        drop(daemon);
        assert!(matches!(
            connect_and_query(socket, &hello),
            Err(WorkerError::Io(_))
        ));
    }
}
