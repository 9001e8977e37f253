//! The subcommands, each a thin layer over the library crates.

mod client;
mod completions;
mod doctor;
mod mesh;
mod pull;
mod server;

use anyhow::Context;
use n2p_core::identity::rotate_access_secret;

use crate::{
    cli::{Cli, Command, MeshCommand},
    setup,
};

/// Runs the chosen subcommand.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match cli.command {
        Command::Id => {
            let home = setup::home(global)?;
            let key = setup::secret_key(&home)?;
            println!("{}", key.public());
            Ok(())
        }
        Command::Server(args) => server::run(global, args).await,
        Command::Client(args) => client::run(global, args).await,
        Command::Mesh(MeshCommand::Join(args)) => mesh::join(global, *args).await,
        Command::Mesh(MeshCommand::Peers(args)) => mesh::peers(global, args).await,
        Command::Mesh(MeshCommand::Invite(args)) => mesh::invite(global, args).await,
        Command::Mesh(MeshCommand::NewSecret) => {
            mesh::new_secret();
            Ok(())
        }
        Command::Status(args) => mesh::status(global, args).await,
        Command::Completions { shell } => completions::completions(shell),
        Command::Man => completions::man(),
        Command::Doctor(args) => doctor::run(global, args).await,
        Command::Key(args) => pull::key(global, args),
        Command::Trust(args) => pull::trust(global, args),
        Command::RotateSecret => {
            let home = setup::home(global)?;
            rotate_access_secret(&home).context("cannot rotate the access secret")?;
            tracing::info!(target: "n2p",
                "new access secret in {}; addresses printed before no longer work once `n2p server` has re-read it: send it SIGHUP (or restart it), and it prints the new addresses",
                home.access_secret_path().display()
            );
            Ok(())
        }
    }
}
