-- KMS schema v2 (postgres): rounds registered by the aggregator, clients' sealed key shares, the
-- contributor set recorded once per round. Version 1's per-round key pairs are gone (no
-- version-1 round can be completed by version 2). Never edit once landed; add a migration.
DROP TABLE round_clients;
DROP TABLE round_keys;

CREATE TABLE rounds (
    round_id      TEXT PRIMARY KEY NOT NULL,
    spec_json     TEXT NOT NULL,
    spec_hash     TEXT NOT NULL,
    echo_json     TEXT NOT NULL,
    state         TEXT NOT NULL,
    set_json      TEXT,
    created_at    BIGINT NOT NULL,
    recorded_at   BIGINT,
    destroyed_at  BIGINT
);

CREATE TABLE round_members (
    round_id  TEXT NOT NULL REFERENCES rounds (round_id),
    client_id TEXT NOT NULL,
    PRIMARY KEY (round_id, client_id)
);

CREATE TABLE deposits (
    round_id       TEXT NOT NULL REFERENCES rounds (round_id),
    client_id      TEXT NOT NULL,
    upload_sha256  TEXT NOT NULL,
    share_sha256   TEXT NOT NULL,
    signature      TEXT NOT NULL,
    sealed_share   BYTEA,
    nonce          BYTEA,
    master_key_id  TEXT,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (round_id, client_id)
);

-- Rounds this node refuses for good: open (or unknown to a restored database) when the node
-- was restored from a backup.
CREATE TABLE refused_rounds (
    round_id  TEXT PRIMARY KEY NOT NULL,
    at        BIGINT NOT NULL
);
