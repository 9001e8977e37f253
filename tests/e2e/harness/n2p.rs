//! Running the n2p binary under test: a home directory per node, long-running `server` and
//! `client` processes whose logs the tests read, and one-shot commands like `id`.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::{ScratchDir, expect_success, run_bounded, wait_bounded};

/// The binary under test.
const N2P: &str = env!("CARGO_BIN_EXE_n2p");

/// Longest a one-shot command (`id`, `rotate-secret`) may take.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest a server or client may take to log that it is ready.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a process may take to exit after SIGTERM or SIGINT.
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// A free UDP port on 127.0.0.1 (iroh speaks QUIC over UDP), found by binding port 0. Another
/// process could take it before n2p binds it, but the kernel hands out random ports, so that
/// is rare enough for tests.
pub(crate) fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket to find a port");
    socket
        .local_addr()
        .expect("reading the UDP socket's address")
        .port()
}

/// A loopback address with a free UDP port, for `--bind`.
pub(crate) fn free_loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_udp_port()))
}

/// An n2p command for no home in particular (`n2p mesh new-secret` needs none): `RUST_LOG`
/// unset (default log level), no colours in the logs.
pub(crate) fn n2p_command() -> Command {
    let mut command = Command::new(N2P);
    command.env_remove("RUST_LOG").env("NO_COLOR", "1");
    command
}

/// One n2p node's home directory (`N2P_HOME`): its keys and secret live there.
pub(crate) struct N2pHome {
    dir: ScratchDir,
}

impl N2pHome {
    /// A fresh, empty home.
    pub(crate) fn new() -> Self {
        Self {
            dir: ScratchDir::new("home"),
        }
    }

    /// A fresh, empty home inside `parent`.
    pub(crate) fn new_in(parent: &Path) -> Self {
        Self {
            dir: ScratchDir::new_in(parent, "home"),
        }
    }

    /// The home directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// An n2p command for this home: [`n2p_command`] with `N2P_HOME` set. Global options
    /// are up to the caller.
    pub(crate) fn command(&self) -> Command {
        let mut command = n2p_command();
        command.env("N2P_HOME", self.dir.path());
        command
    }

    /// Runs n2p with `args` to completion (bounded) and returns its output.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        run_bounded(
            self.command().args(args),
            COMMAND_TIMEOUT,
            &format!("n2p {}", args.join(" ")),
        )
    }

    /// This node's endpoint id, as printed by `n2p id`.
    pub(crate) fn id(&self) -> String {
        let stdout = expect_success(&self.run(&["id"]), "n2p id");
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(
            lines.len() == 1 && !lines[0].trim().is_empty(),
            "n2p id should print exactly one line, printed {stdout:?}"
        );
        lines[0].trim().to_owned()
    }

    /// Runs `n2p rotate-secret`, which invalidates every address handed out so far.
    pub(crate) fn rotate_secret(&self) {
        expect_success(&self.run(&["rotate-secret"]), "n2p rotate-secret");
    }

    /// Starts `n2p server` with this home, relays disabled, and waits for its addresses.
    ///
    /// Global options go BEFORE the subcommand here (and after it in [`Self::client`]), so
    /// the suite covers both placements the CLI accepts.
    pub(crate) fn server(&self, config: &ServerConfig) -> Server<'_> {
        let bind = config.bind.to_string();
        let mut command = self.command();
        command
            .args(["--relay", "disabled", "--bind", &bind, "server"])
            .arg("--daemon-socket")
            .arg(&config.daemon_socket);
        for id in &config.allow {
            command.args(["--allow", id]);
        }
        let process = N2pProcess::spawn("server", command);
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
    pub(crate) fn client(&self, address: &str, socket: &Path) -> Client<'_> {
        let bind = free_loopback_addr().to_string();
        let mut command = self.command();
        command
            .args(["client", address, "--socket"])
            .arg(socket)
            .args(["--relay", "disabled", "--bind", &bind]);
        Client {
            process: N2pProcess::spawn("client", command),
            socket: socket.to_owned(),
            _home: self,
        }
    }
}

/// What to start `n2p server` with.
pub(crate) struct ServerConfig {
    /// The nix-daemon socket the server forwards to (`--daemon-socket`).
    pub(crate) daemon_socket: PathBuf,
    /// The `--bind` address: loopback, with a fixed port when a test restarts the server.
    pub(crate) bind: SocketAddr,
    /// Endpoint ids given as `--allow`; empty means no allow list.
    pub(crate) allow: Vec<String>,
}

impl ServerConfig {
    /// Forward to `daemon_socket`, bind a free loopback port, no allow list.
    pub(crate) fn new(daemon_socket: &Path) -> Self {
        Self {
            daemon_socket: daemon_socket.to_owned(),
            bind: free_loopback_addr(),
            allow: Vec::new(),
        }
    }
}

/// A running `n2p server` and the addresses it logged. Borrows its home, which must outlive
/// the process.
pub(crate) struct Server<'home> {
    /// The process; killed on drop.
    pub(crate) process: N2pProcess,
    /// The last word of the `long address:` line.
    pub(crate) long_address: String,
    /// The last word of the `short address:` line.
    pub(crate) short_address: String,
    _home: &'home N2pHome,
}

impl Server<'_> {
    /// Sends SIGTERM and waits (bounded) for the server to exit, so its port is free again.
    pub(crate) fn stop(mut self) {
        self.process.signal(Signal::Term);
        self.process.wait(SHUTDOWN_TIMEOUT);
    }
}

/// A running `n2p client` and the socket it was told to listen on. Borrows its home, which
/// must outlive the process.
pub(crate) struct Client<'home> {
    /// The process; killed on drop.
    pub(crate) process: N2pProcess,
    /// The `--socket` path.
    pub(crate) socket: PathBuf,
    _home: &'home N2pHome,
}

impl Client<'_> {
    /// Waits for the client's `unix:<path>` line and checks that it names our socket.
    pub(crate) fn wait_until_listening(&self) {
        let line = self.process.wait_for_line("unix:", STARTUP_TIMEOUT);
        self.check_listening_line(&line);
    }

    /// Like [`Self::wait_until_listening`], but returns false instead of panicking if the
    /// client exits first (a client may give up at once when the server refuses it).
    pub(crate) fn wait_until_listening_or_exit(&self) -> bool {
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
    pub(crate) fn store_url(&self) -> String {
        super::nix::socket_store_url(&self.socket)
    }

    /// Sends `signal` and waits (bounded) for the client to exit.
    pub(crate) fn stop(&mut self, signal: Signal) -> ExitStatus {
        self.process.signal(signal);
        self.process.wait(SHUTDOWN_TIMEOUT)
    }
}

/// The last whitespace-separated word of a log line (where the contract puts addresses).
pub(crate) fn last_word(line: &str) -> String {
    line.split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// Signals the tests send to n2p processes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Signal {
    /// SIGTERM: what service managers send.
    Term,
    /// SIGINT: what Ctrl-C sends.
    Int,
}

impl Signal {
    fn kill_flag(self) -> &'static str {
        match self {
            Signal::Term => "-TERM",
            Signal::Int => "-INT",
        }
    }
}

/// A long-running n2p process whose stderr is collected line by line (and echoed to the
/// test's own output, prefixed with its label, so failing tests show it). Killed on drop.
pub(crate) struct N2pProcess {
    label: String,
    child: Child,
    log: Arc<Log>,
}

/// A position in an [`N2pProcess`]'s stderr, from [`N2pProcess::mark`].
pub(crate) struct LogMark(usize);

/// The stderr lines of an [`N2pProcess`] so far, shared with its reader thread.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// Set when stderr reached its end, which happens when the process exits.
    closed: bool,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A reader thread that panicked leaves usable lines behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl N2pProcess {
    /// Spawns `command` with piped output; `label` prefixes its echoed lines.
    pub(crate) fn spawn(label: impl Into<String>, mut command: Command) -> Self {
        let label = label.into();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {command:?}: {error}"));
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr_log = Arc::clone(&log);
        let stderr_label = label.clone();
        let stdout_label = label.clone();
        thread::spawn(move || {
            for_each_line(stderr, |line| {
                eprintln!("[{stderr_label}] {line}");
                stderr_log.lock().lines.push(line);
                stderr_log.changed.notify_all();
            });
            stderr_log.lock().closed = true;
            stderr_log.changed.notify_all();
        });
        thread::spawn(move || {
            for_each_line(stdout, |line| eprintln!("[{stdout_label} stdout] {line}"));
        });
        Self { label, child, log }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a stderr line containing `needle` (searching from the
    /// first line) and returns it; panics, with the stderr so far, if the process exits
    /// first or the time runs out.
    pub(crate) fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line_since(&LogMark(0), needle, timeout)
    }

    /// Like [`Self::wait_for_line`], but only lines logged after `mark` count.
    pub(crate) fn wait_for_line_since(
        &self,
        mark: &LogMark,
        needle: &str,
        timeout: Duration,
    ) -> String {
        self.wait_for_since(mark, needle, timeout)
            .unwrap_or_else(|| {
                panic!(
                    "{} exited before logging a line containing {needle:?}; its stderr:\n{}",
                    self.label,
                    self.stderr()
                )
            })
    }

    /// Like [`Self::wait_for_line`], but returns None if the process's stderr ends (it
    /// exited) without such a line. Still panics when the time runs out.
    pub(crate) fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_for_since(&LogMark(0), needle, timeout)
    }

    /// The end of the stderr read so far: lines logged from now on come after it.
    pub(crate) fn mark(&self) -> LogMark {
        LogMark(self.log.lock().lines.len())
    }

    fn wait_for_since(&self, mark: &LogMark, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.log.lock();
        loop {
            let since = state.lines.get(mark.0..).unwrap_or_default();
            if let Some(line) = since.iter().find(|line| line.contains(needle)) {
                return Some(line.clone());
            }
            if state.closed {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                panic!(
                    "{} did not log a line containing {needle:?} within {timeout:?}; \
                     its stderr:\n{}",
                    self.label,
                    self.stderr()
                );
            }
            state = self
                .log
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Everything the process wrote to stderr so far, one line per line.
    pub(crate) fn stderr(&self) -> String {
        self.log.lock().lines.join("\n")
    }

    /// Sends `signal` with the `kill` utility.
    pub(crate) fn signal(&self, signal: Signal) {
        let pid = self.pid().to_string();
        let output = run_bounded(
            Command::new("kill").args([signal.kill_flag(), &pid]),
            Duration::from_secs(5),
            &format!("kill {} {pid}", signal.kill_flag()),
        );
        expect_success(&output, &format!("sending {signal:?} to {}", self.label));
    }

    /// Whether the process has not exited yet.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = wait_bounded(&mut self.child, SHUTDOWN_TIMEOUT);
    }

    /// Waits up to `timeout` for the process to exit and for its stderr to be read to the
    /// end; panics with its stderr if it does not exit in time.
    pub(crate) fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        let Some(status) = wait_bounded(&mut self.child, timeout) else {
            panic!(
                "{} did not exit within {timeout:?}; its stderr:\n{}",
                self.label,
                self.stderr()
            );
        };
        // The reader thread sees the end of stderr right after the exit, unless a child
        // process of n2p inherited it; don't wait for long in that case.
        let deadline = started + timeout + Duration::from_secs(2);
        let mut state = self.log.lock();
        while !state.closed && Instant::now() < deadline {
            state = self
                .log
                .changed
                .wait_timeout(state, deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        status
    }
}

impl Drop for N2pProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Calls `f` with each line read from `pipe` (lossy UTF-8, ANSI colour codes removed) until
/// the pipe ends.
fn for_each_line(pipe: impl Read, mut f: impl FnMut(String)) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                f(strip_ansi(line.trim_end_matches(['\n', '\r'])));
            }
        }
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case the logger colours its output
/// despite `NO_COLOR`.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
