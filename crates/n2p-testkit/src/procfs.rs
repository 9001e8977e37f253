//! What `/proc` says about a running process: its open file descriptors, resident memory
//! and children. For soak tests that check a process stays flat, and for the benchmark.
//!
//! ```no_run
//! use n2p_testkit::procfs::{open_fds, rss_bytes};
//!
//! let me = std::process::id();
//! println!("{} fds, {} bytes resident", open_fds(me).unwrap(), rss_bytes(me).unwrap());
//! ```

use std::fs;
use std::io;

/// How many file descriptors process `pid` has open (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The resident set size (`VmRSS`) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in bytes.
pub fn status_bytes(pid: u32, field: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kb(&status, field)
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// The value of `field:  <n> kB` in a `/proc/<pid>/status` text.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The parent pid (field 4) of a `/proc/<pid>/stat` line. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The ids of the processes whose parent is `pid` right now.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| parse_stat_ppid(&stat))
                == Some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_in_kb() {
        let status = "Name:\tn2p\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn ppid_after_a_tricky_name() {
        let stat = "42 (a) b) (c) S 7 42 42 0 -1 4194560";
        assert_eq!(parse_stat_ppid(stat), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn this_process_and_its_child_are_seen() {
        let me = std::process::id();
        assert!(open_fds(me).is_ok_and(|n| n >= 3));
        assert!(rss_bytes(me).is_ok_and(|b| b > 0));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawning sleep");
        let seen = children(me).contains(&child.id());
        child.kill().ok();
        child.wait().ok();
        assert!(seen, "the sleep child was not listed");
    }
}
