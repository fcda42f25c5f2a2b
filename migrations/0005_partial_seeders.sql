-- Honest seeder lists (issue 10): a downloader that holds only some pieces is a
-- partial seeder; list_files counts complete and partial seeders apart, and
-- file_info hands out both (partial ones serve the pieces they have). The table
-- is rebuilt (not ALTER ... ADD COLUMN) so its definition reads like schema.sql.
ALTER TABLE file_seeders RENAME TO file_seeders_0003;

CREATE TABLE file_seeders (
    group_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    peer_addr    TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    partial      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, name, token_hash)
);

INSERT INTO file_seeders (group_id, name, token_hash, user_id, peer_addr, last_seen_ms)
    SELECT group_id, name, token_hash, user_id, peer_addr, last_seen_ms FROM file_seeders_0003;

DROP TABLE file_seeders_0003;

CREATE INDEX file_seeders_by_session ON file_seeders (token_hash);
