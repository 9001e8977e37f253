//! Command-line interface: one `Args` struct per subcommand, shared flags flattened in.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use n2p_core::{
    EndpointId,
    endpoint::{CongestionControl, RelayChoice},
};

/// Move Nix store paths directly between your machines, peer to peer.
///
/// No SSH server, no binary cache in the middle, no port forwarding: n2p carries the
/// nix-daemon protocol over iroh (QUIC with hole punching and relay fallback).
#[derive(Debug, Parser)]
#[command(name = "n2p", version = env!("N2P_VERSION"), about, long_about = None)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command accepts, before or after the subcommand.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Relay servers: `default` (n0's relays and address lookup), `disabled` (direct
    /// addresses only, no lookup: for LANs, loopback and offline use) or a relay URL.
    #[arg(long, global = true, value_name = "default|disabled|URL")]
    pub(crate) relay: Option<RelayChoice>,
    /// Also trust the certificates in this PEM file for relay TLS (HTTPS, QUIC address
    /// discovery): for your own relay with a private or self-signed certificate.
    #[arg(long, global = true, env = "N2P_RELAY_CA", value_name = "FILE")]
    pub(crate) relay_ca: Option<PathBuf>,
    /// Bind the iroh endpoint to this address only (default: all interfaces, random port);
    /// given twice, an IPv4 and an IPv6 address, to both (`--bind 0.0.0.0:7001 --bind
    /// [::]:7001`: one fixed port on both, where the machine has IPv6). A fixed port keeps
    /// the long address valid across restarts.
    #[arg(long, global = true, value_name = "IP:PORT")]
    pub(crate) bind: Vec<SocketAddr>,
    /// QUIC congestion controller: `tolerant` (Cubic that ignores random loss), `cubic`,
    /// `new-reno` or `bbr` (docs/BENCHMARKS.md says how each behaves on lossy links).
    #[arg(
        long,
        global = true,
        env = "N2P_CONGESTION",
        value_name = "tolerant|cubic|new-reno|bbr",
        default_value_t
    )]
    pub(crate) congestion: CongestionControl,
    /// The n2p home directory (keys, sockets, personal config).
    #[arg(long, global = true, env = "N2P_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// The running node's control socket, which `n2p status` asks [default:
    /// $N2P_HOME/control.sock]. A system service puts it where a group can reach it.
    #[arg(long, global = true, env = "N2P_CONTROL_SOCKET", value_name = "PATH")]
    pub(crate) control_socket: Option<PathBuf>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print this node's endpoint id (its public identity).
    Id,
    /// Share this machine's nix-daemon with clients that hold its address.
    Server(ServerArgs),
    /// Open a local unix socket that reaches a server's nix-daemon.
    Client(ClientArgs),
    /// Replace the access secret: addresses printed before stop working.
    RotateSecret,
    /// Team mesh: named peers on a gossip topic, a socket per live peer.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// What the running mesh node sees.
    Status(StatusArgs),
    /// Print a shell completion script (e.g. `n2p completions bash > /etc/bash_completion.d/n2p`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page, n2p(1), in roff (`n2p man | man -l -`).
    Man,
    /// Check this machine's set-up (daemon, trust, team file and secret, relay, clock,
    /// peers directory) and say how to fix what is wrong; exits 1 when something is.
    Doctor(DoctorArgs),
    /// Print this node's Nix public key (creating its signing key on first use), for the
    /// `nix_key` of its team file entry.
    Key(KeyArgs),
    /// Print the nix.conf lines that let this machine's Nix substitute from the facade.
    Trust(TrustArgs),
}

/// `n2p doctor`: the flags of `n2p mesh join` that say where things are.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// The team file [default: `team` in $N2P_HOME/config.toml].
    #[arg(long, value_name = "FILE")]
    pub(crate) team: Option<PathBuf>,
    /// The nix-daemon socket [default: config, $NIX_DAEMON_SOCKET_PATH, /nix/var/nix/daemon-socket/socket].
    #[arg(long, value_name = "PATH")]
    pub(crate) daemon_socket: Option<PathBuf>,
    /// The peers directory and team secret, as for `n2p mesh join`.
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
}

/// Shells `n2p completions` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Shell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

/// `n2p key`.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// The name a NEW key gets, as `<name>-n2p-1` [default: config `name`, else host name].
    #[arg(long)]
    pub(crate) name: Option<String>,
}

/// `n2p trust`.
#[derive(Debug, Args)]
pub(crate) struct TrustArgs {
    /// The team file whose members' `nix_key`s to trust [default: `team` in config.toml].
    #[arg(long, value_name = "FILE")]
    pub(crate) team: Option<PathBuf>,
    /// Also trust this Nix public key (`name:base64`, as `n2p key` prints it; repeatable):
    /// for the `n2p server` of a server/client pair.
    #[arg(long = "key", value_name = "NAME:BASE64")]
    pub(crate) keys: Vec<String>,
    /// The facade's address [default: config `cache`, else 127.0.0.1:5496].
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) cache: Option<SocketAddr>,
}

/// Options of the local binary-cache facade.
#[derive(Debug, Args)]
pub(crate) struct CacheArgs {
    /// How long a narinfo request waits for peers before answering 404 (a peer further away
    /// than a twelfth of it, and heard from meanwhile, gets 12 of its round trips, up to 5 s).
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
    pub(crate) narinfo_deadline: Duration,
}

/// `n2p mesh …`.
#[derive(Debug, Subcommand)]
pub(crate) enum MeshCommand {
    /// Join a topic and keep $N2P_HOME/peers/<name>.sock for every live peer that shares.
    Join(Box<JoinArgs>),
    /// List the live peers of the running node.
    Peers(StatusArgs),
    /// Print a ticket that lets a teammate without fixed addresses join.
    Invite(InviteArgs),
    /// Print a fresh random team secret (save it with mode 0600 and share it privately).
    NewSecret,
}

/// `n2p mesh join`.
#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// The topic name; with the team secret it gives the gossip topic.
    pub(crate) topic: String,
    /// The team file [default: `team` in $N2P_HOME/config.toml].
    #[arg(long, value_name = "FILE")]
    pub(crate) team: Option<PathBuf>,
    /// The name to announce (a team file entry for my id wins) [default: config, else host name].
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Share my nix-daemon with the team (the default unless config.toml says `share = false`).
    #[arg(long, conflicts_with = "no_share")]
    pub(crate) share: bool,
    /// Do not share my nix-daemon; I can still push to others.
    #[arg(long)]
    pub(crate) no_share: bool,
    /// My nix-daemon socket [default: config, $NIX_DAEMON_SOCKET_PATH, /nix/var/nix/daemon-socket/socket].
    #[arg(long, value_name = "PATH")]
    pub(crate) daemon_socket: Option<PathBuf>,
    /// An invite ticket from `n2p mesh invite` (repeatable).
    #[arg(long, value_name = "TICKET")]
    pub(crate) ticket: Vec<String>,
    /// Serve the binary cache for Nix (pulls from live peers) at this loopback address
    /// [default: config `cache`, else 127.0.0.1:5496].
    #[arg(long, value_name = "IP:PORT", conflicts_with = "no_cache")]
    pub(crate) cache: Option<SocketAddr>,
    /// Run no binary cache.
    #[arg(long)]
    pub(crate) no_cache: bool,
    #[command(flatten)]
    pub(crate) cache_options: CacheArgs,
    /// Where the service keeps things.
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
    /// Close a connection to a peer (a peer socket's, or the cache's) after this many
    /// milliseconds without use [default: 60000]. Hidden: for tests that watch the close
    /// happen.
    #[arg(long, value_name = "MS", hide = true)]
    pub(crate) peer_idle_close_ms: Option<u64>,
}

/// Where a node (or `n2p doctor`) finds its peers directory and team secret: what a system
/// service sets.
#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// Where the peer sockets go [default: `peers_dir` in config.toml, else $N2P_HOME/peers].
    #[arg(long, value_name = "DIR")]
    pub(crate) peers_dir: Option<PathBuf>,
    /// Share the peer sockets (0660, in a 0750 directory) and the control socket with this
    /// Unix group (a name or gid) [default: `peers_group` in config.toml, else owner only].
    #[arg(long, value_name = "GROUP")]
    pub(crate) peers_group: Option<String>,
    /// Read the team secret from this absolute path instead of what the team file names.
    #[arg(long, value_name = "PATH", conflicts_with = "secret_credential")]
    pub(crate) secret_file: Option<PathBuf>,
    /// Read the team secret from the systemd credential NAME ($CREDENTIALS_DIRECTORY/NAME,
    /// from `LoadCredential=NAME:…`) instead of what the team file names.
    #[arg(long, value_name = "NAME")]
    pub(crate) secret_credential: Option<String>,
}

/// `n2p mesh invite`.
#[derive(Debug, Args)]
pub(crate) struct InviteArgs {
    /// The topic the running node is in.
    pub(crate) topic: String,
}

/// `n2p status` and `n2p mesh peers`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON, for scripts.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `n2p server`.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// The nix-daemon socket to forward to [default: $NIX_DAEMON_SOCKET_PATH, else
    /// /nix/var/nix/daemon-socket/socket].
    #[arg(long, value_name = "PATH")]
    pub(crate) daemon_socket: Option<PathBuf>,
    /// Only these client identities may connect (repeatable); they still need the address.
    #[arg(long, value_name = "ENDPOINT_ID")]
    pub(crate) allow: Vec<EndpointId>,
}

/// `n2p client`.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The server's address, as `n2p server` printed it (short or long).
    pub(crate) address: String,
    /// Where to create the socket [default: a fresh name under $N2P_HOME/clients/].
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// How long to wait for the server before giving up.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub(crate) connect_timeout: Duration,
    /// Also serve a binary cache for Nix at this address (loopback), answered from the
    /// server's store: `nix copy --from http://ADDR`, or a substituter.
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) cache: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) cache_options: CacheArgs,
    /// Close the cache's connection to the server after this many milliseconds without use
    /// [default: 60000]. Hidden: for the benchmark of lookups on a reconnection.
    #[arg(long, value_name = "MS", hide = true)]
    pub(crate) peer_idle_close_ms: Option<u64>,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("'{s}' is out of range (0 < seconds <= 86400)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Checks that every `--bind` on the command line (`args`, the program name first) reached
/// the `parsed` list: clap keeps a global option's values from one level only (before or
/// after the subcommand), so `n2p --bind A mesh join --bind B` would silently lose one.
pub(crate) fn binds_in_one_place(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    parsed: usize,
) -> Result<(), String> {
    let given = args
        .into_iter()
        .skip(1)
        .take_while(|arg| arg != "--")
        .filter(|arg| {
            let arg = arg.to_string_lossy();
            arg == "--bind" || arg.starts_with("--bind=")
        })
        .count();
    if given > parsed {
        return Err(
            "--bind given both before and after the subcommand: give every --bind in one place (e.g. `n2p --bind 0.0.0.0:7000 --bind [::]:7000 mesh join ...`)".to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let before =
            Cli::try_parse_from(["n2p", "--relay", "disabled", "--bind", "127.0.0.1:0", "id"])
                .expect("before");
        let after =
            Cli::try_parse_from(["n2p", "id", "--relay", "disabled", "--bind", "127.0.0.1:0"])
                .expect("after");
        for cli in [before, after] {
            assert_eq!(cli.global.relay, Some(RelayChoice::Disabled));
            assert_eq!(cli.global.bind, ["127.0.0.1:0".parse().expect("addr")]);
        }
    }

    #[test]
    fn binds_split_around_the_subcommand_are_refused() {
        let check = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).expect("parses");
            binds_in_one_place(
                args.iter().map(std::ffi::OsString::from),
                cli.global.bind.len(),
            )
        };
        let v4 = "0.0.0.0:7000";
        let v6 = "[::]:7000";
        assert!(check(&["n2p", "--bind", v4, "--bind", v6, "id"]).is_ok());
        assert!(check(&["n2p", "id", "--bind", v4, &format!("--bind={v6}")]).is_ok());
        let split = check(&["n2p", "--bind", v4, "id", "--bind", v6]).expect_err("split");
        assert!(split.contains("in one place"), "{split}");
        // Arguments after `--` are not options.
        assert!(binds_in_one_place(["n2p", "id", "--", "--bind"].map(Into::into), 0).is_ok());
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Cli::try_parse_from(["n2p", "--relay", "maybe", "id"]).is_err());
        assert!(Cli::try_parse_from(["n2p", "--bind", "nowhere", "id"]).is_err());
        assert!(Cli::try_parse_from(["n2p", "server", "--allow", "not-an-id"]).is_err());
        assert!(Cli::try_parse_from(["n2p", "client", "x", "--connect-timeout", "-1"]).is_err());
    }
}
