//! Real Nix: `nix-daemon`s with stores of their own, local source stores to fill with
//! content, and `nix copy` / `nix path-info` wrappers that compare NAR hashes.
//!
//! Every store is a chroot store (`local?root=DIR`): it keeps `/nix/store/...` paths but
//! lives under DIR, so tests need no root and no `/nix`, and run side by side.
//!
//! ```no_run
//! use n2p_testkit::nix::{NixDaemon, SourceStore, assert_copied, assert_copy_succeeds};
//!
//! let daemon = NixDaemon::start();
//! let source = SourceStore::new();
//! let path = source.add_random_file("blob", 1 << 20, 7);
//! assert_copy_succeeds(&source, &daemon.store_url(), &[&path]);
//! assert_copied(&source, &daemon.store_url(), &path);
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::Failure;
use crate::dir::{ScratchDir, remove_tree};
use crate::proc::{
    Process, Signal, expect_success, find_on_path, run_bounded, signal, success_stdout,
    try_run_bounded,
};
use crate::procfs::children;
use crate::rand::XorShift64;
use crate::wait::poll_until;

/// Settings for every Nix process: nix-command, no binary caches (there is no internet, and
/// Nix would retry cache.nixos.org with growing delays), no sandbox, and no build users (a
/// machine with nix-bin installed without its recommended packages has no `nixbld` group).
pub const NIX_CONFIG: &str = "experimental-features = nix-command\n\
                              substituters =\n\
                              sandbox = false\n\
                              build-users-group =\n";

/// Longest a single `nix` command may take where the caller gives no timeout of its own; the
/// 64 MiB copy through a debug build of the tunnel is the slowest one the tests make and
/// needs a few seconds.
pub const NIX_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest a daemon may take to accept connections on its socket.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(20);

/// How often a starting daemon's socket is tried.
const DAEMON_POLL: Duration = Duration::from_millis(5);

/// A `nix`, `nix-store` or `nix-daemon` command with the offline settings ([`NIX_CONFIG`]).
pub fn nix_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env("NIX_CONFIG", NIX_CONFIG);
    command
}

/// Returns whether the Nix tools the kit drives (`nix-daemon`, `nix`) are installed.
///
/// When they are not, prints `SKIPPED: <test>: <program> not found (install nix-bin)` straight
/// to the terminal (past libtest's output capture, so it shows even for a passing test) and
/// returns false; the caller then returns early. Under `CI=true` a missing Nix is a failure
/// instead: CI installs nix-bin, so skipping there would hide a broken setup.
pub fn require_nix(test: &str) -> bool {
    let Some(missing) = ["nix-daemon", "nix"]
        .into_iter()
        .find(|program| find_on_path(program).is_none())
    else {
        return true;
    };
    crate::skip(test, &format!("{missing} not found (install nix-bin)"));
    false
}

/// The store URL for a daemon socket: `unix://` followed by the absolute path, which every
/// Nix version reads the same way. Panics on a relative path.
pub fn socket_store_url(socket: &Path) -> String {
    assert!(
        socket.is_absolute(),
        "socket path {} must be absolute",
        socket.display()
    );
    format!("unix://{}", socket.display())
}

/// A `nix-daemon` serving a store of its own on a socket; killed on drop.
pub struct NixDaemon {
    process: Process,
    socket: PathBuf,
    dir: PathBuf,
    // Last: dropped (deleted) after the daemon is gone.
    scratch: Option<ScratchDir>,
}

impl NixDaemon {
    /// Starts a daemon with its store and socket in a new temp dir (deleted on drop) and
    /// waits until the socket accepts connections; panics, with the daemon's log, if it
    /// does not.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Like [`Self::start`], with `extra` appended to the daemon's settings (nix.conf
    /// lines, e.g. `trusted-users = alice`).
    pub fn start_with_config(extra: &str) -> Self {
        let scratch = ScratchDir::new("daemon");
        let mut daemon = Self::try_start_with(&scratch.join("daemon.sock"), scratch.path(), extra)
            .unwrap_or_else(|failure| panic!("{failure}"));
        daemon.scratch = Some(scratch);
        daemon
    }

    /// Starts a daemon on a new store under `dir` (created; the daemon logs to
    /// `dir/daemon.log`) with its socket at `socket` (replacing a stale one), and waits until
    /// it accepts connections. The store stays after drop, until [`Self::remove`].
    pub fn try_start_at(socket: &Path, dir: &Path) -> Result<Self, Failure> {
        Self::try_start_with(socket, dir, "")
    }

    /// [`Self::try_start_at`] with `extra` appended to the daemon's settings.
    pub fn try_start_with(socket: &Path, dir: &Path, extra: &str) -> Result<Self, Failure> {
        fs::create_dir_all(dir)
            .map_err(|error| Failure::new(format!("creating {}: {error}", dir.display())))?;
        if socket.exists() {
            let _ = fs::remove_file(socket);
        }
        let store = format!("local?root={}", dir.join("store").display());
        let mut process = Process::try_spawn_logged(
            "nix-daemon",
            nix_command("nix-daemon")
                .args(["--store", &store])
                .env("NIX_CONFIG", format!("{NIX_CONFIG}{extra}\n"))
                .env("NIX_DAEMON_SOCKET_PATH", socket),
            &dir.join("daemon.log"),
        )?;
        poll_until(DAEMON_START_TIMEOUT, DAEMON_POLL, || {
            if UnixStream::connect(socket).is_ok() {
                Ok(())
            } else if !process.is_running() {
                Err(Failure::new(format!(
                    "nix-daemon exited before accepting connections on {}; its log:\n{}",
                    socket.display(),
                    process.log_text()
                )))
            } else {
                Err(Failure::new(format!(
                    "nix-daemon did not accept connections on {} within \
                     {DAEMON_START_TIMEOUT:?}; its log:\n{}",
                    socket.display(),
                    process.log_text()
                )))
            }
        })?;
        // The probe above made the daemon fork a worker that sets up the fresh store. Nix
        // 2.8 does that without a lock: a second worker doing it at the same time fails on
        // `gcroots/profiles` ("creating symlink ...: File exists") and drops its client. So
        // wait until the first worker has made that link.
        let profiles = dir.join("store/nix/var/nix/gcroots/profiles");
        poll_until(DAEMON_START_TIMEOUT, DAEMON_POLL, || {
            if fs::symlink_metadata(&profiles).is_ok() {
                Ok(())
            } else {
                Err(Failure::new(format!(
                    "nix-daemon did not set up its store (no {}) within {DAEMON_START_TIMEOUT:?}; its log:\n{}",
                    profiles.display(),
                    process.log_text()
                )))
            }
        })?;
        Ok(Self {
            process,
            socket: socket.to_owned(),
            dir: dir.to_owned(),
            scratch: None,
        })
    }

    /// The daemon's socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The store URL of the daemon's socket, `unix:///abs/path`.
    pub fn store_url(&self) -> String {
        socket_store_url(&self.socket)
    }

    /// The daemon's process id (its workers, one per connection, are its children).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Crashes the daemon: SIGKILLs it and every worker it has forked (one per client
    /// connection), as an OOM kill or a crash of the whole service would. Killing only the
    /// listening process would leave the workers, and the transfers they serve, running.
    /// The socket file and the store stay; [`Self::restart`] starts a daemon on them again.
    pub fn crash(&mut self) {
        let pid = self.process.pid();
        // Frozen first, so it forks no worker between the listing and the kill.
        self.process.signal(Signal::Stop);
        let workers = children(pid);
        for worker in &workers {
            let _ = signal(*worker, Signal::Kill);
        }
        self.process.kill();
    }

    /// Starts a daemon again on the same socket and store, after [`Self::crash`]; panics,
    /// with its log, if it does not accept connections in time.
    pub fn restart(&mut self) {
        let fresh = Self::try_start_at(&self.socket, &self.dir)
            .unwrap_or_else(|failure| panic!("restarting nix-daemon: {failure}"));
        self.process = fresh.process;
    }

    /// Stops the daemon and deletes its socket and store.
    pub fn remove(mut self) {
        self.process.kill();
        let _ = fs::remove_file(&self.socket);
        remove_tree(&self.dir);
    }
}

/// A local store to fill with content and copy from, in a temp dir deleted on drop.
pub struct SourceStore {
    dir: ScratchDir,
}

impl SourceStore {
    /// An empty store in a fresh temp dir.
    pub fn new() -> Self {
        let dir = ScratchDir::new("source");
        fs::create_dir(dir.join("staging")).expect("creating the staging directory");
        Self { dir }
    }

    /// The store's URL, `local?root=/abs/dir`.
    pub fn url(&self) -> String {
        format!("local?root={}", self.dir.join("store").display())
    }

    /// Adds a regular file called `name` with `contents`; returns its store path.
    pub fn add_file(&self, name: &str, contents: &[u8]) -> String {
        let file = self.staging(name);
        fs::write(&file, contents).expect("writing a staging file");
        self.add("add-file", &file)
    }

    /// Adds a file called `name` of `len` pseudo-random bytes drawn from `seed`; returns its
    /// store path. Different seeds give different files (and store paths).
    pub fn add_random_file(&self, name: &str, len: usize, seed: u64) -> String {
        let file = self.staging(name);
        XorShift64::new(seed)
            .write_file(&file, len as u64)
            .expect("writing a staging file");
        self.add("add-file", &file)
    }

    /// Adds a directory called `name` holding `files` small files with distinct contents;
    /// returns its store path.
    pub fn add_tree(&self, name: &str, files: usize) -> String {
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

    /// Adds a text file called `name` holding `text` followed by the full path of each of
    /// `references` on a line of its own; Nix records those as the new path's references,
    /// so chains of paths with references can be built without a builder. The references
    /// must be valid in this store. Returns the store path, which is content-addressed
    /// (`text:`, made by `builtins.toFile`).
    pub fn add_text_with_references(&self, name: &str, text: &str, references: &[&str]) -> String {
        // A Nix string literal: `\`, `"` and `$` escaped; each reference spliced in with
        // `builtins.storePath`, which gives the string the reference as context.
        assert!(
            name.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c)),
            "{name:?} is not a store path name"
        );
        let mut literal = String::with_capacity(text.len());
        for c in text.chars() {
            if matches!(c, '\\' | '"' | '$') {
                literal.push('\\');
            }
            literal.push(c);
        }
        for reference in references {
            assert!(
                reference.starts_with("/nix/store/") && !reference.contains('"'),
                "{reference:?} is not a store path"
            );
            literal.push_str(&format!("\n${{builtins.storePath \"{reference}\"}}"));
        }
        let expr = format!("builtins.toFile \"{name}\" \"{literal}\\n\"");
        let output = run_bounded(
            nix_command("nix").args([
                "eval",
                "--impure",
                "--raw",
                "--store",
                &self.url(),
                "--expr",
                &expr,
            ]),
            NIX_COMMAND_TIMEOUT,
            &format!("nix eval of builtins.toFile {name:?}"),
        );
        let store_path = expect_success(&output, "nix eval builtins.toFile");
        assert!(
            store_path.starts_with("/nix/store/") && !store_path.contains('\n'),
            "nix eval printed {store_path:?}, not a store path"
        );
        store_path
    }

    /// Builds a derivation called `name` whose output is a file holding `text`, and returns
    /// the output's path. Unlike every other path the store makes, it is input-addressed:
    /// only a signature makes another store accept it. The build runs in the chroot store
    /// with the host's `/bin/sh` (and what it links to) bound in.
    pub fn add_built_file(&self, name: &str, text: &str) -> String {
        assert!(
            !text.contains(['"', '\\', '$', '\'']),
            "{text:?} needs no quoting here"
        );
        let expr = format!(
            "derivation {{ name = \"{name}\"; system = builtins.currentSystem; \
             builder = \"/bin/sh\"; args = [\"-c\" \"echo '{text}' > $out\"]; }}"
        );
        let output = run_bounded(
            nix_command("nix")
                .env(
                    "NIX_CONFIG",
                    format!("{NIX_CONFIG}sandbox-paths = /bin /lib /lib64 /usr\n"),
                )
                .args([
                    "build",
                    "--no-link",
                    "--json",
                    "--impure",
                    "--store",
                    &self.url(),
                ])
                .args(["--expr", &expr]),
            NIX_COMMAND_TIMEOUT,
            &format!("nix build of {name:?}"),
        );
        let stdout = expect_success(&output, "nix build");
        let json: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("nix build printed invalid JSON ({e}): {stdout}"));
        let path = json[0]["outputs"]["out"]
            .as_str()
            .unwrap_or_else(|| panic!("nix build printed no output path: {stdout}"));
        path.to_owned()
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

impl Default for SourceStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Adds `files` (files or directories, each as one path, recursively) to `store_url` in one
/// `nix-store --add` and returns their store paths in the same order; fails if that fails
/// or takes longer than `timeout`.
pub fn try_add_paths(
    store_url: &str,
    files: &[PathBuf],
    timeout: Duration,
) -> Result<Vec<String>, Failure> {
    let what = format!("nix-store --add of {} paths", files.len());
    let output = try_run_bounded(
        nix_command("nix-store")
            .args(["--store", store_url, "--add"])
            .args(files),
        timeout,
        &what,
    )?;
    let stdout = success_stdout(&output, &what)?;
    let paths: Vec<String> = stdout.lines().map(str::to_owned).collect();
    if paths.len() != files.len() || !paths.iter().all(|p| p.starts_with("/nix/store/")) {
        return Err(Failure::new(format!(
            "{what} printed {paths:?} for {} files",
            files.len()
        )));
    }
    Ok(paths)
}

/// Runs `nix copy --from <source> --to <to_url> <paths>` and returns its output.
pub fn nix_copy(from: &SourceStore, to_url: &str, paths: &[&str]) -> Output {
    run_bounded(
        nix_command("nix")
            .args(["copy", "--from", &from.url(), "--to", to_url])
            .args(paths),
        NIX_COMMAND_TIMEOUT,
        &format!("nix copy --to {to_url} {paths:?}"),
    )
}

/// Runs `nix copy --from <from_url> --to <to_url> <paths>` (a binary cache URL, say),
/// bounded by `timeout`, and returns its output.
pub fn nix_copy_from_url(
    from_url: &str,
    to_url: &str,
    paths: &[&str],
    timeout: Duration,
) -> Output {
    run_bounded(
        nix_command("nix")
            .args(["copy", "--from", from_url, "--to", to_url])
            .args(paths),
        timeout,
        &format!("nix copy --from {from_url} --to {to_url} {paths:?}"),
    )
}

/// Copies `paths` like [`nix_copy`] with `--no-check-sigs` (for input-addressed paths
/// nobody signed) and panics, with nix's stderr, if that fails.
pub fn assert_copy_unsigned_succeeds(from: &SourceStore, to_url: &str, paths: &[&str]) {
    let output = run_bounded(
        nix_command("nix")
            .args([
                "copy",
                "--no-check-sigs",
                "--from",
                &from.url(),
                "--to",
                to_url,
            ])
            .args(paths),
        NIX_COMMAND_TIMEOUT,
        &format!("nix copy --no-check-sigs --to {to_url} {paths:?}"),
    );
    expect_success(
        &output,
        &format!("nix copy --no-check-sigs --to {to_url} {paths:?}"),
    );
}

/// Copies `paths` like [`nix_copy`] and panics, with nix's stderr, if that fails.
pub fn assert_copy_succeeds(from: &SourceStore, to_url: &str, paths: &[&str]) {
    let output = nix_copy(from, to_url, paths);
    expect_success(&output, &format!("nix copy --to {to_url} {paths:?}"));
}

/// Copies `paths` like [`nix_copy`], panics if that succeeds, and returns nix's stderr.
pub fn assert_copy_fails(from: &SourceStore, to_url: &str, paths: &[&str]) -> String {
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
pub struct PathInfo {
    /// `sha256-...` hash of the path's NAR serialisation.
    pub nar_hash: String,
    /// Size of the NAR serialisation in bytes.
    pub nar_size: u64,
}

/// Asks `store_url` about `paths` in one `nix path-info --json`: the valid ones, with their
/// NAR hash and size. Fails if nix cannot ask at all (for example when the store's daemon
/// is unreachable), so a missing path really is not valid there.
pub fn try_path_infos(
    store_url: &str,
    paths: &[&str],
    timeout: Duration,
) -> Result<BTreeMap<String, PathInfo>, Failure> {
    let what = format!("nix path-info --store {store_url} ({} paths)", paths.len());
    let output = try_run_bounded(
        nix_command("nix")
            .args(["path-info", "--json", "--store", store_url])
            .args(paths),
        timeout,
        &what,
    )?;
    let stdout = success_stdout(&output, &what)?;
    let json: serde_json::Value = serde_json::from_str(&stdout).map_err(|error| {
        Failure::new(format!("{what} printed invalid JSON ({error}): {stdout}"))
    })?;
    parse_path_infos(&json)
        .map_err(|missing| Failure::new(format!("{what}: no {missing} in its output: {stdout}")))
}

/// The valid paths in `nix path-info --json` output, with their NAR hash and size. Nix up to
/// 2.18 prints a list of objects with `path` (and `valid: false` for invalid paths); later
/// versions print an object keyed by path, with null for invalid paths. Err names a field
/// missing from a valid entry.
pub fn parse_path_infos(json: &serde_json::Value) -> Result<BTreeMap<String, PathInfo>, String> {
    valid_entries(json)
        .into_iter()
        .map(|(path, entry)| {
            let nar_hash = entry["narHash"]
                .as_str()
                .ok_or_else(|| format!("narHash for {path}"))?
                .to_owned();
            let nar_size = entry["narSize"]
                .as_u64()
                .ok_or_else(|| format!("narSize for {path}"))?;
            Ok((path, PathInfo { nar_hash, nar_size }))
        })
        .collect()
}

/// The valid entries of `nix path-info --json` output of any Nix version, by path.
fn valid_entries(json: &serde_json::Value) -> Vec<(String, &serde_json::Value)> {
    match json {
        serde_json::Value::Array(entries) => entries
            .iter()
            .filter(|entry| entry["valid"] != false)
            .filter_map(|entry| Some((entry["path"].as_str()?.to_owned(), entry)))
            .collect(),
        serde_json::Value::Object(entries) => entries
            .iter()
            .filter(|(_, entry)| !entry.is_null())
            .map(|(path, entry)| (path.clone(), entry))
            .collect(),
        _ => Vec::new(),
    }
}

/// Everything the kit reads from `nix path-info --json --sigs` about a valid path: what a
/// narinfo or a signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMetadata {
    /// `sha256-...` hash of the path's NAR serialisation.
    pub nar_hash: String,
    /// Size of the NAR serialisation in bytes.
    pub nar_size: u64,
    /// Full store paths of its references, as Nix lists them.
    pub references: Vec<String>,
    /// Its signatures, `name:base64`.
    pub signatures: Vec<String>,
    /// Its content address, if any.
    pub ca: Option<String>,
}

/// The valid paths in `nix path-info --json --sigs` output with their [`PathMetadata`]; Err
/// names a field missing from a valid entry.
pub fn parse_path_metadata(
    json: &serde_json::Value,
) -> Result<BTreeMap<String, PathMetadata>, String> {
    let strings = |entry: &serde_json::Value, key: &str| -> Vec<String> {
        entry[key]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let infos = parse_path_infos(json)?;
    Ok(valid_entries(json)
        .into_iter()
        .filter_map(|(path, entry)| {
            let info = infos.get(&path)?;
            let metadata = PathMetadata {
                nar_hash: info.nar_hash.clone(),
                nar_size: info.nar_size,
                references: strings(entry, "references"),
                signatures: strings(entry, "signatures"),
                ca: entry["ca"].as_str().map(str::to_owned),
            };
            Some((path, metadata))
        })
        .collect())
}

/// Asks `store_url` about `path` with `nix path-info --json --sigs`: Some(metadata) if it is
/// valid there, None if not. Panics if nix cannot ask at all.
pub fn path_metadata(store_url: &str, path: &str) -> Option<PathMetadata> {
    let what = format!("nix path-info --json --sigs --store {store_url} {path}");
    let output = run_bounded(
        nix_command("nix")
            .args(["path-info", "--json", "--sigs", "--store", store_url])
            .arg(path),
        NIX_COMMAND_TIMEOUT,
        &what,
    );
    // An invalid path makes nix exit non-zero on some versions: ask whether it is valid.
    if !output.status.success() && path_info(store_url, path).is_none() {
        return None;
    }
    let stdout = expect_success(&output, &what);
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("{what} printed invalid JSON ({error}): {stdout}"));
    parse_path_metadata(&json)
        .unwrap_or_else(|missing| panic!("{what}: no {missing} in its output: {stdout}"))
        .remove(path)
}

/// Asks `store_url` about `path`: Some(info) if it is valid there, None if not. Panics if
/// nix cannot ask at all, so None really means "not valid".
pub fn path_info(store_url: &str, path: &str) -> Option<PathInfo> {
    try_path_infos(store_url, &[path], NIX_COMMAND_TIMEOUT)
        .unwrap_or_else(|failure| panic!("{failure}"))
        .remove(path)
}

/// Checks that each of `paths` is valid in `store_url` with the NAR hash and size that
/// `expected` gives for it; the failure names the first path that is missing or differs.
pub fn check_same_nar(
    expected: &BTreeMap<String, PathInfo>,
    store_url: &str,
    paths: &[&str],
    timeout: Duration,
) -> Result<(), Failure> {
    let found = try_path_infos(store_url, paths, timeout)?;
    for path in paths {
        match (found.get(*path), expected.get(*path)) {
            (Some(got), Some(want)) if got == want => {}
            (None, _) => {
                return Err(Failure::new(format!("{path} is not valid in {store_url}")));
            }
            (Some(got), want) => {
                return Err(Failure::new(format!(
                    "{path} differs in {store_url}: {got:?}, expected {want:?}"
                )));
            }
        }
    }
    Ok(())
}

/// Asserts that `path` is valid in `dest_url` with the same NAR hash and size as in `source`.
pub fn assert_copied(source: &SourceStore, dest_url: &str, path: &str) {
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
pub fn assert_not_valid(store_url: &str, path: &str) {
    if let Some(info) = path_info(store_url, path) {
        panic!("{path} is valid in {store_url} ({info:?}) but should not be");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_info_json_of_old_and_new_nix() {
        let old = serde_json::json!([
            {"path": "/nix/store/a-x", "narHash": "sha256-A", "narSize": 1},
            {"path": "/nix/store/b-y", "valid": false},
        ]);
        let new = serde_json::json!({
            "/nix/store/a-x": {"narHash": "sha256-A", "narSize": 1},
            "/nix/store/b-y": null,
        });
        for json in [old, new] {
            let infos = parse_path_infos(&json).expect("well-formed");
            assert_eq!(infos.len(), 1);
            assert_eq!(
                infos["/nix/store/a-x"],
                PathInfo {
                    nar_hash: "sha256-A".into(),
                    nar_size: 1
                }
            );
        }
    }

    #[test]
    fn path_metadata_of_old_and_new_nix() {
        let old = serde_json::json!([{
            "path": "/nix/store/a-x", "narHash": "sha256-A", "narSize": 1,
            "references": ["/nix/store/b-y"], "signatures": ["k:AA=="], "ca": "text:sha256:0",
        }]);
        let new = serde_json::json!({
            "/nix/store/a-x": {
                "narHash": "sha256-A", "narSize": 1, "references": ["/nix/store/b-y"],
                "signatures": ["k:AA=="], "ca": "text:sha256:0",
            },
            "/nix/store/b-y": null,
        });
        for json in [old, new] {
            let infos = parse_path_metadata(&json).expect("well-formed");
            assert_eq!(
                infos["/nix/store/a-x"],
                PathMetadata {
                    nar_hash: "sha256-A".into(),
                    nar_size: 1,
                    references: vec!["/nix/store/b-y".into()],
                    signatures: vec!["k:AA==".into()],
                    ca: Some("text:sha256:0".into()),
                }
            );
            assert_eq!(infos.len(), 1);
        }
    }

    #[test]
    fn a_valid_entry_without_a_hash_is_an_error() {
        let json = serde_json::json!({"/nix/store/a-x": {"narSize": 1}});
        assert!(parse_path_infos(&json).is_err());
    }

    #[test]
    fn socket_urls_are_absolute() {
        assert_eq!(
            socket_store_url(Path::new("/tmp/x.sock")),
            "unix:///tmp/x.sock"
        );
    }
}
