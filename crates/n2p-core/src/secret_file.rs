//! Files holding secrets: read only after checking the opened file itself, created atomically
//! with mode 0600. Every secret file n2p reads goes through [`read_secret_file`]: the node key
//! and access secret ([`crate::identity`]) and the mesh's team secret.
//!
//! ```
//! use n2p_core::secret_file::{SecretFileError, create_secret_file, read_secret_file};
//! use std::os::unix::fs::PermissionsExt;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("team.secret");
//! create_secret_file(&path, b"0123456789abcdef\n")?;
//! assert_eq!(&read_secret_file(&path, 64)?[..], b"0123456789abcdef\n");
//!
//! std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
//! assert!(matches!(
//!     read_secret_file(&path, 64),
//!     Err(SecretFileError::TooOpen { mode: 0o644, .. })
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What is checked, and why:
//!
//! - The file is opened once, and its type and mode are read from the open descriptor
//!   (`fstat`), so a file swapped in between a check and the read cannot slip through.
//!   (Rust opens every file with `O_CLOEXEC`, so no child process inherits it.)
//! - Symbolic links are followed. Nix secret managers (agenix, sops-nix) hand out secrets as
//!   links into a generation directory, and refusing links would refuse them; since the checks
//!   apply to the file actually opened, a link to a file others may read is still refused.
//! - Group and others must have no permission bits at all (`mode & 0o077 == 0`); the error
//!   says how to fix it (`chmod 600 <path>`).
//! - Except through a POSIX ACL (Linux) that grants only this process's user, on a file
//!   owned by root or by this user: systemd hands a unit its credentials (`LoadCredential=`)
//!   as a root-owned 0400 file plus an ACL entry for the unit's user wherever the
//!   credentials' file system has ACLs (a tmpfs; on ramfs it changes the owner instead),
//!   which shows as mode 0440 (the group bits are the ACL's mask). Such a file is read; one
//!   whose ACL lets any other user or group in, or that another user owns (who could change
//!   it under the node), is refused like a 0440 file, and `chmod 600` fixes the first.
//! - Only regular files are read: a directory, device or pipe is refused by name, and the
//!   open uses `O_NONBLOCK` so that a pipe cannot hang the node before it is refused.
//! - The owner of a file without an ACL is not checked. With no group or other bits, a
//!   process can only read a file it owns unless it is privileged; and a root-run node
//!   reading a file a user owns is a setup someone chose (that user could hand the secret
//!   over anyway).
//! - At most a caller-given number of bytes is read; a longer file is refused rather than cut.

use std::{
    fs,
    io::{self, Read, Write},
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use crate::home::HomeError;

/// Errors while loading or creating a secret file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// Group or others have permissions on the file.
    #[error(
        "{} is readable by other users (mode {mode:o}); fix it with: chmod 600 {}",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path names something other than a regular file.
    #[error(
        "{} is {kind}, not a regular file; move it out of the way (n2p never removes what it did not create)",
        path.display()
    )]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead, e.g. "a directory".
        kind: &'static str,
    },
    /// The file is longer than its caller allows.
    #[error("{} is larger than {limit} bytes, too large for a secret file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The most bytes allowed.
        limit: usize,
    },
    /// One of n2p's own key files (see [`crate::identity`]) does not hold 64 hex digits.
    #[error("{} is not a valid key file (expected 64 hex digits); move it away to create a new one", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// Opening, reading or writing failed (a missing file is `io::ErrorKind::NotFound`).
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The home directory meant to hold the file could not be prepared.
    #[error(transparent)]
    Home(#[from] HomeError),
}

/// Reads the secret file at `path` (at most `limit` bytes) after checking, on the opened file,
/// that it is a regular file with no permissions for group or others.
pub fn read_secret_file(path: &Path, limit: usize) -> Result<Zeroizing<Vec<u8>>, SecretFileError> {
    let io_err = |source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a named pipe"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(SecretFileError::NotAFile {
            path: path.to_owned(),
            kind,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let owner_may_share = meta.uid() == 0 || meta.uid() == me;
    if mode & 0o077 != 0 && !(owner_may_share && acl::only_owner_and_me(&file)) {
        return Err(SecretFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    // Room for one byte more than allowed, so the buffer never grows (leaving a copy behind)
    // and an over-long file shows.
    let mut bytes = Zeroizing::new(Vec::with_capacity(limit.saturating_add(1)));
    let wanted = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    file.take(wanted).read_to_end(&mut bytes).map_err(io_err)?;
    if bytes.len() > limit {
        return Err(SecretFileError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// Creates `path` with mode 0600 holding `contents`, atomically: they are written to a
/// temporary file beside it first and then linked into place, so a concurrent reader never
/// sees a half-written secret. Fails with `io::ErrorKind::AlreadyExists` if `path` exists
/// (also when it is a symbolic link: neither the temporary file nor the link follows one).
pub fn create_secret_file(path: &Path, contents: &[u8]) -> Result<(), SecretFileError> {
    let suffix: u64 = rand::random();
    let tmp = path.with_extension(format!("{suffix:016x}.tmp"));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    fs::remove_file(&tmp).ok();
    written.map_err(|source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Who an access ACL lets in (Linux's `system.posix_acl_access`, see acl(5)).
mod acl {
    // Read only on Linux; the parser and its tests stay compiled everywhere.
    #![cfg_attr(not(target_os = "linux"), allow(dead_code))]
    use std::fs::File;

    /// Whether `file` has an access ACL that gives no permission to anyone but its owner
    /// and this process's effective user. False without an ACL, or with one that cannot be
    /// read or parsed: then the mode bits alone decide.
    #[cfg(target_os = "linux")]
    pub(super) fn only_owner_and_me(file: &File) -> bool {
        use std::os::fd::AsRawFd;

        let mut buf = [0u8; 4 + 8 * 32];
        // SAFETY: the name is NUL-terminated, the buffer is ours and its length is passed;
        // the descriptor is open for the duration of the call.
        let len = unsafe {
            libc::fgetxattr(
                file.as_raw_fd(),
                c"system.posix_acl_access".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let Ok(len) = usize::try_from(len) else {
            return false;
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        admits_only(&buf[..len], me)
    }

    /// Elsewhere the mode bits alone decide.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn only_owner_and_me(_file: &File) -> bool {
        false
    }

    const VERSION: u32 = 2;
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const GROUP: u16 = 0x08;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;

    /// Whether the ACL in `xattr` (a version 2 header, then 8-byte entries of tag, permission
    /// and id, little-endian) grants nothing to the owning group, to named groups, to others,
    /// or to named users other than `me`. Entries the mask limits count only through it.
    /// False for anything malformed.
    pub(super) fn admits_only(xattr: &[u8], me: u32) -> bool {
        let Some((header, entries)) = xattr.split_first_chunk::<4>() else {
            return false;
        };
        if u32::from_le_bytes(*header) != VERSION || entries.is_empty() || entries.len() % 8 != 0 {
            return false;
        }
        let entries: Vec<(u16, u16, u32)> = entries
            .chunks_exact(8)
            .map(|e| {
                (
                    u16::from_le_bytes([e[0], e[1]]),
                    u16::from_le_bytes([e[2], e[3]]),
                    u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                )
            })
            .collect();
        // Without a mask entry (a minimal ACL) nothing is limited.
        let mask = entries
            .iter()
            .find(|(tag, ..)| *tag == MASK)
            .map_or(0o7, |(_, perm, _)| *perm);
        entries.iter().all(|&(tag, perm, id)| match tag {
            USER_OBJ | MASK => true,
            USER => id == me || perm & mask == 0,
            GROUP_OBJ | GROUP => perm & mask == 0,
            OTHER => perm == 0,
            _ => false,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
            let mut out = VERSION.to_le_bytes().to_vec();
            for (tag, perm, id) in entries {
                out.extend(tag.to_le_bytes());
                out.extend(perm.to_le_bytes());
                out.extend(id.to_le_bytes());
            }
            out
        }

        const NONE: u32 = u32::MAX;

        #[test]
        fn a_systemd_credential_acl_for_me_admits_only_me() {
            // What systemd sets on a credential on a tmpfs: root's 0400 file plus the unit's user.
            let credential = [
                (USER_OBJ, 4, NONE),
                (USER, 4, 981),
                (GROUP_OBJ, 0, NONE),
                (MASK, 4, NONE),
                (OTHER, 0, NONE),
            ];
            // Read by a real node: e2e
            // `service::the_team_secret_comes_from_a_systemd_credential_or_an_absolute_path`.
            assert!(admits_only(&acl(&credential), 981));
            assert!(
                !admits_only(&acl(&credential), 982),
                "another user is named"
            );
        }

        #[test]
        fn anyone_else_the_acl_lets_in_refuses_it() {
            let base = [(USER_OBJ, 6, NONE), (MASK, 4, NONE), (OTHER, 0, NONE)];
            let with = |extra: (u16, u16, u32)| {
                let mut entries = base.to_vec();
                entries.push(extra);
                acl(&entries)
            };
            assert!(!admits_only(&with((GROUP_OBJ, 4, NONE)), 7), "owning group");
            assert!(!admits_only(&with((GROUP, 4, 100)), 7), "named group");
            assert!(!admits_only(&with((USER, 4, 8)), 7), "another user");
            assert!(admits_only(&with((GROUP_OBJ, 0, NONE)), 7));
            // The mask limits named entries: a named group with read under a mask of none.
            let masked = acl(&[
                (USER_OBJ, 6, NONE),
                (GROUP, 4, 100),
                (GROUP_OBJ, 0, NONE),
                (MASK, 0, NONE),
                (OTHER, 0, NONE),
            ]);
            assert!(admits_only(&masked, 7));
            let others = acl(&[(USER_OBJ, 6, NONE), (GROUP_OBJ, 0, NONE), (OTHER, 4, NONE)]);
            assert!(!admits_only(&others, 7), "others, never masked");
        }

        #[test]
        fn malformed_acls_are_not_trusted() {
            let good = acl(&[(USER_OBJ, 4, NONE), (GROUP_OBJ, 0, NONE), (OTHER, 0, NONE)]);
            assert!(admits_only(&good, 0));
            assert!(!admits_only(&good[..good.len() - 1], 0), "cut short");
            assert!(!admits_only(&good[..4], 0), "no entries");
            assert!(!admits_only(&[], 0), "empty");
            let mut v1 = good.clone();
            v1[0] = 1;
            assert!(!admits_only(&v1, 0), "another version");
            let unknown = acl(&[(USER_OBJ, 4, NONE), (0x40, 0, NONE)]);
            assert!(!admits_only(&unknown, 0), "an unknown tag");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::{fs::symlink, net::UnixListener};

    use super::*;

    fn private_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, content).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn private_file_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o600, 0o400, 0o700] {
            let path = private_file(dir.path(), "s", b"secret\n", mode);
            assert_eq!(&read_secret_file(&path, 7).expect("read")[..], b"secret\n");
        }
    }

    #[test]
    fn readable_file_is_refused_with_a_chmod_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o644, 0o640, 0o604, 0o601, 0o610] {
            let path = private_file(dir.path(), "s", b"secret", mode);
            let err = read_secret_file(&path, 64).expect_err("too open");
            assert!(
                matches!(err, SecretFileError::TooOpen { mode: m, .. } if m == mode),
                "{mode:o}: {err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "{} is readable by other users (mode {mode:o}); fix it with: chmod 600 {}",
                    path.display(),
                    path.display()
                )
            );
        }
    }

    #[test]
    fn directory_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Even a private directory: the type is checked before the mode.
        let sub = dir.path().join("team.secret");
        fs::create_dir(&sub).expect("mkdir");
        for mode in [0o700, 0o755] {
            fs::set_permissions(&sub, fs::Permissions::from_mode(mode)).expect("chmod");
            let err = read_secret_file(&sub, 64).expect_err("a directory");
            assert!(
                matches!(
                    err,
                    SecretFileError::NotAFile {
                        kind: "a directory",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "{} is a directory, not a regular file; move it out of the way (n2p never \
                     removes what it did not create)",
                    sub.display()
                )
            );
        }
    }

    #[test]
    fn pipe_and_socket_are_refused_without_hanging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo reads a NUL-terminated path we own for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = read_secret_file(&fifo, 64).expect_err("a pipe");
        assert!(
            matches!(
                err,
                SecretFileError::NotAFile {
                    kind: "a named pipe",
                    ..
                }
            ),
            "{err:?}"
        );

        let socket = dir.path().join("sock");
        let _listener = UnixListener::bind(&socket).expect("bind");
        // Opening a socket fails in the kernel (ENXIO); either way it is refused.
        assert!(read_secret_file(&socket, 64).is_err());
    }

    #[test]
    fn symlinks_are_followed_and_the_target_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = private_file(dir.path(), "target", b"secret", 0o600);
        let link = dir.path().join("link");
        symlink(&target, &link).expect("symlink");
        assert_eq!(&read_secret_file(&link, 64).expect("read")[..], b"secret");

        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            read_secret_file(&link, 64),
            Err(SecretFileError::TooOpen { mode: 0o644, .. })
        ));

        let dangling = dir.path().join("dangling");
        symlink(dir.path().join("nowhere"), &dangling).expect("symlink");
        assert!(matches!(
            read_secret_file(&dangling, 64),
            Err(SecretFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn size_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = private_file(dir.path(), "s", &[b'x'; 65], 0o600);
        let err = read_secret_file(&path, 64).expect_err("too large");
        assert!(
            matches!(err, SecretFileError::TooLarge { limit: 64, .. }),
            "{err:?}"
        );
        assert_eq!(read_secret_file(&path, 65).expect("fits").len(), 65);
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_secret_file(&dir.path().join("nope"), 64).expect_err("missing");
        assert!(
            matches!(&err, SecretFileError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
    }

    #[test]
    fn create_is_private_and_never_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        create_secret_file(&path, b"one").expect("create");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = create_secret_file(&path, b"two").expect_err("exists");
        assert!(
            matches!(&err, SecretFileError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists),
            "{err:?}"
        );
        assert_eq!(fs::read(&path).expect("read"), b"one");

        // A link in the way is not followed: its target stays untouched.
        let target = dir.path().join("target");
        let link = dir.path().join("link");
        symlink(&target, &link).expect("symlink");
        assert!(create_secret_file(&link, b"x").is_err());
        assert!(!target.exists());
        // No temporary files are left behind.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["link", "s"]);
    }
}
