-- The sync log generation (16 hex digits from its version line) whose lines
-- applied_log counts; '' before the cache applied any. A cache of another
-- generation is rebuilt from the log (issue 11: upgrade and salvage write new
-- generations).
ALTER TABLE applied_log ADD COLUMN generation TEXT NOT NULL DEFAULT '';
