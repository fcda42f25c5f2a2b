//! The cluster key: 32 random bytes that every tracker of a Raft cluster holds, which
//! the tracker-to-tracker handshake ([`super::peer_frame`]) proves possession of.
//!
//! File: `<data-dir>/cluster.key`, mode 0600, one line of 64 lowercase hex digits
//! (text, so an operator can copy it between hosts with any tool). The first tracker
//! creates it; adding a tracker means copying this file into the new tracker's data dir
//! before its first start. A key file that others can read is refused, as ssh does.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::peer_frame::hex32;

/// The key file's name in the data dir.
pub const KEY_FILE: &str = "cluster.key";

/// The cluster key (its bytes are never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }
}

/// Why the key cannot be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cluster key {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster key {path} is readable by others (mode {mode:o}): run chmod 600 on it")]
    Permissions { path: String, mode: u32 },
    #[error("cluster key {path} is not one line of 64 hex digits")]
    Format { path: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where the key lives in a data dir.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Loads the data dir's key, creating a new random one if there is none yet.
/// Returns the key and whether it was just created (the caller says so in its log:
/// the other trackers need a copy).
pub fn load_or_create(data_dir: &Path) -> Result<(ClusterKey, bool), KeyError> {
    let path = key_path(data_dir);
    match load(&path) {
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok((create(&path)?, true))
        }
        other => other.map(|k| (k, false)),
    }
}

/// Reads a key file, refusing one that group or others may read.
pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mode = file.metadata().map_err(io_err(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.display().to_string(),
            mode: mode & 0o777,
        });
    }
    let mut text = String::new();
    Read::by_ref(&mut file)
        .take(200)
        .read_to_string(&mut text)
        .map_err(|_| KeyError::Format {
            path: path.display().to_string(),
        })?;
    hex32(text.trim_end_matches('\n'))
        .map(ClusterKey)
        .ok_or_else(|| KeyError::Format {
            path: path.display().to_string(),
        })
}

/// Creates a new random key file (mode 0600, fsynced with its directory); fails if
/// the file exists, so a key is never replaced.
pub fn create(path: &Path) -> Result<ClusterKey, KeyError> {
    let key = super::peer_frame::fresh_nonce();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    let text = format!("{}\n", hex::encode(key));
    file.write_all(text.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::sync_log::sync_dir(dir).map_err(io_err(dir))?;
    }
    Ok(ClusterKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        let (b, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        let mode = fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(create(&key_path(dir.path())).is_err(), "never replaced");
        // A copy on another tracker (same bytes, 0600) is the same key.
        let other = tempfile::tempdir().unwrap();
        let copy = key_path(other.path());
        fs::copy(key_path(dir.path()), &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(&copy).unwrap(), a);
        assert_eq!(format!("{a:?}"), "ClusterKey(..)");
    }

    #[test]
    fn readable_by_others_or_malformed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _) = load_or_create(dir.path()).unwrap();
        let path = key_path(dir.path());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::write(&path, "not hex\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(&path), Err(KeyError::Format { .. })));
    }
}
