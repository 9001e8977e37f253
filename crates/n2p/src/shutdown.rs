//! Waiting for SIGINT or SIGTERM, and cutting a shutdown short on a second one.

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGINT or SIGTERM.
pub(crate) async fn signal_received() -> anyhow::Result<&'static str> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Runs `cleanup` (a bounded drain after a first signal), but returns at once when a
/// second SIGINT or SIGTERM comes: whoever sends it wants the process gone now, and the
/// first signal's handler has taken away the default action that would have ended it.
pub(crate) async fn unless_signalled_again(cleanup: impl std::future::Future<Output = ()>) {
    let second = async {
        match signal_received().await {
            Ok(signal) => signal,
            // Signals cannot be watched any more: the bounded cleanup is all that is left.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = cleanup => {}
        signal = second => {
            tracing::warn!(target: "n2p", "{signal} received again; exiting without waiting for the rest");
        }
    }
}
