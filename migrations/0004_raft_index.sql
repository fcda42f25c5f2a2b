-- Raft replication (issue 13, --replication raft): the Raft log index of the
-- entry that became the last applied line (applied_log.lines), committed with
-- the lines it covers. 0 in shared-log mode and before any Raft entry.
ALTER TABLE applied_log ADD COLUMN raft_index INTEGER NOT NULL DEFAULT 0;
-- applied_log.lines when raft_index was recorded: lines after it (appended to
-- sync_log.txt but not yet recorded when the tracker stopped) are matched to
-- their Raft entries at start.
ALTER TABLE applied_log ADD COLUMN raft_lines INTEGER NOT NULL DEFAULT 0;
