//! Sharing: `upload_file` (hash, then the tracker request, then serve), putting
//! `.uploads_registry` back into sharing after a login, and `add_seeder` when
//! Transfers holds (part of) a downloaded file (`partial` until it is complete;
//! an internal `stop_share` when such a download fails).

use std::path::PathBuf;

use wire::file_meta::FileMeta;

use super::{output, paths, Action, Controller, Internal, Running};
use crate::tracker_link::Outcome;
use crate::transfers::{Reannounce, TrackerJob};

impl Controller {
    /// `upload_file <path> <group>`: checks the path, then hashes the file.
    pub(super) fn start_upload(&mut self, path: String, group: String) {
        let abs = match paths::upload_source(self.files.as_ref(), &path) {
            Ok(abs) => abs,
            Err(e) => return self.fail(e),
        };
        self.out.push(Action::StartHash { path: abs.clone() });
        self.running = Some(Running::Hashing { path: abs, group });
    }

    /// The upload's hash finished: announce the file to the tracker.
    pub(super) fn on_hashed(&mut self, result: Result<FileMeta, String>) {
        let Some(Running::Hashing { .. }) = &self.running else {
            log::debug!("a hash finished with no upload waiting");
            return;
        };
        let Some(Running::Hashing { path, group }) = self.running.take() else {
            unreachable!("checked above")
        };
        let mut meta = match result {
            Ok(m) => m,
            Err(e) => return self.fail(e),
        };
        meta.name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let id = self.send(output::upload_request(&group, &meta));
        self.running = Some(Running::Uploading {
            id,
            meta,
            path,
            group,
        });
    }

    /// The tracker accepted the upload: serve the file.
    pub(super) fn on_uploaded(&mut self, group: String, meta: FileMeta, path: PathBuf) {
        let line = output::uploaded(&group, &meta);
        self.out.push(Action::AddShare { group, meta, path });
        self.done(vec![line]);
    }

    pub(super) fn on_transfer_job(&mut self, job: TrackerJob) {
        match job {
            TrackerJob::AddSeeder {
                group,
                name,
                file_sha1,
                partial,
            } => {
                if self.user.is_none() {
                    log::info!("not logged in; not announcing {name} in {group}");
                    return;
                }
                let request = output::add_seeder_request(&group, &name, &file_sha1, partial);
                self.send_internal(request, Internal::AddSeeder);
            }
            TrackerJob::Withdraw { group, name } => {
                if self.user.is_some() {
                    let request = output::stop_share_request(&group, &name);
                    self.send_internal(request, Internal::Withdraw);
                }
            }
        }
    }

    /// Puts the files of `.uploads_registry` back into sharing after a login:
    /// every file whose content is unchanged is announced again (`upload_file`
    /// with its metadata, internal) and served once the tracker accepted it;
    /// changed or vanished files were dropped by Transfers and are reported as
    /// `note:` lines on stderr (stdout keeps one line per command).
    pub(super) fn on_registry_checked(&mut self, found: Reannounce) {
        for line in found.reports {
            self.note(format!("note: {line}"));
        }
        for (group, meta, path) in found.unchanged {
            let request = output::upload_request(&group, &meta);
            self.send_internal(request, Internal::Reannounce { group, meta, path });
        }
    }

    pub(super) fn on_reannounced(
        &mut self,
        group: String,
        meta: FileMeta,
        path: PathBuf,
        outcome: Outcome,
    ) {
        match outcome {
            Ok(_) => self.out.push(Action::AddShare { group, meta, path }),
            Err(e) => self.note(format!(
                "note: could not share {} in {group} again: {e}",
                meta.name
            )),
        }
    }
}
