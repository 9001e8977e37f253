//! The node's Nix signing key, `$N2P_HOME/nix-signing.key`: the key a node signs every
//! narinfo it serves with, separate from its iroh identity. The file holds the key in the
//! format of `nix key generate-secret` (`name:base64`), mode 0600, created on first use and
//! read through [`n2p_core::secret_file`], which refuses a file group or others may read.

use std::path::PathBuf;

use n2p_core::{
    home::N2pHome,
    secret_file::{SecretFileError, create_secret_file, read_secret_file},
};
use n2p_nix::{SecretKey, signature::KeyError};

/// The key file's name inside `$N2P_HOME`.
pub const SIGNING_KEY_FILE: &str = "nix-signing.key";

/// Longest key file read (a Nix secret key line is about 100 bytes plus its name).
const KEY_FILE_LIMIT: usize = 1024;

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningKeyError {
    /// The file could not be read or created, or is readable by others.
    #[error(transparent)]
    File(#[from] SecretFileError),
    /// The file does not hold a Nix secret key.
    #[error("{} does not hold a Nix secret key (`name:base64`, as `nix key generate-secret` writes): {source}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: KeyError,
    },
}

/// The key file's path in `home`.
pub fn signing_key_path(home: &N2pHome) -> PathBuf {
    home.root().join(SIGNING_KEY_FILE)
}

/// The key name for a node called `node_name`: `<name>-n2p-1`, with characters Nix key
/// names cannot hold (`:` and white space) replaced by `-`.
pub fn key_name(node_name: &str) -> String {
    let clean: String = node_name
        .chars()
        .map(|c| {
            if c == ':' || c.is_whitespace() {
                '-'
            } else {
                c
            }
        })
        .collect();
    let clean = if clean.is_empty() {
        "node".to_owned()
    } else {
        clean
    };
    format!("{clean}-n2p-1")
}

/// Loads the node's signing key, or creates one named [`key_name`]`(node_name)`. An existing
/// key keeps its name, whatever the node is called now (the team file lists it by name).
pub fn load_or_create_signing_key(
    home: &N2pHome,
    node_name: &str,
) -> Result<SecretKey, SigningKeyError> {
    let path = signing_key_path(home);
    match read_secret_file(&path, KEY_FILE_LIMIT) {
        Ok(bytes) => parse_key_file(&path, &bytes),
        Err(SecretFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            home.ensure().map_err(SecretFileError::from)?;
            let key = SecretKey::from_seed(&key_name(node_name), rand::random());
            let text = format!("{}\n", key.to_nix_string());
            match create_secret_file(&path, text.as_bytes()) {
                Ok(()) => {
                    tracing::info!(target: "n2p", "created the Nix signing key {} in {}", key.name(), path.display());
                    Ok(key)
                }
                // Another process made it first: use theirs.
                Err(SecretFileError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    let bytes = read_secret_file(&path, KEY_FILE_LIMIT)?;
                    parse_key_file(&path, &bytes)
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn parse_key_file(path: &std::path::Path, bytes: &[u8]) -> Result<SecretKey, SigningKeyError> {
    let malformed = |source| SigningKeyError::Malformed {
        path: path.to_owned(),
        source,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| malformed(KeyError::NoName))?;
    SecretKey::parse(text.trim()).map_err(malformed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn key_names_are_safe() {
        assert_eq!(key_name("alice"), "alice-n2p-1");
        assert_eq!(key_name("a b:c"), "a-b-c-n2p-1");
        assert_eq!(key_name(""), "node-n2p-1");
    }

    #[test]
    fn created_once_0600_then_loaded_with_its_name() -> TestResult {
        let dir = tempfile::tempdir()?;
        let home = N2pHome::new(dir.path().join("home"));
        let key = load_or_create_signing_key(&home, "alice")?;
        assert_eq!(key.name(), "alice-n2p-1");
        let path = signing_key_path(&home);
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        // Renamed node, same key.
        let again = load_or_create_signing_key(&home, "bob")?;
        assert_eq!(again.public(), key.public());
        assert_eq!(again.name(), "alice-n2p-1");
        Ok(())
    }

    #[test]
    fn a_readable_key_file_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let home = N2pHome::new(dir.path().join("home"));
        load_or_create_signing_key(&home, "alice")?;
        let path = signing_key_path(&home);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let err = load_or_create_signing_key(&home, "alice").expect_err("0644");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        Ok(())
    }

    #[test]
    fn garbage_is_refused_not_replaced() -> TestResult {
        let dir = tempfile::tempdir()?;
        let home = N2pHome::new(dir.path().join("home"));
        home.ensure()?;
        let path = signing_key_path(&home);
        create_secret_file(&path, b"not a key\n")?;
        let err = load_or_create_signing_key(&home, "alice").expect_err("garbage");
        assert!(matches!(err, SigningKeyError::Malformed { .. }), "{err}");
        assert_eq!(std::fs::read(&path)?, b"not a key\n");
        Ok(())
    }
}
