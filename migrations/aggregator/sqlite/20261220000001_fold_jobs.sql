-- Aggregator schema v3: the fold as leased jobs, so that any number of replicas sharing this
-- database (and one blob bucket) can build a round's aggregate. Never edit once landed.
--
-- span_blocks: the blocks of one fold job's slot range, fixed when the round is created (its
-- uploads' span digests are cut at these boundaries). span_sha256: an upload's SHA-256 per
-- span, concatenated hex, computed while it was received (empty for uploads admitted before
-- this migration).
ALTER TABLE rounds ADD COLUMN span_blocks BIGINT NOT NULL DEFAULT 8192;
ALTER TABLE uploads ADD COLUMN span_sha256 TEXT NOT NULL DEFAULT '';

-- One row per job: `fold` jobs sum uploads [first_member, first_member + members) of the sorted contributor
-- set over span `span` into the blob `partial.<job>`; the one `publish` job (job 0) sums the
-- partial sums into the aggregate. A job is leased by one replica until lease_expiry.
CREATE TABLE fold_jobs (
    round_id        TEXT NOT NULL REFERENCES rounds (round_id),
    job             BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    first_member    BIGINT NOT NULL,
    members         BIGINT NOT NULL,
    span            BIGINT NOT NULL,
    done            BIGINT NOT NULL DEFAULT 0,
    output_sha256   TEXT,
    lease_holder    TEXT,
    lease_expiry    BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (round_id, job)
);
CREATE INDEX fold_jobs_pending ON fold_jobs (done, lease_expiry);
