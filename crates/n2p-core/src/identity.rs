//! The node's persistent secrets: its ed25519 identity (`secret.key`) and the access secret
//! (`access.secret`) that server addresses carry. Both are 32 random bytes stored as hex,
//! created on first use with mode 0600 and refused when group or others can read them.

use std::{
    fs, io,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use iroh::SecretKey;

use crate::{access::AccessSecret, home::N2pHome};

/// Errors while loading or creating a secret file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// Group or others may read the file.
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
    /// The file does not hold 64 hex digits.
    #[error("{} is not a valid key file (expected 64 hex digits); move it away to create a new one", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// Reading, writing or preparing the directory failed.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The home directory could not be prepared.
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
}

/// Loads the node's iroh secret key, creating it on first use.
pub fn load_or_create_secret_key(home: &N2pHome) -> Result<SecretKey, SecretFileError> {
    home.ensure()?;
    let bytes = load_or_create_secret_bytes(&home.secret_key_path())?;
    Ok(SecretKey::from_bytes(&bytes))
}

/// Loads the access secret, creating it on first use.
pub fn load_or_create_access_secret(home: &N2pHome) -> Result<AccessSecret, SecretFileError> {
    home.ensure()?;
    let bytes = load_or_create_secret_bytes(&home.access_secret_path())?;
    Ok(AccessSecret::from_bytes(bytes))
}

/// Replaces the access secret with a fresh one; addresses made with the old one stop working.
pub fn rotate_access_secret(home: &N2pHome) -> Result<AccessSecret, SecretFileError> {
    home.ensure()?;
    let path = home.access_secret_path();
    let bytes: [u8; 32] = rand::random();
    let tmp = path.with_extension("secret.new");
    let _ = fs::remove_file(&tmp);
    write_new_secret(&tmp, &bytes)?;
    fs::rename(&tmp, &path).map_err(|source| SecretFileError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(AccessSecret::from_bytes(bytes))
}

/// Reads 32 bytes of hex from `path`, or creates the file with fresh random bytes.
fn load_or_create_secret_bytes(path: &Path) -> Result<[u8; 32], SecretFileError> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SecretFileError::TooOpen {
                    path: path.to_owned(),
                    mode,
                });
            }
            let text = fs::read_to_string(path).map_err(|source| SecretFileError::Io {
                path: path.to_owned(),
                source,
            })?;
            parse_hex32(text.trim()).ok_or_else(|| SecretFileError::Malformed {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            match write_new_secret(path, &bytes) {
                Ok(()) => Ok(bytes),
                // Another process created it first: use theirs.
                Err(SecretFileError::Io { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    load_or_create_secret_bytes(path)
                }
                Err(e) => Err(e),
            }
        }
        Err(source) => Err(SecretFileError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates `path` with mode 0600 holding the hex of `bytes`, atomically: the content is
/// written to a temporary file first and then linked into place, so a concurrent reader
/// never sees a half-written key. Fails with `AlreadyExists` if `path` exists.
fn write_new_secret(path: &Path, bytes: &[u8; 32]) -> Result<(), SecretFileError> {
    let io_err = |source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    };
    let suffix: u64 = rand::random();
    let tmp = path.with_extension(format!("{suffix:016x}.tmp"));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut text = to_hex(bytes);
        text.push('\n');
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    fs::remove_file(&tmp).ok();
    written.map_err(io_err)
}

/// Lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Parses exactly 64 hex digits (either case).
pub(crate) fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, N2pHome) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = N2pHome::new(tmp.path().join("n2p"));
        (tmp, home)
    }

    #[test]
    fn key_is_created_private_and_stable() {
        let (_tmp, home) = home();
        let a = load_or_create_secret_key(&home).expect("create");
        let b = load_or_create_secret_key(&home).expect("load");
        assert_eq!(a.public(), b.public());
        let mode = fs::metadata(home.secret_key_path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn readable_key_is_refused_with_a_fix() {
        let (_tmp, home) = home();
        load_or_create_secret_key(&home).expect("create");
        let path = home.secret_key_path();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_or_create_secret_key(&home).expect_err("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(matches!(err, SecretFileError::TooOpen { mode: 0o644, .. }));
    }

    #[test]
    fn malformed_key_is_refused() {
        let (_tmp, home) = home();
        home.ensure().expect("home");
        let path = home.secret_key_path();
        fs::write(&path, "not hex").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            load_or_create_secret_key(&home),
            Err(SecretFileError::Malformed { .. })
        ));
    }

    #[test]
    fn rotation_changes_the_access_secret() {
        let (_tmp, home) = home();
        let a = load_or_create_access_secret(&home).expect("create");
        let b = rotate_access_secret(&home).expect("rotate");
        let c = load_or_create_access_secret(&home).expect("load");
        assert_ne!(a, b);
        assert_eq!(b, c);
    }
}
