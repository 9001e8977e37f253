//! The subcommands, each a thin layer over the library crates.

mod client;
mod server;

use anyhow::Context;
use n2p_core::identity::rotate_access_secret;

use crate::{
    cli::{Cli, Command},
    node,
};

/// Runs the chosen subcommand.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match cli.command {
        Command::Id => {
            let home = node::home(global)?;
            let key = node::secret_key(&home)?;
            println!("{}", key.public());
            Ok(())
        }
        Command::Server(args) => server::run(global, args).await,
        Command::Client(args) => client::run(global, args).await,
        Command::RotateSecret => {
            let home = node::home(global)?;
            rotate_access_secret(&home).context("cannot rotate the access secret")?;
            tracing::info!(target: "n2p",
                "new access secret in {}; addresses printed before no longer work (restart `n2p server` to print new ones)",
                home.access_secret_path().display()
            );
            Ok(())
        }
    }
}
