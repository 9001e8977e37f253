//! Namespaces are deleted even when the benchmark is interrupted: Ctrl-C (SIGINT) or SIGTERM
//! deletes the live links' namespaces before the process exits, and namespaces that a killed
//! benchmark left behind are deleted by the next one.

use std::{
    fs,
    sync::{
        Mutex, Once,
        atomic::{AtomicI32, Ordering},
    },
};

use super::{PREFIX, ip};

/// Namespaces of the links alive in this process.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Write end of the pipe that the signal handler writes the signal number to.
static PIPE: AtomicI32 = AtomicI32::new(-1);

/// Remembers `ns` for deletion on SIGINT/SIGTERM (installing the handler once).
pub(super) fn register(ns: &str) {
    static HANDLER: Once = Once::new();
    HANDLER.call_once(install);
    LIVE.lock().expect("not poisoned").push(ns.to_owned());
}

/// Forgets `ns` (deleted normally).
pub(super) fn unregister(ns: &str) {
    LIVE.lock().expect("not poisoned").retain(|n| n != ns);
}

extern "C" fn on_signal(sig: libc::c_int) {
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; a failed write only loses the clean-up.
    unsafe { libc::write(PIPE.load(Ordering::Relaxed), (&raw const b).cast(), 1) };
}

fn install() {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    PIPE.store(fds[1], Ordering::Relaxed);
    let read_end = fds[0];
    let spawned = std::thread::Builder::new()
        .name("link cleanup".to_owned())
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

/// Deletes `n2pb-c-<pid>`/`n2pb-s-<pid>` namespaces whose process is gone (a benchmark that
/// was killed), saying so.
pub(super) fn remove_stale_namespaces() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix("c-").or_else(|| r.strip_prefix("s-")))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && fs::metadata(format!("/proc/{pid}")).is_err() {
            eprintln!("removing namespace {name} left by process {pid}, which is gone");
            ip(&["netns", "delete", &name]).ok();
        }
    }
}
