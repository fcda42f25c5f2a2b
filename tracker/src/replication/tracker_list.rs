//! `TrackerList`: a raft tracker reads tracker_info.txt again while it runs, so an
//! operator changes the membership by editing the file on every host, with no
//! restart. The file is read every [`CHECK_EVERY`] (it is small: at most
//! [`MAX_BYTES`] are read) and compared with the text last taken; a changed text
//! that parses is the new list, one that does not is logged once and ignored (the
//! list in force stays) until the file changes again. The driver acts on a new
//! list (`RaftDriver::relist`): the leader steps toward it, new trackers are dialled.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often the file is read.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// At most this much of the file is read (a longer one is refused).
pub const MAX_BYTES: u64 = 64 << 10;

/// tracker_info.txt as this tracker last took it.
pub struct TrackerList {
    path: PathBuf,
    /// The text last seen (taken or refused).
    seen: String,
    next_check: Instant,
}

impl TrackerList {
    /// Watches `path`, whose text `taken` the tracker started with.
    pub fn new(path: PathBuf, taken: String, now: Instant) -> Self {
        TrackerList {
            path,
            seen: taken,
            next_check: now + CHECK_EVERY,
        }
    }

    /// The trackers' addresses, numbered by their place, when the file holds a new
    /// list that parses; `None` otherwise (not due, unchanged, unreadable, refused).
    pub fn poll(&mut self, now: Instant) -> Option<Vec<String>> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + CHECK_EVERY;
        let text = self.read()?;
        if text == self.seen {
            return None;
        }
        let shown = self.path.display().to_string();
        let parsed = wire::tracker_info::parse(&text, &shown);
        self.seen = text;
        match parsed {
            Ok(list) => Some(list.iter().map(ToString::to_string).collect()),
            Err(e) => {
                log::warn!("{e}: the list in force is kept");
                None
            }
        }
    }

    fn read(&self) -> Option<String> {
        let read = std::fs::File::open(&self.path).and_then(|f| {
            let mut text = String::new();
            f.take(MAX_BYTES + 1).read_to_string(&mut text)?;
            Ok(text)
        });
        match read {
            Ok(text) if text.len() as u64 <= MAX_BYTES => Some(text),
            Ok(_) => {
                log::debug!("{}: over {MAX_BYTES} bytes, not read", self.path.display());
                None
            }
            Err(e) => {
                log::debug!("{}: {e}", self.path.display());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_list_is_taken_once_and_a_malformed_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracker_info.txt");
        let three = "127.0.0.1:7001\n127.0.0.1:7002\n127.0.0.1:7003\n";
        std::fs::write(&path, three).unwrap();
        let t0 = Instant::now();
        let mut list = TrackerList::new(path.clone(), three.to_string(), t0);
        let at = |k: u32| t0 + CHECK_EVERY * k;
        assert_eq!(list.poll(at(1)), None, "unchanged");
        std::fs::write(&path, "127.0.0.1:7001\n127.0.0.1:7002\n").unwrap();
        assert_eq!(list.poll(at(1)), None, "not due yet");
        assert_eq!(
            list.poll(at(2)),
            Some(vec![
                "127.0.0.1:7001".to_string(),
                "127.0.0.1:7002".to_string()
            ])
        );
        assert_eq!(list.poll(at(3)), None, "taken once");
        std::fs::write(&path, "127.0.0.1:7001\nnot an address\n").unwrap();
        assert_eq!(list.poll(at(4)), None, "malformed: refused");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(list.poll(at(5)), None, "missing: nothing");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(list.poll(at(6)), None, "empty: refused");
        std::fs::write(&path, vec![b'#'; MAX_BYTES as usize + 1]).unwrap();
        assert_eq!(list.poll(at(7)), None, "too long: not read");
        std::fs::write(&path, three).unwrap();
        assert_eq!(list.poll(at(8)).map(|l| l.len()), Some(3), "fixed: taken");
    }
}
