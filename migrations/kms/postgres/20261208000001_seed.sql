-- Two-step mask seeds (issue #24): the nonces this node handed out, per round and commitment
-- to the aggregator's contribution (at most a few per round), and each registered round's
-- seed, unique: a node never signs one seed twice. Rounds from before keep NULL (not unique
-- among themselves). Never edit once landed; add a migration.
CREATE TABLE seed_nonces (
    round_id   TEXT   NOT NULL,
    commitment TEXT   NOT NULL,
    nonce      TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (round_id, commitment)
);
ALTER TABLE rounds ADD COLUMN mask_seed TEXT;
CREATE UNIQUE INDEX rounds_mask_seed ON rounds (mask_seed);
