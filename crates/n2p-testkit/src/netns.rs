//! Network namespaces made by a test or the benchmark, deleted again however it ends: on
//! drop ([`Netns`]), on SIGINT/SIGTERM (the namespaces alive in the process are deleted
//! before it exits), and, for a process that was killed, by the next one to make namespaces
//! with the same prefix ([`remove_stale`]).
//!
//! ```no_run
//! use n2p_testkit::{Failure, netns::{Netns, ip, in_netns}};
//!
//! let ns = Netns::create("n2pt-", "demo").expect("root may create namespaces");
//! ip(&["-n", ns.name(), "addr", "add", "10.9.0.1/32", "dev", "lo"]).expect("an address");
//! let socket = in_netns(ns.path(), || {
//!     std::net::UdpSocket::bind("10.9.0.1:0").map_err(|e| Failure::new(e.to_string()))
//! })
//! .expect("a socket inside the namespace");
//! ```
//!
//! Names are `<prefix><pid>-<n>-<role>`: unique per process and call, so tests create theirs
//! side by side. Everything made inside a namespace (devices, addresses, nft tables) goes
//! with it; nothing outside is touched.

use std::{
    fs,
    io::Write,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Mutex, Once,
        atomic::{AtomicI32, AtomicU32, Ordering},
    },
    thread::JoinHandle,
};

use crate::Failure;

/// Namespaces alive in this process, deleted on SIGINT/SIGTERM.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Write end of the pipe that the signal handler writes the signal number to.
static PIPE: AtomicI32 = AtomicI32::new(-1);
/// Makes names unique within the process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why namespaces cannot be used here, or `None` when they can: root (or CAP_SYS_ADMIN and
/// CAP_NET_ADMIN) and the `ip` tool are needed. Tests print this as their SKIPPED reason.
pub fn unavailable() -> Option<String> {
    static PROBE: Mutex<Option<Option<String>>> = Mutex::new(None);
    let mut probe = PROBE.lock().expect("not poisoned");
    probe
        .get_or_insert_with(|| match Netns::create("n2pt-probe-", "x") {
            Ok(_) => None,
            Err(failure) => Some(failure.to_string()),
        })
        .clone()
}

/// A network namespace of ours (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates `<prefix><pid>-<n>-<role>` with its loopback up, first deleting namespaces with
    /// `prefix` that processes no longer running left behind.
    pub fn create(prefix: &str, role: &str) -> Result<Self, Failure> {
        remove_stale(prefix);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{}-{n}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        register(&name);
        let ns = Self {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, for `ip -n` and `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its file, for [`in_netns`].
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Writes `value` to the sysctl `key` (e.g. `net/ipv4/ip_forward`) inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Failure> {
        let file = format!("/proc/sys/{key}");
        let value = value.to_owned();
        in_netns(&self.path, move || {
            fs::write(&file, value)
                .map_err(|error| Failure::new(format!("writing {file}: {error}")))
        })
    }

    /// A command that runs `program` inside the namespace (through `ip netns exec`, which
    /// execs in place, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(Some(&self.name), program)
    }

    /// Loads the nftables ruleset `rules` (`nft -f` syntax) inside the namespace.
    pub fn nft(&self, rules: &str) -> Result<(), Failure> {
        let mut command = self.command("nft");
        command.args(["-f", "-"]);
        run_with_input(&mut command, rules)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if fs::metadata(&self.path).is_ok() {
            ip(&["netns", "delete", &self.name]).ok();
        }
        LIVE.lock()
            .expect("not poisoned")
            .retain(|n| *n != self.name);
    }
}

/// `program` run in the namespace `ns` through `ip netns exec`, or directly when `None`.
pub fn command_in(ns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match ns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Runs `ip args…`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<(), Failure> {
    let mut command = Command::new("ip");
    command.args(args);
    run_with_input(&mut command, "")
}

/// Runs `command` with `input` on its stdin; fails with its stderr unless it exits 0.
fn run_with_input(command: &mut Command, input: &str) -> Result<(), Failure> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| Failure::new(format!("running {command:?}: {error}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).ok();
    }
    let output = child
        .wait_with_output()
        .map_err(|error| Failure::new(format!("waiting for {command:?}: {error}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Runs `f` on a new thread that has joined the network namespace at `path`; sockets and
/// devices it creates belong to that namespace (and stay there when the thread ends).
pub fn in_netns<T: Send + 'static, E: From<Failure> + Send + 'static>(
    path: &std::path::Path,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    let display = path.display().to_string();
    spawn_in_netns(path, f)?
        .join()
        .map_err(|_| E::from(Failure::new(format!("a thread in {display} panicked"))))?
}

/// Like [`in_netns`] without waiting: the thread's handle. Threads it spawns inherit the
/// namespace.
pub fn spawn_in_netns<T: Send + 'static, E: From<Failure> + Send + 'static>(
    path: &std::path::Path,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<JoinHandle<Result<T, E>>, Failure> {
    let ns = fs::File::open(path)
        .map_err(|error| Failure::new(format!("opening {}: {error}", path.display())))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; it only changes this thread's namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(E::from(Failure::new(format!(
                "setns: {}",
                std::io::Error::last_os_error()
            ))));
        }
        f()
    }))
}

/// Remembers `ns` for deletion on SIGINT/SIGTERM (installing the handler once).
fn register(ns: &str) {
    static HANDLER: Once = Once::new();
    HANDLER.call_once(install_signal_cleanup);
    LIVE.lock().expect("not poisoned").push(ns.to_owned());
}

extern "C" fn on_signal(sig: libc::c_int) {
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; a failed write only loses the clean-up.
    unsafe { libc::write(PIPE.load(Ordering::Relaxed), (&raw const b).cast(), 1) };
}

/// A thread that, when SIGINT or SIGTERM arrives, deletes the live namespaces and exits the
/// process with 128 + the signal number, as the default action would.
fn install_signal_cleanup() {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    PIPE.store(fds[1], Ordering::Relaxed);
    let read_end = fds[0];
    let spawned = std::thread::Builder::new()
        .name("netns cleanup".to_owned())
        .spawn(move || {
            let mut b = 0u8;
            // SAFETY: reading one byte into `b`.
            if unsafe { libc::read(read_end, (&raw mut b).cast(), 1) } != 1 {
                return;
            }
            for ns in LIVE.lock().expect("not poisoned").iter() {
                eprintln!("signal {b}: deleting namespace {ns}");
                ip(&["netns", "delete", ns]).ok();
            }
            std::process::exit(128 + i32::from(b));
        });
    if spawned.is_err() {
        return;
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Deletes namespaces named `<prefix><pid>-…` whose process is gone (killed), saying so.
pub fn remove_stale(prefix: &str) {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && fs::metadata(format!("/proc/{pid}")).is_err() {
            eprintln!("removing namespace {name} left by process {pid}, which is gone");
            ip(&["netns", "delete", &name]).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_commands_go_through_ip_netns_exec() {
        let command = command_in(Some("ns1"), "/bin/socat");
        assert_eq!(command.get_program(), "ip");
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["netns", "exec", "ns1", "/bin/socat"]);
        assert_eq!(command_in(None, "/bin/true").get_program(), "/bin/true");
    }
}
