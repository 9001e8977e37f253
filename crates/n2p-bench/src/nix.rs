//! The benchmark's workloads W1..W5: a source store filled with seeded random files, small
//! files, many small paths and files from the machine, and the NAR hashes to check copies
//! against. Daemons, stores and `nix` invocations come from `n2p_testkit::nix`.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use n2p_testkit::{
    dir::remove_tree,
    nix::{PathInfo, check_same_nar, socket_store_url, try_add_paths, try_path_infos},
    rand::XorShift64,
};
use serde::Serialize;

/// Longest one nix command of the benchmark may take.
pub(crate) const NIX_TIMEOUT: Duration = Duration::from_secs(300);

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

    /// These sizes without W5, which only the transfer section uses (the pulls' P1..P3 are
    /// W1..W3).
    pub(crate) fn without_w5(self) -> Self {
        Self {
            w5_bytes: 0,
            w5_paths: 0,
            ..self
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
    /// NAR hash and size of every path above, from the source store.
    #[serde(skip)]
    pub(crate) nar_infos: BTreeMap<String, PathInfo>,
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
        rng.write_file(&w1_file, sizes.w1_bytes)?;
        let w1_net_file = staging.join("w1-net-random");
        if let Some(bytes) = w1_net_bytes {
            rng.write_file(&w1_net_file, bytes)?;
        }

        let w2_dir = staging.join("w2-small-files");
        fs::create_dir(&w2_dir)?;
        for i in 0..sizes.w2_files {
            let len = 1024 + rng.below(7 * 1024 + 1);
            rng.write_file(&w2_dir.join(format!("f{i:05}")), len)?;
        }

        let w3_dir = staging.join("w3");
        fs::create_dir(&w3_dir)?;
        let mut w3_files = Vec::new();
        for i in 0..sizes.w3_paths {
            let file = w3_dir.join(format!("w3-path-{i:03}"));
            let len = 1024 + rng.below(7 * 1024 + 1);
            rng.write_file(&file, len)?;
            w3_files.push(file);
        }

        let w5_dir = staging.join("w5");
        fs::create_dir(&w5_dir)?;
        let (w5_dirs, w5_files, w5_file_bytes) = if sizes.w5_paths == 0 {
            (Vec::new(), 0, 0)
        } else {
            stage_machine_files(&w5_dir, sizes.w5_bytes, sizes.w5_paths)?
        };

        let add = |files: &[PathBuf]| try_add_paths(&source_url, files, NIX_TIMEOUT);
        let w1 = add(std::slice::from_ref(&w1_file))?.remove(0);
        let w1_net = match w1_net_bytes {
            Some(_) => Some(add(std::slice::from_ref(&w1_net_file))?.remove(0)),
            None => None,
        };
        let w2 = add(std::slice::from_ref(&w2_dir))?.remove(0);
        let w3 = add(&w3_files)?;
        let w5 = if w5_dirs.is_empty() {
            Vec::new()
        } else {
            add(&w5_dirs)?
        };
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
            nar_infos: BTreeMap::new(),
        };
        let all = workloads.all_paths();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        workloads.nar_infos = try_path_infos(&workloads.source_url, &all, NIX_TIMEOUT)?;
        if workloads.nar_infos.len() != all.len() {
            bail!("the source store does not know all its workload paths");
        }
        Ok(workloads)
    }

    /// Checks that `paths` are valid in the store at `socket` with the source's NAR hashes
    /// and sizes (nothing to check when there are none, as after `nix store ping` alone).
    pub(crate) fn verify_paths(&self, socket: &Path, paths: &[String]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        check_same_nar(
            &self.nar_infos,
            &socket_store_url(socket),
            &paths,
            NIX_TIMEOUT,
        )?;
        Ok(())
    }
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
