//! The tracker's ticket signing key and the tickets `file_info` issues
//! (issue 12): a member asking for a file's info with its Ed25519 public key
//! gets a ticket, signed with this key, for (user, group, file hash, that key,
//! now + the ticket lifetime). Seeders check it offline with the key's public
//! half, which `login` replies carry and clients pin.
//!
//! The key lives in `tracker_key` in the data dir (64 hex characters: the
//! 32-byte Ed25519 seed), created once with mode 0600 when absent. Every
//! tracker of a shared data dir reads the same file, so each issues tickets
//! every seeder accepts; two trackers starting at once race on `create_new`,
//! and the loser reads the winner's key.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use wire::ticket::{self, KeyPair, TicketBody};

/// File name of the signing key in the data dir.
pub const KEY_FILE: &str = "tracker_key";
/// Default ticket lifetime in seconds.
pub const DEFAULT_TICKET_SECS: u64 = 300;

/// The signing key and the lifetime of the tickets it issues.
pub struct TicketIssuer {
    key: KeyPair,
    ttl_secs: u64,
}

impl std::fmt::Debug for TicketIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketIssuer({})", self.public_hex())
    }
}

impl TicketIssuer {
    /// Reads `<data_dir>/tracker_key`, creating it (0600) when absent.
    pub fn load_or_create(data_dir: &Path, ttl_secs: u64) -> io::Result<TicketIssuer> {
        let path = data_dir.join(KEY_FILE);
        let new = ticket::new_key_pair()?;
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        let key = match created {
            Ok(mut f) => {
                f.write_all(hex::encode(new.to_bytes()).as_bytes())?;
                f.sync_all()?;
                new
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_key(&path)?,
            Err(e) => return Err(e),
        };
        Ok(TicketIssuer { key, ttl_secs })
    }

    /// A key held in memory (tests).
    pub fn from_key(key: KeyPair, ttl_secs: u64) -> TicketIssuer {
        TicketIssuer { key, ttl_secs }
    }

    /// The public half as 64 hex characters.
    pub fn public_hex(&self) -> String {
        ticket::public_key_hex(&self.key.verifying_key())
    }

    /// A ticket (hex) for `user` of `group` to fetch `file_sha1` (hex) with the
    /// key `holder` (hex), valid until `now_secs` + the lifetime. The error is
    /// the `ERR` reason.
    pub fn issue(
        &self,
        user: &str,
        group: &str,
        file_sha1: &str,
        holder: &str,
        now_secs: u64,
    ) -> Result<String, String> {
        let holder = ticket::public_key_from_hex(holder)
            .map_err(|_| "downloader_key must be an Ed25519 public key (64 hex characters)")?;
        let mut sha = [0u8; 20];
        hex::decode_to_slice(file_sha1, &mut sha).map_err(|_| "internal error: bad file hash")?;
        let body = TicketBody {
            user: user.to_string(),
            group: group.to_string(),
            file_sha1: sha,
            holder: holder.to_bytes(),
            expires: now_secs.saturating_add(self.ttl_secs),
        };
        Ok(body.sign(&self.key).to_hex())
    }
}

fn read_key(path: &Path) -> io::Result<KeyPair> {
    let text = std::fs::read_to_string(path)?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a tracker key (64 hex characters)", path.display()),
        )
    })?;
    Ok(KeyPair::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use wire::ticket::Ticket;

    #[test]
    fn key_is_created_once_0600_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let a = TicketIssuer::load_or_create(dir.path(), 60).unwrap();
        let b = TicketIssuer::load_or_create(dir.path(), 60).unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let holder = ticket::new_key_pair().unwrap();
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let hex_holder = ticket::public_key_hex(&holder.verifying_key());
        let t = a.issue("u", "g", sha, &hex_holder, 1000).unwrap();
        let t = Ticket::from_hex(&t).unwrap();
        let pk = ticket::public_key_from_hex(&b.public_hex()).unwrap();
        t.verify(&pk, 1060).unwrap();
        assert!(t.verify(&pk, 1061).is_err());
        assert!(a.issue("u", "g", sha, "zz", 0).is_err());
    }

    #[test]
    fn a_corrupt_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "nope").unwrap();
        assert!(TicketIssuer::load_or_create(dir.path(), 60).is_err());
    }
}
