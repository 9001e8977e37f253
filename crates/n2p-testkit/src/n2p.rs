//! Running an n2p binary: a temporary home per node, long-running `server` and `client`
//! processes whose logs are read, and one-shot commands like `id`.
//!
//! The binary's path comes from the caller: the end-to-end tests pass Cargo's
//! `CARGO_BIN_EXE_n2p`, which exists only in the test crate; the benchmark finds its own.
//!
//! ```no_run
//! use n2p_testkit::n2p::{ServerConfig, TempHome};
//!
//! let n2p = std::path::Path::new("target/debug/n2p");
//! let home = TempHome::new(n2p);
//! let server = home.server(&ServerConfig::new(std::path::Path::new("/tmp/daemon.sock")));
//! println!("{} serves at {}", home.id(), server.short_address);
//! ```

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use n2p_core::home::N2pHome;

use crate::dir::ScratchDir;
use crate::net::free_loopback_addr;
use crate::nix::socket_store_url;
use crate::proc::{Process, Signal, expect_success, run_bounded};

/// Longest a one-shot command (`id`, `rotate-secret`) may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest a server or client may take to log that it is ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a process may take to exit after SIGTERM or SIGINT.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// A command running the n2p binary at `n2p` for no home in particular (`n2p mesh
/// new-secret` needs none), with [`plain_logs`].
pub fn n2p_command(n2p: &Path) -> Command {
    let mut command = Command::new(n2p);
    plain_logs(&mut command);
    command
}

/// Sets up `command`'s environment so that n2p logs at its default level (`RUST_LOG`
/// unset) and without colours, which is what waits for log lines expect.
pub fn plain_logs(command: &mut Command) -> &mut Command {
    command.env_remove("RUST_LOG").env("NO_COLOR", "1")
}

/// A temporary n2p home (`N2P_HOME`, where a node keeps its keys and secret), deleted on
/// drop, and the binary that runs with it. The home's layout is [`N2pHome`]'s.
pub struct TempHome {
    n2p: PathBuf,
    home: N2pHome,
    // Last: deleted after everything that may use it.
    _dir: ScratchDir,
}

impl TempHome {
    /// A fresh, empty home under the system's temp dir, for the binary at `n2p`.
    pub fn new(n2p: impl Into<PathBuf>) -> Self {
        Self::with_dir(n2p.into(), ScratchDir::new("home"))
    }

    /// A fresh, empty home inside `parent`, for the binary at `n2p`.
    pub fn new_in(n2p: impl Into<PathBuf>, parent: &Path) -> Self {
        Self::with_dir(n2p.into(), ScratchDir::new_in(parent, "home"))
    }

    fn with_dir(n2p: PathBuf, dir: ScratchDir) -> Self {
        // Private like a home n2p creates itself: n2p refuses a home open to others.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("making {} private: {e}", dir.path().display()));
        Self {
            n2p,
            home: N2pHome::new(dir.path()),
            _dir: dir,
        }
    }

    /// The home, to find the files n2p keeps in it.
    pub fn home(&self) -> &N2pHome {
        &self.home
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        self.home.root()
    }

    /// An n2p command for this home: [`n2p_command`] with `N2P_HOME` set. Global options
    /// are up to the caller.
    pub fn command(&self) -> Command {
        let mut command = n2p_command(&self.n2p);
        command.env("N2P_HOME", self.path());
        command
    }

    /// Runs n2p with `args` to completion (bounded) and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        run_bounded(
            self.command().args(args),
            COMMAND_TIMEOUT,
            &format!("n2p {}", args.join(" ")),
        )
    }

    /// This node's endpoint id, as printed by `n2p id`.
    pub fn id(&self) -> String {
        let stdout = expect_success(&self.run(&["id"]), "n2p id");
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(
            lines.len() == 1 && !lines[0].trim().is_empty(),
            "n2p id should print exactly one line, printed {stdout:?}"
        );
        lines[0].trim().to_owned()
    }

    /// Runs `n2p rotate-secret`, which invalidates every address handed out so far.
    pub fn rotate_secret(&self) {
        expect_success(&self.run(&["rotate-secret"]), "n2p rotate-secret");
    }

    /// Starts `n2p server` with this home, relays disabled, and waits for its addresses.
    ///
    /// Global options go BEFORE the subcommand here (and after it in [`Self::client`]), so
    /// a suite using both covers both placements the CLI accepts.
    pub fn server(&self, config: &ServerConfig) -> Server<'_> {
        let bind = config.bind.to_string();
        let mut command = self.command();
        command
            .args(["--relay", "disabled", "--bind", &bind, "server"])
            .arg("--daemon-socket")
            .arg(&config.daemon_socket);
        for id in &config.allow {
            command.args(["--allow", id]);
        }
        let process = Process::spawn("server", &mut command);
        let long_address = last_word(&process.wait_for_line("long address:", STARTUP_TIMEOUT));
        let short_address = last_word(&process.wait_for_line("short address:", STARTUP_TIMEOUT));
        Server {
            process,
            long_address,
            short_address,
            _home: self,
        }
    }

    /// Starts `n2p client <address> --socket <socket>` with this home, relays disabled and a
    /// loopback bind. Does not wait for it: see [`Client::wait_until_listening`].
    pub fn client(&self, address: &str, socket: &Path) -> Client<'_> {
        self.client_with(address, socket, &[])
    }

    /// Like [`Self::client`], with `extra` arguments (`--cache IP:PORT`, say).
    pub fn client_with(&self, address: &str, socket: &Path, extra: &[&str]) -> Client<'_> {
        let bind = free_loopback_addr().to_string();
        let mut command = self.command();
        command
            .args(["client", address, "--socket"])
            .arg(socket)
            .args(["--relay", "disabled", "--bind", &bind])
            .args(extra);
        Client {
            process: Process::spawn("client", &mut command),
            socket: socket.to_owned(),
            _home: self,
        }
    }
}

/// What to start `n2p server` with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The nix-daemon socket the server forwards to (`--daemon-socket`).
    pub daemon_socket: PathBuf,
    /// The `--bind` address: loopback, with a fixed port when a test restarts the server.
    pub bind: SocketAddr,
    /// Endpoint ids given as `--allow`; empty means no allow list.
    pub allow: Vec<String>,
}

impl ServerConfig {
    /// Forward to `daemon_socket`, bind a free loopback port, no allow list.
    pub fn new(daemon_socket: &Path) -> Self {
        Self {
            daemon_socket: daemon_socket.to_owned(),
            bind: free_loopback_addr(),
            allow: Vec::new(),
        }
    }
}

/// A running `n2p server` and the addresses it logged. Borrows its home, which must outlive
/// the process.
pub struct Server<'home> {
    /// The process; killed on drop.
    pub process: Process,
    /// The last word of the `long address:` line.
    pub long_address: String,
    /// The last word of the `short address:` line.
    pub short_address: String,
    _home: &'home TempHome,
}

impl Server<'_> {
    /// Sends SIGTERM and waits (bounded) for the server to exit, so its port is free again.
    pub fn stop(mut self) {
        self.process.signal(Signal::Term);
        self.process.wait(SHUTDOWN_TIMEOUT);
    }
}

/// A running `n2p client` and the socket it was told to listen on. Borrows its home, which
/// must outlive the process.
pub struct Client<'home> {
    /// The process; killed on drop.
    pub process: Process,
    /// The `--socket` path.
    pub socket: PathBuf,
    _home: &'home TempHome,
}

impl Client<'_> {
    /// Waits for the client's `unix:<path>` line and checks that it names our socket.
    pub fn wait_until_listening(&self) {
        let line = self.process.wait_for_line("unix:", STARTUP_TIMEOUT);
        self.check_listening_line(&line);
    }

    /// Like [`Self::wait_until_listening`], but returns false instead of panicking if the
    /// client exits first (a client may give up at once when the server refuses it).
    pub fn wait_until_listening_or_exit(&self) -> bool {
        match self.process.wait_for("unix:", STARTUP_TIMEOUT) {
            Some(line) => {
                self.check_listening_line(&line);
                true
            }
            None => false,
        }
    }

    fn check_listening_line(&self, line: &str) {
        let word = last_word(line);
        let logged = word.strip_prefix("unix:").unwrap_or_else(|| {
            panic!("the client's line {line:?} should end in unix:<path>, ends in {word:?}")
        });
        assert_eq!(
            Path::new(logged),
            self.socket,
            "the client logged a different socket than --socket"
        );
    }

    /// The store URL of the client's socket, for nix.
    pub fn store_url(&self) -> String {
        socket_store_url(&self.socket)
    }

    /// Sends `signal` and waits (bounded) for the client to exit.
    pub fn stop(&mut self, signal: Signal) -> ExitStatus {
        self.process.signal(signal);
        self.process.wait(SHUTDOWN_TIMEOUT)
    }
}

/// The last whitespace-separated word of a log line (where n2p puts addresses and tickets).
pub fn last_word(line: &str) -> String {
    line.split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned()
}
