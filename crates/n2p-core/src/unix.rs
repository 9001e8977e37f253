//! Unix sockets that reach a daemon: bound owner-only (0600) without a window in which
//! others could connect, stale files from a crash replaced, live sockets never stolen, and
//! removed again when the guard drops.

use std::{
    fs, io,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

/// Errors while binding a unix socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnixBindError {
    /// Another live process listens on the path.
    #[error("{} is in use by another running process (stop it, or choose another --socket)", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; it is left alone.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The path is longer than a unix socket address allows.
    #[error("socket path {} is too long for a unix socket (max 107 bytes); choose a shorter --socket or N2P_HOME", path.display())]
    TooLong {
        /// The path.
        path: PathBuf,
    },
    /// Binding or setting permissions failed (e.g. directory not writable).
    #[error("cannot create socket {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Removes the socket file on drop, unless something else has replaced it since.
#[derive(Debug)]
pub struct SocketFileGuard {
    path: PathBuf,
    inode: Option<(u64, u64)>,
}

impl SocketFileGuard {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .map(|m| Some((m.dev(), m.ino())) == self.inode)
            .unwrap_or(false);
        if ours {
            fs::remove_file(&self.path).ok();
        }
    }
}

/// Who may connect to a socket n2p binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocketAccess {
    /// The owner only: mode 0600 (the default).
    #[default]
    Owner,
    /// The owner and the members of this group (a gid): mode 0660, group-owned by it. The
    /// process must be a member of the group (or privileged) to give the socket to it.
    Group(u32),
}

impl SocketAccess {
    /// The permission bits of a socket bound with this access.
    pub fn socket_mode(self) -> u32 {
        match self {
            Self::Owner => 0o600,
            Self::Group(_) => 0o660,
        }
    }
}

/// Binds a listening unix socket at `path` with mode 0600.
///
/// The socket is bound under a temporary name, restricted, then renamed into place, so the
/// final path never has looser permissions. (The temporary name exists for a moment with
/// the umask's mode; every caller binds inside a 0700 directory or one the user chose.) A stale socket (nobody listening) is replaced;
/// a live one, or any other kind of file, is an error. Must be called inside a tokio runtime.
pub fn bind_private_listener(
    path: &Path,
) -> Result<(UnixListener, SocketFileGuard), UnixBindError> {
    bind_listener(path, SocketAccess::Owner)
}

/// Like [`bind_private_listener`], with the socket's permissions given by `access`: for
/// [`SocketAccess::Group`] the temporary name is given to the group and opened to it (0660)
/// before it is renamed into place.
pub fn bind_listener(
    path: &Path,
    access: SocketAccess,
) -> Result<(UnixListener, SocketFileGuard), UnixBindError> {
    if path.as_os_str().len() > 107 {
        return Err(UnixBindError::TooLong {
            path: path.to_owned(),
        });
    }
    let io_err = |source| UnixBindError::Io {
        path: path.to_owned(),
        source,
    };
    clear_stale_socket(path)?;
    let tmp = temporary_name(path);
    let listener = UnixListener::bind(&tmp).map_err(io_err)?;
    let grouped = match access {
        SocketAccess::Owner => Ok(()),
        SocketAccess::Group(gid) => std::os::unix::fs::chown(&tmp, None, Some(gid)),
    };
    let placed = grouped
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(access.socket_mode())))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = placed {
        fs::remove_file(&tmp).ok();
        return Err(io_err(e));
    }
    let inode = fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let guard = SocketFileGuard {
        path: path.to_owned(),
        inode,
    };
    Ok((listener, guard))
}

/// Removes `path` if it is a socket nobody listens on; errors if it is live or not a socket.
pub fn clear_stale_socket(path: &Path) -> Result<(), UnixBindError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(UnixBindError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(UnixBindError::NotASocket {
            path: path.to_owned(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(UnixBindError::InUse {
            path: path.to_owned(),
        }),
        Err(_) => fs::remove_file(path).map_err(|source| UnixBindError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn temporary_name(path: &Path) -> PathBuf {
    let suffix: u32 = rand::random();
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{suffix:08x}.tmp"));
    let tmp = path.with_file_name(name);
    // Keep within the sun_path limit; fall back to a short name in the same directory.
    if tmp.as_os_str().len() > 107 {
        path.with_file_name(format!(".{suffix:08x}.tmp"))
    } else {
        tmp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_private_replaces_stale_keeps_live() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("x.sock");
        {
            let (_listener, guard) = bind_private_listener(&path)?;
            assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
            // A live socket is not stolen.
            assert!(matches!(
                bind_private_listener(&path),
                Err(UnixBindError::InUse { .. })
            ));
            // Simulate a crash: forget the guard so the file stays behind.
            std::mem::forget(guard);
        }
        // Listener dropped: the file is stale now and gets replaced.
        let (_listener, guard) = bind_private_listener(&path)?;
        drop(guard);
        assert!(!path.exists());

        let file = tmp.path().join("plain");
        fs::write(&file, b"keep me")?;
        assert!(matches!(
            bind_private_listener(&file),
            Err(UnixBindError::NotASocket { .. })
        ));
        assert_eq!(fs::read(&file)?, b"keep me");
        Ok(())
    }

    #[tokio::test]
    async fn a_group_socket_is_0660_and_owned_by_the_group()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("g.sock");
        // The process's own group: giving a file to it needs no privilege.
        // SAFETY: getegid has no preconditions and cannot fail.
        let gid = unsafe { libc::getegid() };
        let (_listener, _guard) = bind_listener(&path, SocketAccess::Group(gid))?;
        let meta = fs::metadata(&path)?;
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid);
        Ok(())
    }

    #[tokio::test]
    async fn unwritable_directory_is_an_error() {
        let err = bind_private_listener(Path::new("/proc/n2p-test.sock")).expect_err("no");
        assert!(matches!(err, UnixBindError::Io { .. }));
    }
}
