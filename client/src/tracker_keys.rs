//! The trackers' ticket keys this client trusts, pinned in its state dir.
//!
//! Every `login` reply carries the deployment's ticket public key (all trackers
//! of a shared data dir sign with one key file). The first key seen is pinned
//! in `<state-dir>/tracker_keys` (one 64-hex-character key per line, mode
//! 0600, written atomically); a later login that presents a key not in the
//! file is refused with [`PinError::Changed`] instead of being trusted: a
//! tracker impersonator could otherwise sign tickets for anyone.
//!
//! Rotating the key: the operator replaces `tracker_key` in the trackers' data
//! dir, and each user of the deployment deletes (or edits) `tracker_keys` in
//! the client's state dir; the next login pins the new key. A deployment with
//! several keys (e.g. during a rotation) lists each on its own line.

use std::io;
use std::path::{Path, PathBuf};

use wire::ticket::{self, PublicKey};

/// File name in the state dir.
pub const FILE: &str = "tracker_keys";
/// Keys kept at most (a file longer than this is refused as damaged).
const MAX_KEYS: usize = 16;

/// Why a tracker's key is not accepted. `Display` is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("the tracker's ticket key {got} differs from the key pinned in {file}; refusing it (if the operator rotated the key, delete that file and log in again)")]
    Changed { got: String, file: String },
    #[error("the tracker sent a malformed ticket key")]
    Malformed,
    #[error("{file} is damaged: {why}")]
    Damaged { file: String, why: String },
    #[error("cannot pin the tracker key in {file}: {source}")]
    Io { file: String, source: io::Error },
}

/// The pinned keys and where they live.
#[derive(Debug)]
pub struct PinnedKeys {
    path: PathBuf,
    keys: Vec<PublicKey>,
}

impl PinnedKeys {
    /// Reads `<state_dir>/tracker_keys` (none pinned when absent).
    pub fn load(state_dir: &Path) -> Result<PinnedKeys, PinError> {
        let path = state_dir.join(FILE);
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(PinError::Io { file, source }),
        };
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let key = ticket::public_key_from_hex(line).map_err(|_| PinError::Damaged {
                file: file.clone(),
                why: format!("not a key: {line:?}"),
            })?;
            keys.push(key);
        }
        if keys.len() > MAX_KEYS {
            let why = format!("more than {MAX_KEYS} keys");
            return Err(PinError::Damaged { file, why });
        }
        Ok(PinnedKeys { path, keys })
    }

    /// Accepts `key_hex` from a login reply: pins it when nothing is pinned
    /// yet, accepts it when pinned, refuses any other key.
    pub fn accept(&mut self, key_hex: &str) -> Result<(), PinError> {
        let key = ticket::public_key_from_hex(key_hex).map_err(|_| PinError::Malformed)?;
        if self.keys.contains(&key) {
            return Ok(());
        }
        let file = self.path.display().to_string();
        if !self.keys.is_empty() {
            let got = ticket::public_key_hex(&key);
            return Err(PinError::Changed { got, file });
        }
        let text = format!("{}\n", ticket::public_key_hex(&key));
        crate::private_file::write_atomic(&self.path, text.as_bytes())
            .map_err(|source| PinError::Io { file, source })?;
        self.keys.push(key);
        Ok(())
    }

    /// The keys tickets may be signed with.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_hex() -> String {
        ticket::public_key_hex(&ticket::new_key_pair().unwrap().verifying_key())
    }

    #[test]
    fn first_key_is_pinned_and_another_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (key_hex(), key_hex());
        let mut p = PinnedKeys::load(dir.path()).unwrap();
        assert!(p.keys().is_empty());
        p.accept(&a).unwrap();
        p.accept(&a).unwrap();
        // A fresh load (a new process) sees the pin and refuses another key.
        let mut p = PinnedKeys::load(dir.path()).unwrap();
        assert_eq!(p.keys().len(), 1);
        let e = p.accept(&b).unwrap_err();
        assert!(matches!(e, PinError::Changed { .. }), "{e}");
        assert!(e.to_string().contains("delete that file"), "{e}");
        assert!(matches!(p.accept("zz"), Err(PinError::Malformed)));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "not a key\n").unwrap();
        assert!(matches!(
            PinnedKeys::load(dir.path()),
            Err(PinError::Damaged { .. })
        ));
    }
}
