//! The node's persistent secrets: its ed25519 identity (`secret.key`) and the access secret
//! (`access.secret`) that server addresses carry. Both are 32 random bytes stored as hex,
//! created on first use with mode 0600 and read through [`crate::secret_file`], which refuses
//! them when group or others can read them.

use std::{fs, io, path::Path};

use iroh::SecretKey;
use zeroize::Zeroizing;

pub use crate::secret_file::SecretFileError;
use crate::{
    access::AccessSecret,
    home::N2pHome,
    secret_file::{create_secret_file, read_secret_file},
};

/// The most bytes a key file may hold: 64 hex digits and some white space.
const KEY_FILE_LIMIT: usize = 1024;

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
    create_secret_file(&tmp, key_file_text(&bytes).as_bytes())?;
    fs::rename(&tmp, &path).map_err(|source| SecretFileError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(AccessSecret::from_bytes(bytes))
}

/// Reads 32 bytes of hex from `path`, or creates the file with fresh random bytes.
fn load_or_create_secret_bytes(path: &Path) -> Result<[u8; 32], SecretFileError> {
    match read_secret_file(path, KEY_FILE_LIMIT) {
        Ok(text) => std::str::from_utf8(&text)
            .ok()
            .and_then(|text| parse_hex32(text.trim()))
            .ok_or_else(|| SecretFileError::Malformed {
                path: path.to_owned(),
            }),
        Err(SecretFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            match create_secret_file(path, key_file_text(&bytes).as_bytes()) {
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
        Err(e) => Err(e),
    }
}

/// The content of a key file: the hex of `bytes` and a newline.
fn key_file_text(bytes: &[u8; 32]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(to_hex(bytes));
    text.push('\n');
    text
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
    use std::os::unix::fs::PermissionsExt;

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

    #[test]
    fn garbage_key_says_what_is_wrong_and_what_to_do() {
        let (_tmp, home) = home();
        home.ensure().expect("home");
        let path = home.secret_key_path();
        for garbage in [
            &b"not hex"[..],
            &[0xff, 0xfe, 0x00],
            &[0x80; 64],
            &[b'a'; 62],
            &[b'a'; 66],
        ] {
            fs::write(&path, garbage).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
            let err = load_or_create_secret_key(&home).expect_err("garbage");
            assert_eq!(
                err.to_string(),
                format!(
                    "{} is not a valid key file (expected 64 hex digits); move it away to \
                     create a new one",
                    path.display()
                )
            );
        }
        // Upper case and surrounding white space are fine.
        fs::write(&path, format!("  {}\n\n", "AB".repeat(32))).expect("write");
        assert!(load_or_create_secret_key(&home).is_ok());
    }

    /// A directory where `secret.key` or `access.secret` should be is named, with what to
    /// do, and left alone.
    #[test]
    fn directory_in_place_of_a_key_is_named_with_a_hint() {
        let (_tmp, home) = home();
        home.ensure().expect("home");
        for path in [home.secret_key_path(), home.access_secret_path()] {
            fs::create_dir(&path).expect("mkdir");
            let err = if path == home.secret_key_path() {
                load_or_create_secret_key(&home).map(|_| ())
            } else {
                load_or_create_access_secret(&home).map(|_| ())
            }
            .expect_err("a directory");
            assert_eq!(
                err.to_string(),
                format!(
                    "{} is a directory, not a regular file; move it out of the way (n2p never \
                     removes what it did not create)",
                    path.display()
                )
            );
            assert!(path.is_dir(), "{} was touched", path.display());
        }
    }

    #[test]
    fn concurrent_first_use_agrees_on_one_key() {
        let (_tmp, home) = home();
        let keys: Vec<_> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create_secret_key(&home).expect("key").public()))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
    }
}
