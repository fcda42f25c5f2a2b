-- The tracker cache schema as it is after all migrations (migrations/*.sql).
-- Kept in step with the migrations by a test (tracker: store::tests::schema_sql_matches_migrations).

CREATE TABLE users (
    user_id       TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,            -- argon2 PHC string, never the password
    created_ms    INTEGER NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY NOT NULL,   -- sha256 hex of the session token
    user_id    TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE groups (
    group_id   TEXT PRIMARY KEY NOT NULL,
    owner      TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_id   TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    joined_seq INTEGER NOT NULL,            -- log offset of the line that made them a member
    PRIMARY KEY (group_id, user_id)
);

CREATE TABLE join_requests (
    group_id     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    requested_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
);

CREATE TABLE files (
    group_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    piece_size   INTEGER NOT NULL,
    file_sha1    TEXT NOT NULL,             -- 40 lowercase hex
    piece_hashes TEXT NOT NULL,             -- 40 hex per piece, concatenated
    uploader     TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    PRIMARY KEY (group_id, name)
);

CREATE TABLE file_seeders (
    group_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL,             -- the seeding session
    user_id      TEXT NOT NULL,
    peer_addr    TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    partial      INTEGER NOT NULL DEFAULT 0, -- 1: a download holding some pieces (0005)
    PRIMARY KEY (group_id, name, token_hash)
);

CREATE INDEX file_seeders_by_session ON file_seeders (token_hash);

CREATE TABLE applied_log (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    offset INTEGER NOT NULL,                -- sync_log.txt bytes applied
    lines  INTEGER NOT NULL,                -- log lines applied
    generation TEXT NOT NULL DEFAULT '',    -- sync log generation applied ('' = none yet)
    raft_index INTEGER NOT NULL DEFAULT 0,  -- --replication raft: Raft index of the last applied line
    raft_lines INTEGER NOT NULL DEFAULT 0   -- `lines` when raft_index was recorded
);

-- Exactly-once changes (migrations/0003_applied_requests.sql, tracker/src/dedup.rs).
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
