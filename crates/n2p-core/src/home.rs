//! The n2p home directory (`$N2P_HOME`, default `~/.n2p`): where keys, sockets and the
//! personal config live, always with owner-only permissions.

use std::{
    fs, io,
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

/// Environment variable that overrides the home directory.
pub const N2P_HOME_ENV: &str = "N2P_HOME";

/// Errors while locating or preparing the home directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// Neither `$N2P_HOME` nor `$HOME` is set.
    #[error("cannot find a home directory: set N2P_HOME or HOME")]
    NoHome,
    /// An existing directory is open to other users (or owned by another user). n2p does
    /// not change permissions of what it did not create; the user decides.
    #[error(
        "{} is open to other users (mode {mode:o}{}); n2p keeps keys and daemon sockets there\n  hint: `chmod 700 {}` if it is yours alone, or set N2P_HOME (or --home) to another directory",
        path.display(),
        if *foreign_owner { ", owned by another user" } else { "" },
        path.display()
    )]
    TooOpen {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Whether another user owns it.
        foreign_owner: bool,
    },
    /// An existing directory meant to be shared with a group is not exactly that: mode 0750
    /// (no group write, nothing for others), this user's, and the group's. Left untouched.
    #[error(
        "{} is not set up for group {gid} (found mode {mode:o}, group {found_gid}{}); n2p shares peer sockets there\n  hint: `chgrp {gid} {} && chmod 750 {}` if that is what you want, or remove it and n2p creates it",
        path.display(),
        if *foreign_owner { ", owned by another user" } else { "" },
        path.display(),
        path.display()
    )]
    NotGroupDir {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The group it should belong to.
        gid: u32,
        /// The group it belongs to.
        found_gid: u32,
        /// Whether another user owns it.
        foreign_owner: bool,
    },
    /// A directory could not be created or its permissions read.
    #[error("cannot prepare directory {}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// The home directory of one n2p node.
#[derive(Debug, Clone)]
pub struct N2pHome {
    root: PathBuf,
}

impl N2pHome {
    /// Uses `$N2P_HOME` when set, else `$HOME/.n2p`.
    pub fn from_env() -> Result<Self, HomeError> {
        if let Some(dir) = std::env::var_os(N2P_HOME_ENV).filter(|d| !d.is_empty()) {
            return Ok(Self::new(dir));
        }
        let home = std::env::var_os("HOME")
            .filter(|d| !d.is_empty())
            .ok_or(HomeError::NoHome)?;
        Ok(Self::new(Path::new(&home).join(".n2p")))
    }

    /// A home at an explicit path (not created until needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node's ed25519 secret key file.
    pub fn secret_key_path(&self) -> PathBuf {
        self.root.join("secret.key")
    }

    /// The access secret that `n2p server` addresses carry.
    pub fn access_secret_path(&self) -> PathBuf {
        self.root.join("access.secret")
    }

    /// The personal config file.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// Where `n2p client` puts its sockets by default.
    pub fn clients_dir(&self) -> PathBuf {
        self.root.join("clients")
    }

    /// Where the mesh keeps one socket per live peer.
    pub fn peers_dir(&self) -> PathBuf {
        self.root.join("peers")
    }

    /// The running node's control socket.
    pub fn control_socket_path(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// Takes the exclusive lock of a long-running node of kind `what` (e.g. "mesh"), so two
    /// nodes never share one home's sockets. Released when the returned guard drops (or the
    /// process dies: the kernel drops flock locks with the file descriptor).
    pub fn lock(&self, what: &str) -> Result<NodeLock, LockError> {
        self.ensure().map_err(LockError::Home)?;
        let path = self.root.join(format!("{what}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| LockError::Io {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a descriptor we own; no memory is shared with the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.kind() == io::ErrorKind::WouldBlock {
                LockError::Held { path }
            } else {
                LockError::Io { path, source: err }
            });
        }
        Ok(NodeLock { _file: file })
    }

    /// The process holding the lock of kind `what` (see [`N2pHome::lock`]), if any, read from
    /// Linux's `/proc/locks` without touching the lock: a probe that took it, even shared and
    /// briefly, could make a node starting at that moment fail. A lock on the file's inode
    /// counts when its device matches too or, where `/proc/locks` names another device (a
    /// btrfs subvolume), when the holder has the file open. `None` when the lock file is
    /// missing, no process is seen holding it, or (elsewhere than Linux) it cannot be told.
    pub fn lock_holder(&self, what: &str) -> Option<u32> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let path = self.root.join(format!("{what}.lock"));
        let meta = fs::metadata(&path).ok()?;
        let locks = fs::read_to_string("/proc/locks").ok()?;
        flock_holders(&locks, meta.ino())
            .into_iter()
            .find(|&(pid, dev)| dev == Some(meta.dev()) || has_open(pid, meta.dev(), meta.ino()))
            .map(|(pid, _)| pid)
    }

    /// Creates the home directory (mode 0700) if it is missing.
    pub fn ensure(&self) -> Result<&Path, HomeError> {
        ensure_private_dir(&self.root)?;
        Ok(&self.root)
    }

    /// Creates `sub` below the home (both mode 0700) and returns its path.
    pub fn ensure_subdir(&self, sub: &Path) -> Result<(), HomeError> {
        self.ensure()?;
        ensure_private_dir(sub)
    }
}

/// The holders of exclusive locks on inode `ino` in the text of `/proc/locks` (lines like
/// `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF`; NFS shows flock locks as POSIX), each
/// with the device the line names (hex major and minor, split as Linux's `makedev` lays
/// them out; `None` if unreadable). Blocked requests (`->` lines) hold nothing, and pid 0
/// (a holder in another pid namespace) cannot be named.
fn flock_holders(locks: &str, ino: u64) -> Vec<(u32, Option<u64>)> {
    locks
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, "FLOCK" | "POSIX", _, "WRITE", pid, file, ..] = fields.as_slice() else {
                return None;
            };
            let mut parts = file.split(':');
            let (Some(maj), Some(min), Some(inode), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            if inode.parse::<u64>().ok()? != ino {
                return None;
            }
            let pid: u32 = pid.parse().ok().filter(|&p| p != 0)?;
            let dev = match (u64::from_str_radix(maj, 16), u64::from_str_radix(min, 16)) {
                (Ok(major), Ok(minor)) => Some(linux_makedev(major, minor)),
                _ => None,
            };
            Some((pid, dev))
        })
        .collect()
}

/// A device number from its major and minor, laid out as Linux's `makedev` does (libc's
/// differs in type between systems).
fn linux_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// Whether process `pid` has the file `dev`/`ino` open (false if its descriptors cannot be
/// read: another user's process, unless root).
fn has_open(pid: u32, dev: u64, ino: u64) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| fs::metadata(fd.path()).is_ok_and(|meta| meta.dev() == dev && meta.ino() == ino))
}

/// Held while a node runs; see [`N2pHome::lock`].
#[derive(Debug)]
pub struct NodeLock {
    _file: fs::File,
}

/// Errors while taking the node lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it.
    #[error("another n2p node is already running with this home ({} is locked); stop it or use another N2P_HOME", path.display())]
    Held {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be opened.
    #[error("cannot open lock file {}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The home could not be prepared.
    #[error(transparent)]
    Home(HomeError),
}

/// Creates `dir` (and parents) owner-only (0700) if it is missing.
///
/// An existing directory is used only when it is this user's and closed to everyone else;
/// otherwise it is refused with a hint and left exactly as it is ([`HomeError::TooOpen`]):
/// it will hold keys and sockets that reach a nix-daemon, and a directory n2p did not
/// create is not n2p's to chmod.
pub fn ensure_private_dir(dir: &Path) -> Result<(), HomeError> {
    let io_err = |source| HomeError::Io {
        path: dir.to_owned(),
        source,
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let foreign_owner = meta.uid() != unsafe { libc::geteuid() };
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 || foreign_owner {
                return Err(HomeError::TooOpen {
                    path: dir.to_owned(),
                    mode,
                    foreign_owner,
                });
            }
            Ok(())
        }
        Ok(_) => Err(io_err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err),
        Err(e) => Err(io_err(e)),
    }
}

/// Creates `dir` for this user and the members of group `gid`: owner all, group read and
/// traverse, others nothing (0750), group-owned by `gid`. Its parent must exist.
///
/// The directory is created 0700, given to the group, and only then opened to it, so no
/// one outside the group ever sees it open. An existing directory is used only when it is
/// this user's, the group's, and exactly 0750 (a set-gid bit is fine); anything else is
/// refused with a hint and left as it is ([`HomeError::NotGroupDir`]).
pub fn ensure_group_dir(dir: &Path, gid: u32) -> Result<(), HomeError> {
    let io_err = |source| HomeError::Io {
        path: dir.to_owned(),
        source,
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let foreign_owner = meta.uid() != unsafe { libc::geteuid() };
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o777 != 0o750 || meta.gid() != gid || foreign_owner {
                return Err(HomeError::NotGroupDir {
                    path: dir.to_owned(),
                    mode,
                    gid,
                    found_gid: meta.gid(),
                    foreign_owner,
                });
            }
            Ok(())
        }
        Ok(_) => Err(io_err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io_err)?;
            let opened = std::os::unix::fs::chown(dir, None, Some(gid))
                .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o750)));
            if let Err(e) = opened {
                // Ours, just made and still empty: take it away again.
                fs::remove_dir(dir).ok();
                return Err(io_err(e));
            }
            Ok(())
        }
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_lock_holder_is_read_from_proc_locks_without_taking_the_lock() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = N2pHome::new(tmp.path().join("h"));
        assert_eq!(home.lock_holder("node"), None, "no lock file yet");
        let lock = home.lock("node").expect("lock");
        assert_eq!(home.lock_holder("node"), Some(std::process::id()));
        // Reading it took nothing: the lock is still ours and cannot be taken twice.
        assert!(matches!(home.lock("node"), Err(LockError::Held { .. })));
        drop(lock);
        assert_eq!(home.lock_holder("node"), None, "released");
    }

    #[test]
    fn proc_locks_lines_are_matched_by_inode_with_their_device() {
        let makedev = linux_makedev;
        #[cfg(target_os = "linux")]
        assert_eq!(
            makedev(0x1_2345, 0x67_89ab),
            libc::makedev(0x1_2345, 0x67_89ab)
        );
        let dev = Some(makedev(0xfd, 0x01));
        let locks = "1: POSIX  ADVISORY  WRITE 11 fd:01:77 0 EOF\n\
                     2: FLOCK  ADVISORY  READ 12 fd:01:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 13 fd:02:78 0 EOF\n\
                     3: -> FLOCK  ADVISORY  WRITE 14 fd:01:77 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 15 fd:01:77 0 EOF\n\
                     5: FLOCK  ADVISORY  WRITE 0 fd:01:77 0 EOF\n\
                     6: FLOCK  ADVISORY  WRITE 16 12345:6789ab:77 0 EOF\n";
        assert_eq!(
            flock_holders(locks, 77),
            vec![
                (11, dev),
                (15, dev),
                (16, Some(makedev(0x1_2345, 0x67_89ab)))
            ]
        );
        assert_eq!(
            flock_holders(locks, 78),
            vec![(13, Some(makedev(0xfd, 0x02)))]
        );
        assert!(flock_holders("garbage\n5: FLOCK x WRITE y z", 77).is_empty());
    }

    #[test]
    fn creates_private_dirs_and_refuses_open_ones_untouched() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = N2pHome::new(tmp.path().join("h"));
        home.ensure().expect("ensure");
        let mode = fs::metadata(home.root())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        home.ensure().expect("an existing private home is fine");

        // A shared directory (sticky, world-writable, like /tmp) and a merely readable one:
        // refused with a hint, and their modes (sticky bit included) stay as they were.
        for open in [0o1777, 0o755] {
            let dir = tmp.path().join(format!("open{open:o}"));
            fs::create_dir(&dir).expect("mkdir");
            fs::set_permissions(&dir, fs::Permissions::from_mode(open)).expect("chmod");
            let err = ensure_private_dir(&dir).expect_err("too open");
            assert!(matches!(err, HomeError::TooOpen { .. }), "{err}");
            assert!(err.to_string().contains("chmod 700"), "{err}");
            let mode = fs::metadata(&dir).expect("meta").permissions().mode() & 0o7777;
            assert_eq!(mode, open, "the directory's mode was changed");
        }
    }

    #[test]
    fn a_second_node_on_one_home_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = N2pHome::new(tmp.path().join("h"));
        let first = home.lock("mesh").expect("first");
        assert!(matches!(home.lock("mesh"), Err(LockError::Held { .. })));
        drop(first);
        home.lock("mesh").expect("after release");
    }

    #[test]
    fn a_group_dir_is_0750_and_the_groups_and_a_wrong_one_is_left_alone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // SAFETY: getegid has no preconditions and cannot fail.
        let gid = unsafe { libc::getegid() };
        let dir = tmp.path().join("peers");
        ensure_group_dir(&dir, gid).expect("create");
        let meta = fs::metadata(&dir).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        assert_eq!(meta.gid(), gid);
        ensure_group_dir(&dir, gid).expect("an existing group dir is fine");

        for wrong in [0o700, 0o770, 0o755] {
            let dir = tmp.path().join(format!("wrong{wrong:o}"));
            fs::create_dir(&dir).expect("mkdir");
            fs::set_permissions(&dir, fs::Permissions::from_mode(wrong)).expect("chmod");
            let err = ensure_group_dir(&dir, gid).expect_err("wrong mode");
            assert!(matches!(err, HomeError::NotGroupDir { .. }), "{err}");
            assert!(err.to_string().contains("chmod 750"), "{err}");
            let mode = fs::metadata(&dir).expect("meta").permissions().mode() & 0o7777;
            assert_eq!(mode, wrong, "the directory's mode was changed");
        }
        // A missing parent is an error, not a tree of new directories.
        assert!(ensure_group_dir(&tmp.path().join("a/b"), gid).is_err());
        assert!(!tmp.path().join("a").exists());
    }

    #[test]
    fn refuses_a_file_where_a_dir_should_be() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("f");
        fs::write(&file, b"x").expect("write");
        assert!(ensure_private_dir(&file).is_err());
    }
}
