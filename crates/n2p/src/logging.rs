//! Logging set-up: human-readable lines on stderr, `RUST_LOG` first, else `-v` levels;
//! without timestamps or colours when journald captures stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub(crate) fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn,n2p=info,n2p_core=info,n2p_mesh=info",
        1 => "warn,n2p=debug,n2p_core=debug,n2p_mesh=debug",
        2 => "info,n2p=trace,n2p_core=trace,n2p_mesh=trace",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec).unwrap_or_else(|e| {
            eprintln!("warning: ignoring invalid RUST_LOG: {e}");
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if crate::service::journald_captures_stderr() {
        // journald stamps each line itself and shows escape codes as they are.
        builder.with_ansi(false).without_time().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
