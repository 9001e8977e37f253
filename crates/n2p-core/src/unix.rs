//! Unix sockets that reach a daemon: created owner-only (0600), with no window in which
//! others could connect, stale files from a crash replaced, live sockets never stolen, and
//! removed again when the guard drops.

use std::{
    fs, io,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

/// The longest path a unix socket can be bound at: `sun_path` less its NUL (107 bytes on
/// Linux, 103 on macOS).
pub const MAX_SOCKET_PATH: usize = std::mem::size_of::<libc::sockaddr_un>()
    - std::mem::offset_of!(libc::sockaddr_un, sun_path)
    - 1;

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
    /// The path is a symbolic link; it is neither followed nor replaced.
    #[error("{} is a symbolic link; refusing to bind through it or replace it (remove it, or choose another --socket)", path.display())]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// The path is longer than a unix socket address allows.
    #[error("socket path {} is too long for a unix socket (max {MAX_SOCKET_PATH} bytes); choose a shorter --socket or N2P_HOME", path.display())]
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
/// The socket is bound under a temporary name, created 0600 (see `bind_owner_only`:
/// never the umask's mode, even for a moment), then renamed into place, so the final path
/// never has looser permissions and appears complete. A stale socket (nobody listening) is
/// replaced; a live one, a symbolic link or any other
/// kind of file is an error and left as it is. Must be called inside a tokio runtime.
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
    if path.as_os_str().len() > MAX_SOCKET_PATH {
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
    let listener = bind_owner_only(&tmp).map_err(io_err)?;
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

/// Creates a listening socket at `path` whose file is 0600 from the moment it exists: the
/// socket's inode is made owner-only (`fchmod`) before `bind` creates the file, which
/// Linux then creates with that mode (minus the umask), never the umask's looser default.
#[cfg(target_os = "linux")]
fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: plain system calls on a descriptor we create and own.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    let fd = owned(fd)?;
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(std::os::fd::AsRawFd::as_raw_fd(&fd), 0o600) } != 0 {
        return Err(io::Error::last_os_error());
    }
    bind_and_listen(fd, path, |_| Ok(()))
}

/// Elsewhere (macOS: no `SOCK_CLOEXEC`, and `fchmod` on a socket fails with EINVAL) the file
/// is made 0600 by path after `bind` and before `listen`: nobody can connect to a socket
/// that does not listen yet. In n2p's own directories (0700, or 0750 for the peers group)
/// nobody else can swap the path in between; a `--socket` path the user picks elsewhere is
/// as safe as its directory.
#[cfg(not(target_os = "linux"))]
fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    bind_then_chmod(path)
}

/// [`bind_owner_only`] of systems other than Linux; compiled on Linux for its test.
#[cfg(any(test, not(target_os = "linux")))]
fn bind_then_chmod(path: &Path) -> io::Result<UnixListener> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain system calls on a descriptor we create and own.
    let fd = owned(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) })?;
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with flag arguments only.
    unsafe {
        if libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) == -1
            || libc::fcntl(raw, libc::F_SETFL, libc::O_NONBLOCK) == -1
        {
            return Err(io::Error::last_os_error());
        }
    }
    bind_and_listen(fd, path, |path| {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
    })
}

/// `fd` (the result of `socket`) as an owned descriptor, or the error it stands for.
fn owned(fd: libc::c_int) -> io::Result<std::os::fd::OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket() just returned, owned by nobody else.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Binds the socket `fd` to `path`, runs `between` on the path, then listens; the file is
/// removed again if `between` or `listen` fails.
fn bind_and_listen(
    fd: std::os::fd::OwnedFd,
    path: &Path,
    between: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<UnixListener> {
    use std::os::{fd::AsRawFd, unix::ffi::OsStrExt};
    let raw = fd.as_raw_fd();
    // SAFETY: the address struct is zeroed, then filled within its bounds (the path length
    // is checked against it); bind and listen act on a descriptor we own.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        if bytes.len() >= addr.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "socket path too long",
            ));
        }
        for (slot, byte) in addr.sun_path.iter_mut().zip(bytes) {
            *slot = *byte as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
        if libc::bind(raw, (&raw const addr).cast(), len as libc::socklen_t) != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Err(err) = between(path) {
            fs::remove_file(path).ok();
            return Err(err);
        }
        if libc::listen(raw, 1024) != 0 {
            let err = io::Error::last_os_error();
            fs::remove_file(path).ok();
            return Err(err);
        }
    }
    UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
}

/// Removes `path` if it is a socket nobody listens on; errors if it is live, not a socket,
/// or a symbolic link (to anything: a link is never followed, replaced or removed).
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
    // Never followed: a link could point at a live socket or a file of someone else's.
    if meta.file_type().is_symlink() {
        return Err(UnixBindError::Symlink {
            path: path.to_owned(),
        });
    }
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
    if tmp.as_os_str().len() > MAX_SOCKET_PATH {
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

    /// A symbolic link at the socket path is refused and left alone, and so is whatever it
    /// points at: a file of the user's, a stale socket, nothing at all.
    #[tokio::test]
    async fn symlinks_are_never_followed_or_replaced() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"keep me")?;
        let stale = tmp.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale)?);
        for (i, target) in [&victim, &stale, &tmp.path().join("missing")]
            .into_iter()
            .enumerate()
        {
            let link = tmp.path().join(format!("link{i}.sock"));
            std::os::unix::fs::symlink(target, &link)?;
            let err = bind_private_listener(&link).expect_err("bound through a symlink");
            assert_eq!(
                err.to_string(),
                format!(
                    "{} is a symbolic link; refusing to bind through it or replace it (remove \
                     it, or choose another --socket)",
                    link.display()
                )
            );
            assert_eq!(fs::read_link(&link)?, *target, "the link was changed");
        }
        assert_eq!(fs::read(&victim)?, b"keep me");
        assert!(fs::symlink_metadata(&stale)?.file_type().is_socket());
        assert!(!tmp.path().join("missing").exists());
        Ok(())
    }

    /// The socket file is owner-only as soon as it exists, before any chmod: under the
    /// usual umask (022) a plain bind would create it 0755.
    #[tokio::test]
    async fn a_socket_is_created_owner_only() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("fresh.sock");
        let listener = bind_owner_only(&path)?;
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        // It accepts connections.
        let _client = tokio::net::UnixStream::connect(&path).await?;
        let _accepted = listener.accept().await?;
        Ok(())
    }

    /// The way other systems bind (chmod by path between bind and listen), run here: 0600,
    /// close-on-exec, non-blocking, and it accepts; a failed chmod leaves no file behind.
    #[tokio::test]
    async fn the_bind_of_other_systems_is_owner_only_and_cleans_up()
    -> Result<(), Box<dyn std::error::Error>> {
        use std::os::fd::AsRawFd;
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("portable.sock");
        let listener = bind_then_chmod(&path)?;
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        let raw = listener.as_raw_fd();
        // SAFETY: fcntl reads the flags of a descriptor the listener owns.
        let (fd_flags, fl_flags) = unsafe {
            (
                libc::fcntl(raw, libc::F_GETFD),
                libc::fcntl(raw, libc::F_GETFL),
            )
        };
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0, "close-on-exec");
        assert_ne!(fl_flags & libc::O_NONBLOCK, 0, "non-blocking");
        let _client = tokio::net::UnixStream::connect(&path).await?;
        let _accepted = listener.accept().await?;

        let failing = tmp.path().join("failing.sock");
        // SAFETY: socket() takes flag arguments only.
        let fd = owned(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) })?;
        let err = bind_and_listen(fd, &failing, |_| Err(io::Error::other("no chmod")))
            .expect_err("between failed");
        assert_eq!(err.to_string(), "no chmod");
        assert!(!failing.exists(), "the bound file was left behind");
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
