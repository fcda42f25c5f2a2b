//! Downloads as the controller sees them: `download_file` (destination, then
//! `file_info`, then the start), resuming the downloads an earlier run left
//! unfinished (after a login), and the peer refresh of running downloads.
//!
//! # Peer refresh
//!
//! This is the one place that decides when a download asks the tracker for
//! fresh seeders (`file_info`, internal): every download Transfers reports as
//! still missing pieces asks [`FIRST_REFRESH`] after the controller first sees
//! it, then every [`REFRESH_EVERY`], with at most one such request in flight per
//! download. A download with no usable peer so finds new seeders; one with peers
//! learns of other downloaders that serve what they have (partial seeders).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wire::file_meta::FileMeta;

use super::{output, paths, Action, Controller, DownloadKey, Internal, Running, StartOrder};
use crate::storage::ResumeState;
use crate::tracker_link::{Answer, Outcome};
use crate::transfers::RunningDownload;

/// A download's first peer refresh comes this soon after it started...
pub const FIRST_REFRESH: Duration = Duration::from_millis(150);
/// ...and later ones this often.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

impl Controller {
    /// `download_file <group> <name> <dest>`: checks the destination, then asks
    /// the tracker for the file's metadata and seeders.
    pub(super) fn start_download(&mut self, group: String, name: String, dest: String) {
        let dest = match paths::resolve_dest(self.files.as_ref(), Path::new(&dest), &name) {
            Ok(d) => d,
            Err(e) => return self.fail(e),
        };
        let id = self.send(output::file_info_request(
            &group,
            &name,
            &self.config.ticket_key,
        ));
        let key = DownloadKey { group, name };
        self.running = Some(Running::FileInfo { id, key, dest });
    }

    /// `file_info`'s answer for `download_file`: start the download.
    pub(super) fn on_file_info(&mut self, key: DownloadKey, dest: PathBuf, answer: &Answer) {
        let Some((meta, peers, ticket)) = parse_file_info(answer) else {
            return self.fail("the tracker sent inconsistent file metadata");
        };
        if self.files.exists(&dest) {
            return self.fail(format!("{} already exists", dest.display()));
        }
        self.running = Some(Running::Starting);
        let order = StartOrder {
            key,
            dest,
            resume: false,
        };
        self.out.push(Action::StartDownload {
            order,
            meta,
            peers,
            ticket,
        });
    }

    pub(super) fn on_download_started(&mut self, order: StartOrder, result: Result<(), String>) {
        let StartOrder { key, dest, resume } = order;
        let DownloadKey { group, name } = key;
        match (resume, result) {
            (true, Ok(())) => self.note(format!(
                "note: resuming the download of {name} from {group} to {}",
                dest.display()
            )),
            (true, Err(e)) => self.note(cannot_resume(&group, &name, e)),
            (false, result) => {
                if !matches!(self.running, Some(Running::Starting)) {
                    log::debug!("download of {name} started with no command waiting");
                    return;
                }
                match result {
                    Ok(()) => self.done(vec![output::downloading(&group, &name, &dest)]),
                    Err(e) => self.fail(e),
                }
            }
        }
    }

    /// Restarts the downloads an earlier run left unfinished (after a login):
    /// an internal `file_info` for each, then the start to the saved destination
    /// when the answer arrives. Notes go to stderr (stdout keeps one line per command).
    pub(super) fn on_resumes_found(&mut self, found: Vec<ResumeState>) {
        for state in found {
            let pending = self.internal.values().any(
                |i| matches!(i, Internal::Resume { state: s } if s.file_sha1 == state.file_sha1),
            );
            if pending {
                continue;
            }
            let key = &self.config.ticket_key;
            let request = output::file_info_request(&state.group, &state.name, key);
            self.send_internal(request, Internal::Resume { state });
        }
    }

    pub(super) fn on_resume_info(&mut self, state: ResumeState, outcome: Outcome) {
        let ResumeState {
            group,
            name,
            dest,
            file_sha1,
            ..
        } = state;
        let answer = match outcome {
            Ok(answer) => answer,
            Err(e) => return self.note(cannot_resume(&group, &name, e)),
        };
        let Some((meta, peers, ticket)) = parse_file_info(&answer) else {
            return self.note(cannot_resume(&group, &name, "inconsistent file metadata"));
        };
        if meta.file_sha1 != file_sha1 {
            return self.note(format!(
                "note: {name} in {group} is no longer the file being downloaded; not resuming it"
            ));
        }
        let order = StartOrder {
            key: DownloadKey { group, name },
            dest,
            resume: true,
        };
        self.out.push(Action::StartDownload {
            order,
            meta,
            peers,
            ticket,
        });
    }

    /// The peer refresh timers (see the module doc).
    pub(super) fn refresh_peers(&mut self, downloads: &[RunningDownload], now: Instant) {
        let wanting = downloads.iter().filter(|d| d.needs_peers);
        let keys: Vec<DownloadKey> = wanting
            .map(|d| DownloadKey {
                group: d.group.clone(),
                name: d.name.clone(),
            })
            .collect();
        self.next_refresh.retain(|k, _| keys.contains(k));
        for key in keys {
            let due = *self
                .next_refresh
                .entry(key.clone())
                .or_insert(now + FIRST_REFRESH);
            let pending = self
                .internal
                .values()
                .any(|i| matches!(i, Internal::PeerRefresh(k) if *k == key));
            if now < due || pending || self.user.is_none() {
                continue;
            }
            self.next_refresh.insert(key.clone(), now + REFRESH_EVERY);
            let tk = &self.config.ticket_key;
            let request = output::file_info_request(&key.group, &key.name, tk);
            self.send_internal(request, Internal::PeerRefresh(key));
        }
    }

    /// A peer refresh's answer: hand the seeders and the renewed ticket to the
    /// download (the refresh is also what renews a download's ticket before it
    /// expires: every answer carries a fresh one).
    pub(super) fn on_refreshed(&mut self, key: DownloadKey, answer: &Answer) {
        if let Some((_, peers, ticket)) = parse_file_info(answer) {
            self.out.push(Action::UpdatePeers { key, peers, ticket });
        }
    }
}

/// `note: could not resume the download of <name> from <group>: <why>`.
fn cannot_resume(group: &str, name: &str, why: impl std::fmt::Display) -> String {
    format!("note: could not resume the download of {name} from {group}: {why}")
}

/// `file_info`'s answer as metadata, seeder addresses and the download ticket
/// (hex, the sixth head field, when the tracker issued one).
pub fn parse_file_info(answer: &Answer) -> Option<(FileMeta, Vec<SocketAddr>, Option<String>)> {
    let h = &answer.head;
    if h.len() < 5 {
        return None;
    }
    let meta = FileMeta::from_wire(&h[0], &h[1], &h[2], &h[3], &h[4])?;
    let peers = answer
        .rows
        .iter()
        .filter_map(|r| r.first()?.parse::<SocketAddr>().ok())
        .collect();
    Some((meta, peers, h.get(5).cloned()))
}
