//! `n2p`: move Nix store paths directly between your machines, peer to peer, over iroh.

mod cli;
mod cmd;
mod config;
mod control;
mod logging;
mod memory;
mod service;
mod setup;
mod shutdown;

use std::{process::ExitCode, time::Duration};

use clap::Parser;

/// How long the runtime waits for leftover tasks once the command has returned.
const RUNTIME_EXIT_BOUND: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Err(message) = cli::binds_in_one_place(std::env::args_os(), cli.global.bind.len()) {
        use clap::CommandFactory;
        cli::Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    logging::init(cli.global.verbose);
    raise_fd_limit();
    // One thread: the forwarding path is bound by the nix-daemon and QUIC's per-packet work,
    // and a multi-thread runtime only added cross-thread wake-ups (measured: +15-30% CPU per
    // byte, 2-5 MB more RSS; docs/BENCHMARKS.md).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(cmd::run(cli));
    // Tasks still running (a cleanup cut short by a second signal, blocking file work) must
    // not hold the exit.
    runtime.shutdown_timeout(RUNTIME_EXIT_BOUND);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit: every forwarded Nix connection
/// holds a unix socket, and the usual soft limit (1024) is reached long before the hard one.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::debug!("cannot raise the open-file limit from {}", limit.rlim_cur);
            }
        }
    }
}
