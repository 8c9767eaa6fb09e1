-- Aggregator schema v1 (SQLite). Never edit once landed; add a new migration.
CREATE TABLE rounds (
    round_id         TEXT PRIMARY KEY NOT NULL,
    spec_json        TEXT NOT NULL,
    key_id           TEXT NOT NULL,
    plan_json        TEXT NOT NULL,
    public_key       BLOB NOT NULL,
    state            TEXT NOT NULL,
    deadline         BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    published_at     BIGINT,
    aggregate_sha256 TEXT,
    kms_notified     BIGINT NOT NULL DEFAULT 0,
    failure          TEXT
);

CREATE TABLE round_clients (
    round_id  TEXT NOT NULL REFERENCES rounds (round_id),
    client_id TEXT NOT NULL,
    PRIMARY KEY (round_id, client_id)
);

CREATE TABLE submissions (
    round_id    TEXT NOT NULL REFERENCES rounds (round_id),
    client_id   TEXT NOT NULL,
    weight      BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (round_id, client_id)
);
