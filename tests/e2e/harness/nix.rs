//! Real Nix: a `nix-daemon` with a store of its own in a temp dir, a local source store to
//! fill with test content, and `nix copy` / `nix path-info` wrappers.
//!
//! Every store is a chroot store (`local?root=DIR`): it keeps `/nix/store/...` paths but
//! lives under DIR, so tests need no root and no `/nix`, and run side by side.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{POLL_INTERVAL, ScratchDir, expect_success, run_bounded, wait_bounded};

/// Settings for every Nix process: nix-command, no binary caches (there is no internet, and
/// Nix would retry cache.nixos.org with growing delays), no sandbox, and no build users (a
/// machine with nix-bin installed without its recommended packages has no `nixbld` group).
pub(crate) const NIX_CONFIG: &str = "experimental-features = nix-command\n\
                                     substituters =\n\
                                     sandbox = false\n\
                                     build-users-group =\n";

/// Longest a single `nix` command may take; the 64 MiB copy through a debug build of the
/// tunnel is the slowest one and needs a few seconds.
const NIX_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest the daemon may take to accept connections on its socket.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(15);

/// A `nix` (or `nix-daemon`) command with the offline test settings.
fn nix_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env("NIX_CONFIG", NIX_CONFIG);
    command
}

/// A `nix-daemon` serving a store of its own on a socket in a temp dir; killed on drop.
pub(crate) struct NixDaemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    // Last: dropped (deleted) after the daemon is gone.
    _dir: ScratchDir,
}

impl NixDaemon {
    /// Starts the daemon and waits until its socket accepts connections.
    pub(crate) fn start() -> Self {
        let dir = ScratchDir::new("daemon");
        let socket = dir.join("daemon.sock");
        let log = dir.join("daemon.log");
        let log_file = File::create(&log).expect("creating the daemon's log file");
        let store = format!("local?root={}", dir.join("store").display());
        let child = nix_command("nix-daemon")
            .args(["--store", &store])
            .env("NIX_DAEMON_SOCKET_PATH", &socket)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("cloning the log file handle"))
            .stderr(log_file)
            .spawn()
            .expect("starting nix-daemon");
        let mut daemon = Self {
            child,
            socket,
            log,
            _dir: dir,
        };
        daemon.wait_until_accepting();
        daemon
    }

    /// The daemon's socket.
    pub(crate) fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The store URL of the daemon's socket, `unix:///abs/path`.
    pub(crate) fn store_url(&self) -> String {
        socket_store_url(&self.socket)
    }

    /// Polls the socket until a connection succeeds; panics with the daemon's log if it exits
    /// or does not get there in time.
    fn wait_until_accepting(&mut self) {
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("polling nix-daemon") {
                panic!(
                    "nix-daemon exited ({status}) before accepting connections; its log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nix-daemon did not accept connections on {} within {DAEMON_START_TIMEOUT:?}; \
                 its log:\n{}",
                self.socket.display(),
                self.log_text()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// What the daemon has logged so far.
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|error| format!("(unreadable: {error})"))
    }
}

impl Drop for NixDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_bounded(&mut self.child, Duration::from_secs(5));
    }
}

/// The store URL for a daemon socket: `unix://` followed by the absolute path, which every
/// Nix version reads the same way.
pub(crate) fn socket_store_url(socket: &Path) -> String {
    assert!(
        socket.is_absolute(),
        "socket path {} must be absolute",
        socket.display()
    );
    format!("unix://{}", socket.display())
}

/// A local store that tests fill with content and copy from.
pub(crate) struct SourceStore {
    dir: ScratchDir,
}

impl SourceStore {
    /// An empty store in a fresh temp dir.
    pub(crate) fn new() -> Self {
        let dir = ScratchDir::new("source");
        fs::create_dir(dir.join("staging")).expect("creating the staging directory");
        Self { dir }
    }

    /// The store's URL, `local?root=/abs/dir`.
    pub(crate) fn url(&self) -> String {
        format!("local?root={}", self.dir.join("store").display())
    }

    /// Adds a regular file called `name` with `contents`; returns its store path.
    pub(crate) fn add_file(&self, name: &str, contents: &[u8]) -> String {
        let file = self.staging(name);
        fs::write(&file, contents).expect("writing a staging file");
        self.add("add-file", &file)
    }

    /// Adds a file called `name` of `len` pseudo-random bytes drawn from `seed`; returns its
    /// store path. Different seeds give different files (and store paths).
    pub(crate) fn add_random_file(&self, name: &str, len: usize, seed: u64) -> String {
        let file = self.staging(name);
        let mut writer = BufWriter::new(File::create(&file).expect("creating a staging file"));
        let mut random = XorShift64::new(seed);
        let mut chunk = vec![0; 1 << 16];
        let mut remaining = len;
        while remaining > 0 {
            let n = remaining.min(chunk.len());
            random.fill(&mut chunk[..n]);
            writer
                .write_all(&chunk[..n])
                .expect("writing a staging file");
            remaining -= n;
        }
        writer.flush().expect("writing a staging file");
        self.add("add-file", &file)
    }

    /// Adds a directory called `name` holding `files` small files with distinct contents;
    /// returns its store path.
    pub(crate) fn add_tree(&self, name: &str, files: usize) -> String {
        let dir = self.staging(name);
        fs::create_dir(&dir).expect("creating a staging directory");
        for i in 0..files {
            fs::write(
                dir.join(format!("f{i:05}")),
                format!("file {i} of {name}\n"),
            )
            .expect("writing a staging file");
        }
        self.add("add-path", &dir)
    }

    /// Where staging content called `name` goes; the name becomes the store path's name.
    fn staging(&self, name: &str) -> PathBuf {
        let path = self.dir.join("staging").join(name);
        assert!(!path.exists(), "{name} was already added to this store");
        path
    }

    /// Runs `nix store <subcommand>` on `path` and returns the store path it printed.
    fn add(&self, subcommand: &str, path: &Path) -> String {
        let output = run_bounded(
            nix_command("nix")
                .args(["store", subcommand, "--store", &self.url()])
                .arg(path),
            NIX_COMMAND_TIMEOUT,
            &format!("nix store {subcommand} {}", path.display()),
        );
        let stdout = expect_success(&output, &format!("nix store {subcommand}"));
        let store_path = stdout.trim().to_owned();
        assert!(
            store_path.starts_with("/nix/store/"),
            "nix store {subcommand} printed {stdout:?}, not a store path"
        );
        store_path
    }
}

/// A small, fast, deterministic generator (xorshift64*) for incompressible test content.
struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    fn new(seed: u64) -> Self {
        // The state must never be zero.
        Self {
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

/// Runs `nix copy --from <source> --to <to_url> <paths>` and returns its output.
pub(crate) fn nix_copy(from: &SourceStore, to_url: &str, paths: &[&str]) -> Output {
    run_bounded(
        nix_command("nix")
            .args(["copy", "--from", &from.url(), "--to", to_url])
            .args(paths),
        NIX_COMMAND_TIMEOUT,
        &format!("nix copy --to {to_url} {paths:?}"),
    )
}

/// Copies `paths` like [`nix_copy`] and panics, with nix's stderr, if that fails.
pub(crate) fn assert_copy_succeeds(from: &SourceStore, to_url: &str, paths: &[&str]) {
    let output = nix_copy(from, to_url, paths);
    expect_success(&output, &format!("nix copy --to {to_url} {paths:?}"));
}

/// Copies `paths` like [`nix_copy`], panics if that succeeds, and returns nix's stderr.
pub(crate) fn assert_copy_fails(from: &SourceStore, to_url: &str, paths: &[&str]) -> String {
    let output = nix_copy(from, to_url, paths);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "nix copy --to {to_url} {paths:?} succeeded but should have failed; its stderr:\n{stderr}"
    );
    stderr
}

/// What `nix path-info --json` says about a valid path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathInfo {
    /// `sha256-...` hash of the path's NAR serialisation.
    pub(crate) nar_hash: String,
    /// Size of the NAR serialisation in bytes.
    pub(crate) nar_size: u64,
}

/// Asks `store_url` about `path`: Some(info) if it is valid there, None if not. Panics if
/// nix cannot ask at all (for example when the store's daemon is unreachable), so None
/// really means "not valid".
pub(crate) fn path_info(store_url: &str, path: &str) -> Option<PathInfo> {
    let output = run_bounded(
        nix_command("nix").args(["path-info", "--json", "--store", store_url, path]),
        NIX_COMMAND_TIMEOUT,
        &format!("nix path-info --store {store_url} {path}"),
    );
    let stdout = expect_success(
        &output,
        &format!("nix path-info --store {store_url} {path}"),
    );
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("nix path-info printed invalid JSON ({error}): {stdout}"));
    // Nix up to 2.18 prints a list of objects with "path" (and "valid": false for invalid
    // paths); later versions print an object keyed by path, with null for invalid paths.
    let entry = match &json {
        serde_json::Value::Array(entries) => entries
            .iter()
            .find(|entry| entry["path"] == path)
            .filter(|entry| entry["valid"] != false),
        serde_json::Value::Object(entries) => entries.get(path).filter(|entry| !entry.is_null()),
        _ => None,
    }?;
    let nar_hash = entry["narHash"]
        .as_str()
        .unwrap_or_else(|| panic!("no narHash for {path} in {stdout}"))
        .to_owned();
    let nar_size = entry["narSize"]
        .as_u64()
        .unwrap_or_else(|| panic!("no narSize for {path} in {stdout}"));
    Some(PathInfo { nar_hash, nar_size })
}

/// Asserts that `path` is valid in `dest_url` with the same NAR hash and size as in `source`.
pub(crate) fn assert_copied(source: &SourceStore, dest_url: &str, path: &str) {
    let expected = path_info(&source.url(), path)
        .unwrap_or_else(|| panic!("{path} is not even valid in the source store"));
    let actual = path_info(dest_url, path)
        .unwrap_or_else(|| panic!("{path} is not valid in {dest_url} after copying it there"));
    assert_eq!(
        actual, expected,
        "{path} differs between the source and {dest_url}"
    );
}

/// Asserts that `path` is not valid in `store_url`.
pub(crate) fn assert_not_valid(store_url: &str, path: &str) {
    if let Some(info) = path_info(store_url, path) {
        panic!("{path} is valid in {store_url} ({info:?}) but should not be");
    }
}
