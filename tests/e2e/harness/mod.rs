//! What the end-to-end tests need beyond `n2p_testkit` (real Nix, processes, waits, homes):
//! the binary under test ([`N2P`]), mesh teams and nodes ([`mesh`]), forged in-process mesh
//! nodes ([`forge`]), a raw gossip node that replays recorded announcements ([`replay`])
//! and looks at directories.
//!
//! ```ignore
//! if !require_nix("my_test") {
//!     return;
//! }
//! let daemon = NixDaemon::start();
//! let server_home = TempHome::new(N2P);
//! let server = server_home.server(&ServerConfig::new(daemon.socket_path()));
//! ```
//!
//! Every wait is bounded and panics with a message naming what it waited for, so a hanging
//! tunnel fails the test instead of hanging the suite.

pub(crate) mod forge;
pub(crate) mod mesh;
pub(crate) mod replay;
pub(crate) mod stranger;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The binary under test (Cargo gives its path to this test crate only).
pub(crate) const N2P: &str = env!("CARGO_BIN_EXE_n2p");

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
