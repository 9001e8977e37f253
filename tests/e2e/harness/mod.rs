//! Building blocks for the end-to-end tests: scratch directories, bounded child processes and
//! waits, real Nix stores and daemons ([`nix`]), running n2p itself ([`n2p`]), mesh teams and
//! nodes ([`mesh`]) and forged in-process mesh nodes ([`forge`]).
//!
//! ```ignore
//! if !require_nix("my_test") {
//!     return;
//! }
//! let daemon = NixDaemon::start();
//! let source = SourceStore::new();
//! let path = source.add_file("hello.txt", b"hello");
//! assert_copy_succeeds(&source, &daemon.store_url(), &[&path]);
//! assert_copied(&source, &daemon.store_url(), &path);
//! ```
//!
//! Every wait in here is bounded and panics with a message naming what it waited for, so a
//! hanging tunnel fails the test instead of hanging the suite.

pub(crate) mod forge;
pub(crate) mod mesh;
pub(crate) mod n2p;
pub(crate) mod nix;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use std::{env, fs};

/// How often bounded waits look again.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Returns whether the Nix tools these tests drive are installed.
///
/// When they are not, prints `SKIPPED: <test>: <program> not found (install nix-bin)` straight
/// to the terminal (past libtest's output capture, so it shows even for a passing test) and
/// returns false; the caller then returns early. Under `CI=true` a missing Nix is a failure
/// instead: CI installs nix-bin, so skipping there would hide a broken setup.
pub(crate) fn require_nix(test: &str) -> bool {
    let Some(missing) = ["nix-daemon", "nix"]
        .into_iter()
        .find(|program| !is_on_path(program))
    else {
        return true;
    };
    let message = format!("SKIPPED: {test}: {missing} not found (install nix-bin)");
    if running_in_ci() {
        panic!("{message}; CI=true does not allow skipping");
    }
    // Written to the process's stderr directly: eprintln! would be swallowed by the capture.
    let _ = writeln!(std::io::stderr().lock(), "\n*** {message} ***\n");
    false
}

/// Whether the `CI` environment variable says we run in CI.
fn running_in_ci() -> bool {
    matches!(env::var("CI").as_deref(), Ok("true" | "1"))
}

/// Whether an executable called `program` is in one of the `PATH` directories.
fn is_on_path(program: &str) -> bool {
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(program))
            .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// A temporary directory for one test's files, deleted on drop even when Nix made parts of it
/// read-only (store paths are `r-x`, which would stop a non-root user from deleting them).
pub(crate) struct ScratchDir {
    dir: tempfile::TempDir,
}

impl ScratchDir {
    /// Creates an empty directory under the system's temp dir; `role` goes into its name to
    /// make leftovers recognisable.
    pub(crate) fn new(role: &str) -> Self {
        Self::new_in(&env::temp_dir(), role)
    }

    /// Like [`Self::new`], but inside `parent`: tests that check what appears around a
    /// directory keep everything under one root.
    pub(crate) fn new_in(parent: &Path, role: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("n2p-e2e-{role}-"))
            .tempdir_in(parent)
            .expect("creating a temporary directory");
        assert!(
            dir.path().is_absolute(),
            "temporary directory {} is not absolute; set TMPDIR to an absolute path",
            dir.path().display()
        );
        Self { dir }
    }

    /// The directory's absolute path.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the directory.
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        make_dirs_writable(self.dir.path());
        // The TempDir field then deletes the tree.
    }
}

/// Gives the owner write permission on every directory below `dir` (best effort).
fn make_dirs_writable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mut permissions = meta.permissions();
    permissions.set_mode(permissions.mode() | 0o700);
    let _ = fs::set_permissions(dir, permissions);
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_dirs_writable(&entry.path());
        }
    }
}

/// Runs `command` to completion with stdin closed, collecting its output, and panics if it
/// takes longer than `timeout`. `what` names the command in the panic message.
pub(crate) fn run_bounded(command: &mut Command, timeout: Duration, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{what}: cannot start {command:?}: {error}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_bounded(&mut child, timeout);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        let stderr = join_drain(stderr);
        panic!(
            "{what}: did not finish within {timeout:?} (killed); its stderr:\n{}",
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout: join_drain(stdout),
        stderr: join_drain(stderr),
    }
}

/// Returns stdout of a finished command, or panics with its status and stderr if it failed.
pub(crate) fn expect_success(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}); its stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits up to `timeout` for `child` to exit; None if it is still running then.
pub(crate) fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(POLL_INTERVAL),
            Err(error) => panic!("waiting for child process {}: {error}", child.id()),
        }
    }
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

/// Polls `check` until it returns Ok, and returns how long that took; panics after `timeout`
/// with `what` and the last Err, which should describe what was seen instead.
pub(crate) fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Duration {
    let started = Instant::now();
    loop {
        let last = match check() {
            Ok(()) => return started.elapsed(),
            Err(last) => last,
        };
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}; last seen: {last}"
        );
        thread::sleep(POLL_INTERVAL);
    }
}

/// How often [`assert_holds_for`] looks again; its checks may run n2p commands.
const HOLDS_INTERVAL: Duration = Duration::from_millis(100);

/// Checks `check` again and again for `duration` and panics, naming `what`, at the first
/// Err: for things that must NOT happen, which no single look can show.
pub(crate) fn assert_holds_for(
    what: &str,
    duration: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let started = Instant::now();
    loop {
        if let Err(seen) = check() {
            panic!(
                "expected {what} for {duration:?}, but after {:?}: {seen}",
                started.elapsed()
            );
        }
        if started.elapsed() >= duration {
            return;
        }
        thread::sleep(HOLDS_INTERVAL);
    }
}

/// The names of the entries of `dir`; empty if it does not exist.
pub(crate) fn dir_names(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| {
                entry
                    .unwrap_or_else(|error| panic!("listing {}: {error}", dir.display()))
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(error) => panic!("listing {}: {error}", dir.display()),
    }
}

/// Every path below `root` (not `root` itself), without following symbolic links.
pub(crate) fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        // Directories may vanish while we look (a socket's temporary name, a test's
        // scratch dir): what is gone is simply not listed.
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                pending.push(path.clone());
            }
            found.insert(path);
        }
    }
    found
}

/// The permission bits of `path` (not following a symbolic link), e.g. `0o600`.
pub(crate) fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|error| panic!("reading the mode of {}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}
