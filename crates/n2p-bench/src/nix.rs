//! Real Nix for the benchmark: nix-daemons on chroot stores (one fresh store per round and
//! variant, on tmpfs), the source store holding workloads W1..W5, and `nix` invocations.
//!
//! Every store is a chroot store (`local?root=DIR`): `/nix/store/...` paths kept under DIR.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{BufWriter, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::proc::{Service, run_timed, wait_until};

/// Settings for every Nix process: no binary caches (offline), no sandbox, no build users.
pub(crate) const NIX_CONFIG: &str = "experimental-features = nix-command\n\
                                     substituters =\n\
                                     sandbox = false\n\
                                     build-users-group =\n";

/// Longest one nix command of the benchmark may take.
pub(crate) const NIX_TIMEOUT: Duration = Duration::from_secs(300);

/// A `nix`/`nix-store`/`nix-daemon` command with the offline settings.
pub(crate) fn nix_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env("NIX_CONFIG", NIX_CONFIG);
    command
}

/// The store URL of a daemon socket, `unix:///abs/path`.
pub(crate) fn socket_url(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

/// A nix-daemon serving a fresh store under `dir`, listening on `socket`; killed on drop
/// (the store stays until [`Daemon::remove`]).
pub(crate) struct Daemon {
    service: Service,
    socket: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    /// Starts a daemon on a new store in `dir` (created) with its socket at `socket`
    /// (replacing a stale one), and waits until it accepts connections.
    pub(crate) fn start(socket: &Path, dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if socket.exists() {
            fs::remove_file(socket).ok();
        }
        let store = format!("local?root={}", dir.join("store").display());
        let mut command = nix_command("nix-daemon");
        command
            .args(["--store", &store])
            .env("NIX_DAEMON_SOCKET_PATH", socket);
        let service = Service::spawn("nix-daemon", &mut command, &dir.join("daemon.log"))?;
        let mut daemon = Self {
            service,
            socket: socket.to_owned(),
            dir: dir.to_owned(),
        };
        let started = wait_until(Duration::from_secs(20), || {
            UnixStream::connect(&daemon.socket).is_ok()
        });
        if started.is_none() || !daemon.service.is_running() {
            bail!(
                "nix-daemon did not accept connections on {}; its log:\n{}",
                daemon.socket.display(),
                daemon.service.log_text()
            );
        }
        Ok(daemon)
    }

    /// The daemon's socket.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops the daemon and deletes its store.
    pub(crate) fn remove(mut self) {
        self.service.kill();
        fs::remove_file(&self.socket).ok();
        remove_tree(&self.dir);
    }
}

/// Deletes `dir` even where Nix made it read-only (best effort).
pub(crate) fn remove_tree(dir: &Path) {
    if fs::remove_dir_all(dir).is_ok() {
        return;
    }
    make_dirs_writable(dir);
    fs::remove_dir_all(dir).ok();
}

fn make_dirs_writable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mut permissions = meta.permissions();
    permissions.set_mode(permissions.mode() | 0o700);
    fs::set_permissions(dir, permissions).ok();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_dirs_writable(&entry.path());
        }
    }
}

/// How big the workloads are.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sizes {
    /// W1: bytes of random data in one file.
    pub(crate) w1_bytes: u64,
    /// W2: small files (1-8 KiB) in one directory.
    pub(crate) w2_files: usize,
    /// W3: small store paths in one `nix copy` (and W4: round trips over them).
    pub(crate) w3_paths: usize,
    /// W5: bytes of files from the machine's /usr, at least.
    pub(crate) w5_bytes: u64,
    /// W5: how many store paths they are split into.
    pub(crate) w5_paths: usize,
}

impl Sizes {
    /// The sizes issue 4 asks for.
    pub(crate) fn full() -> Self {
        Self {
            w1_bytes: 256 << 20,
            w2_files: 5000,
            w3_paths: 200,
            w5_bytes: 300 << 20,
            w5_paths: 8,
        }
    }

    /// Small sizes for a smoke run.
    pub(crate) fn quick() -> Self {
        Self {
            w1_bytes: 32 << 20,
            w2_files: 1000,
            w3_paths: 50,
            w5_bytes: 48 << 20,
            w5_paths: 4,
        }
    }
}

/// The workloads, as store paths in the source store.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Workloads {
    /// The source store's URL.
    pub(crate) source_url: String,
    /// W1: one large random file.
    pub(crate) w1: String,
    /// W1 for the emulated WAN link: a smaller random file, when asked for.
    pub(crate) w1_net: Option<String>,
    /// W2: one directory of small files.
    pub(crate) w2: String,
    /// W3 (and W4): small separate paths.
    pub(crate) w3: Vec<String>,
    /// W5: files from the machine, several paths.
    pub(crate) w5: Vec<String>,
    /// W5: how many files and bytes were taken from the machine.
    pub(crate) w5_files: usize,
    /// W5: total bytes of its files.
    pub(crate) w5_file_bytes: u64,
    /// NAR hash of every path above, from the source store.
    #[serde(skip)]
    pub(crate) nar_hashes: BTreeMap<String, String>,
}

impl Workloads {
    /// Every store path of every workload.
    pub(crate) fn all_paths(&self) -> Vec<String> {
        let mut all = vec![self.w1.clone(), self.w2.clone()];
        all.extend(self.w1_net.iter().cloned());
        all.extend(self.w3.iter().cloned());
        all.extend(self.w5.iter().cloned());
        all
    }

    /// Builds the workloads in a new source store under `dir`.
    /// `w1_net_bytes` adds a second random file for the emulated WAN link.
    pub(crate) fn create(
        dir: &Path,
        sizes: &Sizes,
        w1_net_bytes: Option<u64>,
        seed: u64,
    ) -> Result<Self> {
        let staging = dir.join("staging");
        fs::create_dir_all(&staging)?;
        let source_url = format!("local?root={}", dir.join("store").display());
        let mut rng = XorShift64::new(seed);

        let w1_file = staging.join("w1-random");
        write_random_file(&w1_file, sizes.w1_bytes, &mut rng)?;
        let w1_net_file = staging.join("w1-net-random");
        if let Some(bytes) = w1_net_bytes {
            write_random_file(&w1_net_file, bytes, &mut rng)?;
        }

        let w2_dir = staging.join("w2-small-files");
        fs::create_dir(&w2_dir)?;
        for i in 0..sizes.w2_files {
            let len = 1024 + rng.below(7 * 1024 + 1);
            write_random_file(&w2_dir.join(format!("f{i:05}")), len, &mut rng)?;
        }

        let w3_dir = staging.join("w3");
        fs::create_dir(&w3_dir)?;
        let mut w3_files = Vec::new();
        for i in 0..sizes.w3_paths {
            let file = w3_dir.join(format!("w3-path-{i:03}"));
            let len = 1024 + rng.below(7 * 1024 + 1);
            write_random_file(&file, len, &mut rng)?;
            w3_files.push(file);
        }

        let w5_dir = staging.join("w5");
        fs::create_dir(&w5_dir)?;
        let (w5_dirs, w5_files, w5_file_bytes) =
            stage_machine_files(&w5_dir, sizes.w5_bytes, sizes.w5_paths)?;

        let w1 = add_to_store(&source_url, std::slice::from_ref(&w1_file))?.remove(0);
        let w1_net = match w1_net_bytes {
            Some(_) => {
                Some(add_to_store(&source_url, std::slice::from_ref(&w1_net_file))?.remove(0))
            }
            None => None,
        };
        let w2 = add_to_store(&source_url, std::slice::from_ref(&w2_dir))?.remove(0);
        let w3 = add_to_store(&source_url, &w3_files)?;
        let w5 = add_to_store(&source_url, &w5_dirs)?;
        remove_tree(&staging);

        let mut workloads = Self {
            source_url,
            w1,
            w1_net,
            w2,
            w3,
            w5,
            w5_files,
            w5_file_bytes,
            nar_hashes: BTreeMap::new(),
        };
        let all = workloads.all_paths();
        workloads.nar_hashes = nar_hashes(&workloads.source_url, &all, dir)?;
        if workloads.nar_hashes.len() != all.len() {
            bail!("the source store does not know all its workload paths");
        }
        Ok(workloads)
    }

    /// Checks that `paths` are valid in the store at `socket` with the source's NAR hashes.
    pub(crate) fn verify_paths(
        &self,
        socket: &Path,
        paths: &[String],
        scratch: &Path,
    ) -> Result<()> {
        let found = nar_hashes(&socket_url(socket), paths, scratch)?;
        for path in paths {
            match (found.get(path), self.nar_hashes.get(path)) {
                (Some(got), Some(want)) if got == want => {}
                (got, _) => bail!(
                    "{path} in {}: NAR hash {got:?}, expected the source's",
                    socket.display()
                ),
            }
        }
        Ok(())
    }
}

/// `nix-store --add` of `files` into `store_url`; the store paths in the same order.
fn add_to_store(store_url: &str, files: &[PathBuf]) -> Result<Vec<String>> {
    let output = nix_command("nix-store")
        .args(["--store", store_url, "--add"])
        .args(files)
        .output()
        .context("running nix-store --add")?;
    if !output.status.success() {
        bail!(
            "nix-store --add failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let paths: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    if paths.len() != files.len() || !paths.iter().all(|p| p.starts_with("/nix/store/")) {
        bail!(
            "nix-store --add printed {paths:?} for {} files",
            files.len()
        );
    }
    Ok(paths)
}

/// NAR hashes of the valid ones of `paths` in `store_url` (`nix path-info --json`).
fn nar_hashes(
    store_url: &str,
    paths: &[String],
    scratch: &Path,
) -> Result<BTreeMap<String, String>> {
    let out = scratch.join("path-info.json");
    let mut command = nix_command("nix");
    command
        .args(["path-info", "--json", "--store", store_url])
        .args(paths);
    run_timed(
        &mut command,
        Some(&out),
        &scratch.join("path-info.err"),
        NIX_TIMEOUT,
    )?
    .check("nix path-info --json")?;
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&out)?)
        .context("nix path-info printed invalid JSON")?;
    fs::remove_file(&out).ok();
    Ok(parse_path_info_hashes(&json))
}

/// Path → narHash from `nix path-info --json`: a list of objects with `path` (Nix up to
/// 2.18; invalid ones have `valid: false`) or an object keyed by path (later versions).
pub(crate) fn parse_path_info_hashes(json: &serde_json::Value) -> BTreeMap<String, String> {
    let mut hashes = BTreeMap::new();
    match json {
        serde_json::Value::Array(entries) => {
            for entry in entries {
                if let (Some(path), Some(hash)) =
                    (entry["path"].as_str(), entry["narHash"].as_str())
                    && entry["valid"] != false
                {
                    hashes.insert(path.to_owned(), hash.to_owned());
                }
            }
        }
        serde_json::Value::Object(entries) => {
            for (path, entry) in entries {
                if let Some(hash) = entry["narHash"].as_str() {
                    hashes.insert(path.clone(), hash.to_owned());
                }
            }
        }
        _ => {}
    }
    hashes
}

/// Copies regular files from the machine into `paths` directories under `dir`, about
/// `bytes` in all, split by size in walk order. Files come package by package, like a real
/// closure: Python's standard library (many small files), git's helpers, gcc (large
/// binaries and headers), /usr/bin, then the shared libraries. Returns the directories,
/// the file count and their total size.
fn stage_machine_files(dir: &Path, bytes: u64, paths: usize) -> Result<(Vec<PathBuf>, usize, u64)> {
    let mut roots: Vec<PathBuf> = fs::read_dir("/usr/lib")
        .map(|entries| {
            let mut pythons: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("python3."))
                })
                .collect();
            pythons.sort();
            pythons.truncate(1);
            pythons
        })
        .unwrap_or_default();
    roots.extend(
        [
            "/usr/lib/git-core",
            "/usr/lib/gcc",
            "/usr/bin",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/share",
        ]
        .map(PathBuf::from),
    );
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut seen = std::collections::HashSet::new();
    for root in &roots {
        walk_files(root, &mut |path, len| {
            if total >= bytes || len == 0 || !seen.insert(path.to_owned()) {
                return total < bytes;
            }
            if File::open(path).is_ok() {
                files.push((path.to_owned(), len));
                total += len;
            }
            total < bytes
        });
        if total >= bytes {
            break;
        }
    }
    if total < bytes / 2 {
        bail!("found only {total} bytes of files under {roots:?} for W5 (wanted {bytes})");
    }
    let per_path = total.div_ceil(paths as u64);
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut in_current = u64::MAX;
    for (file, len) in &files {
        if in_current >= per_path && dirs.len() < paths {
            let next = dir.join(format!("w5-usr-{}", dirs.len()));
            fs::create_dir(&next)?;
            dirs.push(next);
            in_current = 0;
        }
        let Some(current) = dirs.last() else { break };
        let relative = file.strip_prefix("/").unwrap_or(file);
        let target = current.join(relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(file, &target).with_context(|| format!("copying {}", file.display()))?;
        in_current += len;
    }
    Ok((dirs, files.len(), total))
}

/// Calls `visit(path, len)` for the regular files below `dir` in sorted order (symlinks are
/// not followed) until it returns false. Returns false when stopped.
fn walk_files(dir: &Path, visit: &mut dyn FnMut(&Path, u64) -> bool) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return true;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let keep_going = if meta.is_dir() {
            walk_files(&path, visit)
        } else if meta.is_file() {
            visit(&path, meta.len())
        } else {
            true
        };
        if !keep_going {
            return false;
        }
    }
    true
}

fn write_random_file(path: &Path, len: u64, rng: &mut XorShift64) -> Result<()> {
    let mut writer = BufWriter::new(File::create(path)?);
    let mut chunk = vec![0u8; 1 << 16];
    let mut remaining = len;
    while remaining > 0 {
        let n = remaining.min(chunk.len() as u64) as usize;
        rng.fill(&mut chunk[..n]);
        writer.write_all(&chunk[..n])?;
        remaining -= n as u64;
    }
    writer.flush()?;
    Ok(())
}

/// A small deterministic generator for incompressible test data.
pub(crate) struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed | 1 }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
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
        let hashes = parse_path_info_hashes(&old);
        assert_eq!(hashes.len(), 1);
        assert_eq!(hashes["/nix/store/a-x"], "sha256-A");

        let new = serde_json::json!({
            "/nix/store/a-x": {"narHash": "sha256-A"},
            "/nix/store/b-y": null,
        });
        let hashes = parse_path_info_hashes(&new);
        assert_eq!(hashes.len(), 1);
        assert_eq!(hashes["/nix/store/a-x"], "sha256-A");
    }

    #[test]
    fn random_numbers_stay_in_range_and_differ_by_seed() {
        let mut a = XorShift64::new(1);
        let mut b = XorShift64::new(2);
        assert_ne!(a.next_u64(), b.next_u64());
        assert!((0..1000).all(|_| a.below(7) < 7));
    }

    #[test]
    fn socket_urls_are_absolute() {
        assert_eq!(socket_url(Path::new("/tmp/x.sock")), "unix:///tmp/x.sock");
    }
}
