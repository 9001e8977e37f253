//! Child processes for the benchmark: long-running services that log to a file and are
//! killed on drop, timed one-shot commands with a watchdog, and what `/proc` says about a
//! process (CPU time, resident memory).
//!
//! Timed commands are waited for with a blocking `wait` (no polling interval in the
//! measurement); a watchdog thread kills them if they overrun.

use std::{
    fs::{self, File},
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// How often waits on files and logs look again.
pub(crate) const POLL: Duration = Duration::from_millis(2);

/// A long-running child process whose stdout and stderr go to a log file; killed on drop.
pub(crate) struct Service {
    label: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Spawns `command` (stdin closed, output to `log`); `label` names it in errors.
    pub(crate) fn spawn(label: &str, command: &mut Command, log: &Path) -> Result<Self> {
        let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {label}: {command:?}"))?;
        Ok(Self {
            label: label.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process logged so far.
    pub(crate) fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for a log line containing `needle` and returns it; fails if the process exits
    /// first or `timeout` passes.
    pub(crate) fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if let Some(line) = text.lines().find(|line| line.contains(needle)) {
                return Ok(line.to_owned());
            }
            if !self.is_running() {
                bail!(
                    "{} exited before logging {needle:?}; its log:\n{}",
                    self.label,
                    tail(&text, 2000)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}; its log:\n{}",
                    self.label,
                    tail(&text, 2000)
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `path` exists (e.g. a socket the process creates); fails if the process
    /// exits first or `timeout` passes.
    pub(crate) fn wait_for_path(&mut self, path: &Path, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if path.exists() {
                return Ok(started.elapsed());
            }
            if !self.is_running() {
                bail!(
                    "{} exited before creating {}; its log:\n{}",
                    self.label,
                    path.display(),
                    tail(&self.log_text(), 2000)
                );
            }
            if started.elapsed() >= timeout {
                bail!(
                    "{} did not create {} within {timeout:?}; its log:\n{}",
                    self.label,
                    path.display(),
                    tail(&self.log_text(), 2000)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM, waits up to `timeout`, then kills.
    pub(crate) fn stop(&mut self, timeout: Duration) {
        if !self.is_running() {
            return;
        }
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

/// Sends `sig` to `pid` (a child of ours).
pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on the id of a child we have not reaped yet; no memory involved.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// The end of `text`, at most `max` bytes (on a character boundary).
pub(crate) fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A finished timed command.
pub(crate) struct Timed {
    /// From just before spawning to the exit, seen by a blocking wait.
    pub(crate) elapsed: Duration,
    /// How it exited.
    pub(crate) status: ExitStatus,
    /// What it printed on stderr (the end of it).
    pub(crate) stderr: String,
}

impl Timed {
    /// Fails with the command's stderr unless it exited with 0.
    pub(crate) fn check(self, what: &str) -> Result<Self> {
        if !self.status.success() {
            bail!(
                "{what} failed ({}): {}",
                self.status,
                tail(&self.stderr, 2000)
            );
        }
        Ok(self)
    }
}

/// Runs `command` to completion with stdin closed, stdout to `stdout` (or discarded) and
/// stderr to `stderr_file`, and times it. Kills it after `timeout`.
pub(crate) fn run_timed(
    command: &mut Command,
    stdout: Option<&Path>,
    stderr_file: &Path,
    timeout: Duration,
) -> Result<Timed> {
    let err = File::create(stderr_file)?;
    let out = match stdout {
        Some(path) => Stdio::from(File::create(path)?),
        None => Stdio::null(),
    };
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let pid = child.id();
    let (done, watch) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(timeout) {
            // The child is not reaped before wait() returns, so the pid is still ours.
            signal(pid, libc::SIGKILL);
            true
        } else {
            false
        }
    });
    let status = child.wait()?;
    let elapsed = started.elapsed();
    let _ = done.send(());
    let killed = watchdog.join().unwrap_or(false);
    let mut stderr = String::new();
    File::open(stderr_file)?.read_to_string(&mut stderr).ok();
    if killed {
        bail!(
            "{command:?} did not finish within {timeout:?} (killed): {}",
            tail(&stderr, 2000)
        );
    }
    Ok(Timed {
        elapsed,
        status,
        stderr,
    })
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub(crate) fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds (user + system, including reaped children) that process `pid` has used.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / clock_ticks_per_sec())
        .with_context(|| format!("unexpected /proc/{pid}/stat: {stat}"))
}

/// utime + stime + cutime + cstime (fields 14-17) of a `/proc/<pid>/stat` line. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted after the last ')'.
pub(crate) fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so field k is at index k - 3.
    let sum = (14..=17)
        .map(|k| fields.get(k - 3)?.parse::<i64>().ok())
        .sum::<Option<i64>>()?;
    u64::try_from(sum).ok()
}

/// The sum of [`cpu_seconds`] over `pids`; processes that are gone count as 0.
pub(crate) fn cpu_seconds_of(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|pid| cpu_seconds(*pid).unwrap_or(0.0))
        .sum()
}

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in bytes.
pub(crate) fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_status_kb(&status, field)
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The value of `field:  <n> kB` in a `/proc/<pid>/status` text.
pub(crate) fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resets the peak resident set size (`VmHWM`) of `pid` to its current size.
pub(crate) fn reset_peak_rss(pid: u32) -> Result<()> {
    fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid} (/proc/{pid}/clear_refs)"))
}

/// Polls `done` every [`POLL`] until it is true (returning how long that took) or `timeout`
/// passes (None).
pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if done() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= timeout {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Whether an executable `program` is on `PATH`.
pub(crate) fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A free TCP or UDP port on 127.0.0.1 (found by binding port 0).
pub(crate) fn free_port(udp: bool) -> Result<u16> {
    let port = if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    };
    Ok(port)
}

/// The trimmed stdout of `command`, or None if it cannot run or fails.
pub(crate) fn output_of(command: &mut Command) -> Option<String> {
    let output = command.stdin(Stdio::null()).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_fields_after_a_tricky_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        let stat = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 4 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(310));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_fields_in_kb() {
        let status = "Name:\tn2p\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("hello", 3), "llo");
        assert_eq!(tail("hi", 10), "hi");
        assert_eq!(tail("aé", 1), "");
    }

    #[test]
    fn cpu_of_this_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_ok());
        assert!(status_bytes(pid, "VmRSS").is_ok_and(|b| b > 0));
    }
}
