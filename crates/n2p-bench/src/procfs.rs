//! What `/proc` says about a process (CPU time, resident memory), and the output of small
//! helper commands. Child processes themselves come from `n2p_testkit::proc`.

use std::{
    fs,
    process::{Command, Stdio},
};

use anyhow::{Context, Result};

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

pub(crate) use n2p_testkit::procfs::parse_status_kb;

/// CPU seconds of `pid` and all its live descendants ([`cpu_seconds`] counts the reaped
/// ones): what a forking server (sshd, nix-daemon) has spent so far, per connection
/// included. Processes that are gone count as 0.
pub(crate) fn tree_cpu_seconds(pid: u32) -> f64 {
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    cpu_seconds(pid).unwrap_or(0.0)
        + children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .map(tree_cpu_seconds)
            .sum::<f64>()
}

/// The peak resident set size (`VmHWM`) of each labelled process still there:
/// (label, bytes).
pub(crate) fn peak_rss_of(
    processes: impl IntoIterator<Item = (String, u32)>,
) -> Vec<(String, u64)> {
    processes
        .into_iter()
        .filter_map(|(label, pid)| Some((label, status_bytes(pid, "VmHWM").ok()?)))
        .collect()
}

/// Resets the peak resident set size (`VmHWM`) of `pid` to its current size.
pub(crate) fn reset_peak_rss(pid: u32) -> Result<()> {
    fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid} (/proc/{pid}/clear_refs)"))
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
    fn cpu_of_this_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_ok());
        assert!(status_bytes(pid, "VmRSS").is_ok_and(|b| b > 0));
    }
}
