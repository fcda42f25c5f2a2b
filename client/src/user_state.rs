//! Per-user state: `.uploads_registry`, its piece-hash sidecars (`pieces/`) and
//! the download resume states (`downloads/`) belong to the user who logged in,
//! so another user logging in with the same `--state-dir` never re-shares or
//! resumes the first user's files.
//!
//! Layout: `<state-dir>/users/<user>/`, the user name made a safe directory
//! name by [`dir_name`] (one name, one directory, and back). The `users/` level
//! keeps user directories apart from what the state dir holds for the client
//! itself (`.shell_history`) and from the layout before this one.
//!
//! Migration: the layout before this one kept those three items in the state
//! dir itself. The first user to log in (whose directory does not exist yet)
//! takes them over — they are moved, not copied — and the client says so on
//! stderr once.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::registry::REGISTRY_FILE;

/// What the state dir held per client before it held it per user.
const LEGACY_ITEMS: [&str; 3] = [REGISTRY_FILE, "pieces", "downloads"];
/// Longest directory name used as is; longer names are shortened by a hash.
const MAX_DIR_NAME: usize = 200;

/// `<root>/users/<dir_name(user)>`.
pub fn user_dir(root: &Path, user: &str) -> PathBuf {
    root.join("users").join(dir_name(user))
}

/// A directory name for `user`: ASCII letters, digits, `-`, `_` and `.` stay,
/// every other byte becomes `%XX` (so `.`, `..`, `/` and `%` itself cannot
/// appear as such, and two names never share a directory). A name whose form
/// is longer than [`MAX_DIR_NAME`] becomes `%%` and its SHA-1.
pub fn dir_name(user: &str) -> String {
    let mut out = String::new();
    for &b in user.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    if out.len() > MAX_DIR_NAME {
        let sha = crate::hasher::sha1(user.as_bytes());
        out = format!("%%{}", wire::file_meta::to_hex(&sha));
    }
    out
}

/// Makes `<root>/users/<user>/` the user's state dir, moving the state of the
/// old layout into it when this is the first user to log in. Returns the
/// directory and, after a migration, the note for stderr.
pub fn open(root: &Path, user: &str) -> io::Result<(PathBuf, Option<String>)> {
    let dir = user_dir(root, user);
    let legacy: Vec<&str> = LEGACY_ITEMS
        .into_iter()
        .filter(|item| root.join(item).symlink_metadata().is_ok())
        .collect();
    if dir.exists() || legacy.is_empty() {
        fs::create_dir_all(&dir)?;
        return Ok((dir, None));
    }
    fs::create_dir_all(&dir)?;
    for item in &legacy {
        fs::rename(root.join(item), dir.join(item))?;
    }
    let note = format!(
        "note: the shared files and unfinished downloads recorded in {} now belong to {user} \
         (the first user to log in there); moved to {}",
        root.display(),
        dir.display()
    );
    Ok((dir, Some(note)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_are_safe_and_distinct() {
        assert_eq!(dir_name("alice"), "alice");
        assert_eq!(dir_name("a.b-c_d"), "a.b-c_d");
        assert_eq!(dir_name(".."), "%2E%2E");
        assert_eq!(dir_name("."), "%2E");
        assert_eq!(dir_name("a/b"), "a%2Fb");
        assert_eq!(dir_name("a%2Fb"), "a%252Fb");
        assert_eq!(dir_name("zoë x"), "zo%C3%AB%20x");
        let long = "ü".repeat(100);
        assert!(dir_name(&long).starts_with("%%"));
        assert_eq!(dir_name(&long).len(), 42);
        assert_ne!(dir_name(&long), dir_name(&"ü".repeat(101)));
    }

    #[test]
    fn the_first_user_takes_over_the_old_layout() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::write(r.join(REGISTRY_FILE), "swarmshare-uploads 1\n").unwrap();
        fs::create_dir_all(r.join("downloads")).unwrap();
        fs::write(r.join("downloads/x.resume"), "x").unwrap();
        fs::write(r.join(".shell_history"), "login a b\n").unwrap();
        let (dir, note) = open(r, "alice").unwrap();
        assert_eq!(dir, r.join("users/alice"));
        assert!(note.unwrap().contains("now belong to alice"));
        assert!(dir.join(REGISTRY_FILE).is_file());
        assert!(dir.join("downloads/x.resume").is_file());
        assert!(!r.join(REGISTRY_FILE).exists() && !r.join("downloads").exists());
        assert!(r.join(".shell_history").exists(), "not per user");
        // Bob starts empty; alice again: nothing more to move, no note.
        let (bob, note) = open(r, "bob").unwrap();
        assert!(note.is_none());
        assert_eq!(fs::read_dir(&bob).unwrap().count(), 0);
        assert_eq!(open(r, "alice").unwrap(), (dir, None));
    }
}
