//! `n2p`: move Nix store paths directly between your machines, peer to peer, over iroh.

mod cli;
mod cmd;
mod config;
mod control;
mod logging;
mod setup;
mod shutdown;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.global.verbose);
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
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
