//! Scratch directories that go away even when Nix made parts of them read-only (store paths
//! are `r-x`, which would stop a non-root user from deleting them).

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A temporary directory for one test's files, deleted on drop.
pub struct ScratchDir {
    dir: tempfile::TempDir,
}

impl ScratchDir {
    /// Creates an empty directory under the system's temp dir; `role` goes into its name to
    /// make leftovers recognisable.
    pub fn new(role: &str) -> Self {
        Self::new_in(&env::temp_dir(), role)
    }

    /// Like [`Self::new`], but inside `parent`: tests that check what appears around a
    /// directory keep everything under one root.
    pub fn new_in(parent: &Path, role: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("n2p-test-{role}-"))
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
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        make_dirs_writable(self.dir.path());
        // The TempDir field then deletes the tree.
    }
}

/// Deletes the tree at `dir`, even where Nix made it read-only (best effort).
pub fn remove_tree(dir: &Path) {
    if fs::remove_dir_all(dir).is_ok() {
        return;
    }
    make_dirs_writable(dir);
    let _ = fs::remove_dir_all(dir);
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
