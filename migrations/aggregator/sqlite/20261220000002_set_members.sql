-- Aggregator schema v4. Never edit once landed.
--
-- set_members: the contributor set in fold order (ordinal 0, 1, …), written with the set, so
-- that a fold job reads its own batch of uploads only.
CREATE TABLE set_members (
    round_id   TEXT NOT NULL REFERENCES rounds (round_id),
    ordinal    BIGINT NOT NULL,
    client_id  TEXT NOT NULL,
    PRIMARY KEY (round_id, ordinal)
);

-- The runnable jobs in leasing order (a partial index: both databases have them).
CREATE INDEX fold_jobs_runnable ON fold_jobs (round_id, job) WHERE done = 0;

-- Uploads admitted before span digests existed: their rounds fold as one span, so that a
-- fold job reads each such upload whole and checks it against its admitted SHA-256.
UPDATE rounds SET span_blocks = 1099511627776
WHERE round_id IN (SELECT round_id FROM uploads WHERE span_sha256 = '');
