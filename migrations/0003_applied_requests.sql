-- Exactly-once changes (issue 10): the request ids of applied changes, so a
-- change resent after a failover is answered with its original outcome instead
-- of being made again. Filled by store::apply from the log entries' request id,
-- in the same transaction as the change; bounded (tracker/src/dedup.rs): the
-- last 16 ids of each client instance, none older than one hour of log time.
CREATE TABLE applied_requests (
    request_id TEXT PRIMARY KEY NOT NULL,   -- <client>:<seq> as the client sent it
    client     TEXT NOT NULL,               -- the client instance part
    seq        INTEGER NOT NULL,            -- the sequence number part (0 if none)
    command    TEXT NOT NULL,               -- the wire command that was applied
    session    TEXT,                        -- login: hash of the token it created
    offset     INTEGER NOT NULL,            -- log offset of the line that applied it
    applied_ms INTEGER NOT NULL             -- the line's time
);

CREATE INDEX applied_requests_by_client ON applied_requests (client, seq);
CREATE INDEX applied_requests_by_time ON applied_requests (applied_ms);
