-- Aggregator schema v2: rounds registered with the key-manager committee, uploads admitted
-- atomically up to max_clients, the contributor set and which nodes recorded it. Version 1's
-- rounds cannot be completed by version 2 and are dropped. Never edit once landed.
DROP TABLE submissions;
DROP TABLE round_clients;
DROP TABLE rounds;

CREATE TABLE rounds (
    round_id          TEXT PRIMARY KEY NOT NULL,
    request_json      TEXT NOT NULL,
    spec_json         TEXT NOT NULL,
    echoes_json       TEXT NOT NULL,
    state             TEXT NOT NULL,
    admitted          BIGINT NOT NULL DEFAULT 0,
    deadline          BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    closed_at         BIGINT,
    set_json          TEXT,
    aggregate_sha256  TEXT,
    recorded_by       TEXT NOT NULL DEFAULT '[]',
    published_at      BIGINT,
    uploads_deleted   BIGINT NOT NULL DEFAULT 0,
    failure           TEXT
);

CREATE TABLE round_members (
    round_id   TEXT NOT NULL REFERENCES rounds (round_id),
    client_id  TEXT NOT NULL,
    PRIMARY KEY (round_id, client_id)
);

CREATE TABLE uploads (
    round_id     TEXT NOT NULL REFERENCES rounds (round_id),
    client_id    TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    bytes        BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    PRIMARY KEY (round_id, client_id)
);
