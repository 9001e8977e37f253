//! Child processes, always bounded: one-shot commands run to completion within a timeout
//! ([`run_bounded`], [`try_run_timed`]) and long-running processes whose output is read line
//! by line, waited on ("wait for a line containing ...") and killed on drop ([`Process`]).
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use n2p_testkit::proc::{Process, expect_success, run_bounded};
//!
//! let output = run_bounded(Command::new("true").arg("x"), Duration::from_secs(5), "true");
//! expect_success(&output, "true");
//!
//! let server = Process::spawn("server", &mut Command::new("my-server"));
//! let line = server.wait_for_line("listening on", Duration::from_secs(10));
//! ```

use std::env;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::Failure;
use crate::wait::{MEASURING_POLL_INTERVAL, POLL_INTERVAL, poll_until};

/// Longest [`Process::kill`] waits for the killed process to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(15);

/// Signals sent to child processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: what service managers send.
    Term,
    /// SIGINT: what Ctrl-C sends.
    Int,
    /// SIGKILL: no chance to clean up.
    Kill,
    /// SIGSTOP: freezes the process (a stalled client) until [`Signal::Cont`].
    Stop,
    /// SIGCONT: resumes a stopped process.
    Cont,
    /// SIGHUP: what `systemctl reload` sends to n2p (reload the team file).
    Hup,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
            Signal::Hup => libc::SIGHUP,
        }
    }
}

/// Sends `signal` to process `pid`, which should be a child of ours not yet reaped (so the
/// id cannot have been reused).
pub fn signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal.number()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The path of an executable file called `program` in one of the `PATH` directories.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The end of `text`, at most `max` bytes (on a character boundary): for logs in messages.
pub fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Waits for `child` with a blocking wait (so the exit is seen the moment it happens) while
/// a watchdog thread kills it if it is still running after `timeout`. Returns the exit
/// status and whether the watchdog killed it.
fn wait_with_watchdog(child: &mut Child, timeout: Duration) -> io::Result<(ExitStatus, bool)> {
    let pid = child.id();
    let (done, watch) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(timeout) {
            // The child is not reaped before wait() returns, so the pid is still ours.
            let _ = signal(pid, Signal::Kill);
            true
        } else {
            false
        }
    });
    let status = child.wait();
    let _ = done.send(());
    let killed = watchdog.join().unwrap_or(false);
    Ok((status?, killed))
}

/// Runs `command` to completion with stdin closed, collecting its output, and panics if it
/// takes longer than `timeout` (killing it). `what` names the command in the panic message.
pub fn run_bounded(command: &mut Command, timeout: Duration, what: &str) -> Output {
    try_run_bounded(command, timeout, what).unwrap_or_else(|failure| panic!("{failure}"))
}

/// Like [`run_bounded`], but fails instead of panicking when the command cannot start or
/// overruns. A command that runs and exits non-zero is no failure here: see its status.
pub fn try_run_bounded(
    command: &mut Command,
    timeout: Duration,
    what: &str,
) -> Result<Output, Failure> {
    let mut child = spawn_piped(command, what)?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let (status, killed) = wait_with_watchdog(&mut child, timeout)
        .map_err(|error| Failure::new(format!("{what}: waiting for it: {error}")))?;
    if killed {
        let stderr = join_drain(stderr);
        return Err(Failure::new(format!(
            "{what}: did not finish within {timeout:?} (killed); its stderr:\n{}",
            String::from_utf8_lossy(&stderr)
        )));
    }
    Ok(Output {
        status,
        stdout: join_drain(stdout),
        stderr: join_drain(stderr),
    })
}

/// Returns stdout of a finished command, or panics with its status and stderr if it failed.
pub fn expect_success(output: &Output, what: &str) -> String {
    success_stdout(output, what).unwrap_or_else(|failure| panic!("{failure}"))
}

/// Like [`expect_success`], but fails instead of panicking.
pub fn success_stdout(output: &Output, what: &str) -> Result<String, Failure> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Failure::new(format!(
            "{what} failed ({}); its stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// Waits up to `timeout` for `child` to exit; None if it is still running then.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let id = child.id();
    poll_until(timeout, POLL_INTERVAL, || match child.try_wait() {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err(()),
        Err(error) => panic!("waiting for child process {id}: {error}"),
    })
    .ok()
}

/// Spawns `command` with stdin closed and both output streams piped; `what` names it in
/// the failure.
fn spawn_piped(command: &mut Command, what: &str) -> Result<Child, Failure> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| Failure::new(format!("{what}: cannot start {command:?}: {error}")))
}

/// Reads a pipe to its end on a thread of its own, so that a chatty child never blocks.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// The bytes a [`drain`] thread collected.
fn join_drain(handle: JoinHandle<Vec<u8>>) -> Vec<u8> {
    handle.join().expect("pipe reader thread panicked")
}

/// A finished command run by [`try_run_timed`].
#[derive(Debug)]
pub struct Timed {
    /// From just before spawning to the exit, seen by a blocking wait.
    pub elapsed: Duration,
    /// How it exited.
    pub status: ExitStatus,
    /// What it printed on stderr.
    pub stderr: String,
}

impl Timed {
    /// Fails with the end of the command's stderr unless it exited with 0.
    pub fn check(self, what: &str) -> Result<Self, Failure> {
        if !self.status.success() {
            return Err(Failure::new(format!(
                "{what} failed ({}): {}",
                self.status,
                tail(&self.stderr, 2000)
            )));
        }
        Ok(self)
    }
}

/// Runs `command` to completion with stdin closed, stdout to the file `stdout` (or
/// discarded) and stderr to `stderr_file`, and times it with a blocking wait (no polling
/// interval in the measurement). Kills it and fails after `timeout`.
pub fn try_run_timed(
    command: &mut Command,
    stdout: Option<&Path>,
    stderr_file: &Path,
    timeout: Duration,
) -> Result<Timed, Failure> {
    let io_failure = |what: &str, error: io::Error| Failure::new(format!("{what}: {error}"));
    let err = File::create(stderr_file)
        .map_err(|e| io_failure(&format!("creating {}", stderr_file.display()), e))?;
    let out = match stdout {
        Some(path) => Stdio::from(
            File::create(path)
                .map_err(|e| io_failure(&format!("creating {}", path.display()), e))?,
        ),
        None => Stdio::null(),
    };
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| io_failure(&format!("starting {command:?}"), e))?;
    let (status, killed) = wait_with_watchdog(&mut child, timeout)
        .map_err(|e| io_failure(&format!("waiting for {command:?}"), e))?;
    let elapsed = started.elapsed();
    let stderr = fs::read(stderr_file)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    if killed {
        return Err(Failure::new(format!(
            "{command:?} did not finish within {timeout:?} (killed): {}",
            tail(&stderr, 2000)
        )));
    }
    Ok(Timed {
        elapsed,
        status,
        stderr,
    })
}

/// A long-running child process whose output is read line by line (lossy UTF-8, ANSI
/// colour codes removed) into a log that can be waited on. Killed on drop.
///
/// [`Process::spawn`] logs stderr and echoes both streams to our own stderr, prefixed with
/// the label, so a failing test shows them; [`Process::try_spawn_logged`] logs both streams
/// and appends them to a file, echoing nothing.
pub struct Process {
    label: String,
    child: Child,
    log: Arc<Log>,
}

/// A position in a [`Process`]'s log, from [`Process::mark`].
#[derive(Debug, Clone, Copy)]
pub struct LogMark(usize);

/// The logged lines of a [`Process`] so far, shared with its reader threads.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// How many streams feeding `lines` have not reached their end yet.
    open: usize,
}

impl LogState {
    /// Whether every stream feeding the log has ended, which happens when the process exits.
    fn closed(&self) -> bool {
        self.open == 0
    }
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A reader thread that panicked leaves usable lines behind.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a reader thread sends the lines of one stream.
struct LineSink {
    /// Into the process's log (what waits search).
    log: Option<Arc<Log>>,
    /// Echoed to our stderr with this prefix.
    echo: Option<String>,
    /// Appended to this file.
    file: Option<Arc<Mutex<File>>>,
}

impl LineSink {
    fn take(&self, line: String) {
        if let Some(prefix) = &self.echo {
            eprintln!("[{prefix}] {line}");
        }
        if let Some(file) = &self.file {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = writeln!(file, "{line}");
        }
        if let Some(log) = &self.log {
            log.lock().lines.push(line);
            log.changed.notify_all();
        }
    }

    fn close(&self) {
        if let Some(log) = &self.log {
            log.lock().open -= 1;
            log.changed.notify_all();
        }
    }
}

/// What a wait for a line found.
enum LineWait {
    Found(String),
    Exited,
    TimedOut,
}

impl Process {
    /// Spawns `command` with piped output; `label` prefixes its echoed lines. Stderr lines
    /// go into the log that waits search; stdout is only echoed. Panics if it cannot start.
    pub fn spawn(label: impl Into<String>, command: &mut Command) -> Self {
        let label = label.into();
        let stderr = LineSink {
            log: None,
            echo: Some(label.clone()),
            file: None,
        };
        let stdout = LineSink {
            log: None,
            echo: Some(format!("{label} stdout")),
            file: None,
        };
        Self::start(label, command, stdout, stderr, false)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Spawns `command` with both output streams going into the log that waits search and
    /// into the file `log_file` (created); nothing is echoed. `label` names the process in
    /// failures.
    pub fn try_spawn_logged(
        label: impl Into<String>,
        command: &mut Command,
        log_file: &Path,
    ) -> Result<Self, Failure> {
        let label = label.into();
        let file = File::create(log_file)
            .map_err(|error| Failure::new(format!("creating {}: {error}", log_file.display())))?;
        let file = Arc::new(Mutex::new(file));
        let sink = || LineSink {
            log: None,
            echo: None,
            file: Some(Arc::clone(&file)),
        };
        Self::start(label, command, sink(), sink(), true)
    }

    /// Spawns `command` and a reader thread per output stream. The stderr sink always feeds
    /// the log; the stdout sink too when `stdout_in_log`.
    fn start(
        label: String,
        command: &mut Command,
        mut stdout_sink: LineSink,
        mut stderr_sink: LineSink,
        stdout_in_log: bool,
    ) -> Result<Self, Failure> {
        let mut child = spawn_piped(command, &label)?;
        let log = Arc::new(Log::default());
        log.lock().open = 1 + usize::from(stdout_in_log);
        stderr_sink.log = Some(Arc::clone(&log));
        if stdout_in_log {
            stdout_sink.log = Some(Arc::clone(&log));
        }
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        for (pipe, sink) in [
            (Box::new(stderr) as Box<dyn Read + Send>, stderr_sink),
            (Box::new(stdout), stdout_sink),
        ] {
            thread::spawn(move || {
                for_each_line(pipe, |line| sink.take(line));
                sink.close();
            });
        }
        Ok(Self { label, child, log })
    }

    /// The label given at spawn.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a log line containing `needle` (searching from the first
    /// line) and returns it; panics, with the log so far, if the process exits first or the
    /// time runs out.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line_since(&LogMark(0), needle, timeout)
    }

    /// Like [`Self::wait_for_line`], but only lines logged after `mark` count.
    pub fn wait_for_line_since(&self, mark: &LogMark, needle: &str, timeout: Duration) -> String {
        self.try_wait_for_line_since(mark, needle, timeout)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Like [`Self::wait_for_line`], but returns None if the log ends (the process exited)
    /// without such a line. Still panics when the time runs out.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        match self.look_for(&LogMark(0), needle, timeout) {
            LineWait::Found(line) => Some(line),
            LineWait::Exited => None,
            LineWait::TimedOut => panic!("{}", self.timed_out(needle, timeout)),
        }
    }

    /// Like [`Self::wait_for_line`], but fails instead of panicking.
    pub fn try_wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String, Failure> {
        self.try_wait_for_line_since(&LogMark(0), needle, timeout)
    }

    fn try_wait_for_line_since(
        &self,
        mark: &LogMark,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, Failure> {
        match self.look_for(mark, needle, timeout) {
            LineWait::Found(line) => Ok(line),
            LineWait::Exited => Err(Failure::new(format!(
                "{} exited before logging a line containing {needle:?}; its log:\n{}",
                self.label,
                self.log_text()
            ))),
            LineWait::TimedOut => Err(self.timed_out(needle, timeout)),
        }
    }

    fn timed_out(&self, needle: &str, timeout: Duration) -> Failure {
        Failure::new(format!(
            "{} did not log a line containing {needle:?} within {timeout:?}; its log:\n{}",
            self.label,
            self.log_text()
        ))
    }

    /// The end of the log read so far: lines logged from now on come after it.
    pub fn mark(&self) -> LogMark {
        LogMark(self.log.lock().lines.len())
    }

    fn look_for(&self, mark: &LogMark, needle: &str, timeout: Duration) -> LineWait {
        let deadline = Instant::now() + timeout;
        let mut state = self.log.lock();
        loop {
            let since = state.lines.get(mark.0..).unwrap_or_default();
            if let Some(line) = since.iter().find(|line| line.contains(needle)) {
                return LineWait::Found(line.clone());
            }
            if state.closed() {
                return LineWait::Exited;
            }
            let now = Instant::now();
            if now >= deadline {
                return LineWait::TimedOut;
            }
            state = self
                .log
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until `path` exists (a socket the process creates) and returns how long that
    /// took, looking every [`MEASURING_POLL_INTERVAL`]; fails, with the log, if the process exits first or `timeout` passes.
    pub fn try_wait_for_path(
        &mut self,
        path: &Path,
        timeout: Duration,
    ) -> Result<Duration, Failure> {
        let started = Instant::now();
        let waited = poll_until(timeout, MEASURING_POLL_INTERVAL, || {
            if path.exists() {
                Ok(())
            } else if !self.is_running() {
                Err("exited before creating")
            } else {
                Err("did not create")
            }
        });
        waited.map(|()| started.elapsed()).map_err(|seen| {
            let within = if seen == "did not create" {
                format!(" within {timeout:?}")
            } else {
                String::new()
            };
            Failure::new(format!(
                "{} {seen} {}{within}; its log:\n{}",
                self.label,
                path.display(),
                tail(&self.log_text(), 2000)
            ))
        })
    }

    /// Everything logged so far, one line per line.
    pub fn log_text(&self) -> String {
        self.log.lock().lines.join("\n")
    }

    /// Sends `signal`; panics if that fails.
    pub fn signal(&self, sig: Signal) {
        signal(self.pid(), sig)
            .unwrap_or_else(|error| panic!("sending {sig:?} to {}: {error}", self.label));
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = wait_bounded(&mut self.child, REAP_TIMEOUT);
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; kills the process if it is
    /// still running then. Does nothing if it has exited already.
    pub fn stop(&mut self, timeout: Duration) {
        if !self.is_running() {
            return;
        }
        let _ = signal(self.pid(), Signal::Term);
        if wait_bounded(&mut self.child, timeout).is_none() {
            self.kill();
        }
    }

    /// Waits up to `timeout` for the process to exit and for its log to be read to the end;
    /// panics with its log if it does not exit in time.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        let Some(status) = wait_bounded(&mut self.child, timeout) else {
            panic!(
                "{} did not exit within {timeout:?}; its log:\n{}",
                self.label,
                self.log_text()
            );
        };
        // The reader threads see the end of the output right after the exit, unless a child
        // process inherited it; don't wait for long in that case.
        let deadline = started + timeout + Duration::from_secs(2);
        let mut state = self.log.lock();
        while !state.closed() && Instant::now() < deadline {
            state = self
                .log
                .changed
                .wait_timeout(state, deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
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

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case a logger colours its output
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("hello", 3), "llo");
        assert_eq!(tail("hi", 10), "hi");
        assert_eq!(tail("aé", 1), "");
    }

    #[test]
    fn ansi_colours_are_removed() {
        assert_eq!(strip_ansi("\u{1b}[1;32mINFO\u{1b}[0m ready"), "INFO ready");
    }

    #[test]
    fn a_logged_process_is_waited_on_by_line_and_its_file_gets_both_streams() {
        let dir = crate::dir::ScratchDir::new("proc");
        let log = dir.join("sh.log");
        let process = Process::try_spawn_logged(
            "sh",
            Command::new("sh").args(["-c", "echo out; echo err >&2; sleep 5"]),
            &log,
        )
        .expect("starting sh");
        process.wait_for_line("out", Duration::from_secs(5));
        process.wait_for_line("err", Duration::from_secs(5));
        let text = fs::read_to_string(&log).expect("reading the log");
        assert!(text.contains("out\n") && text.contains("err\n"), "{text:?}");
    }

    #[test]
    fn waiting_for_a_line_of_an_exited_process_says_so() {
        let process = Process::spawn("true", &mut Command::new("true"));
        assert_eq!(process.wait_for("never", Duration::from_secs(5)), None);
    }

    #[test]
    fn overrunning_commands_are_killed() {
        let dir = crate::dir::ScratchDir::new("proc");
        let started = Instant::now();
        let result = try_run_timed(
            Command::new("sleep").arg("10"),
            None,
            &dir.join("err"),
            Duration::from_millis(100),
        );
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
