-- KMS schema v1 (PostgreSQL). Never edit once landed; add a new migration.
CREATE TABLE round_keys (
    round_id        TEXT PRIMARY KEY NOT NULL,
    key_id          TEXT NOT NULL,
    spec_json       TEXT NOT NULL,
    public_key      BYTEA NOT NULL,
    sealed_secret   BYTEA,
    nonce           BYTEA,
    master_key_id   TEXT,
    state           TEXT NOT NULL,
    contributors    BIGINT,
    created_at      BIGINT NOT NULL,
    aggregated_at   BIGINT,
    destroyed_at    BIGINT
);

CREATE TABLE round_clients (
    round_id  TEXT NOT NULL REFERENCES round_keys (round_id),
    client_id TEXT NOT NULL,
    PRIMARY KEY (round_id, client_id)
);

CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY NOT NULL,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    role      TEXT NOT NULL,
    action    TEXT NOT NULL,
    round_id  TEXT,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
