-- Aggregator schema v5. Never edit once landed.
--
-- Leasing uses fold_jobs_runnable (round_id, job WHERE done = 0); the index on
-- (done, lease_expiry) served no query and made every lease renewal update an index.
DROP INDEX fold_jobs_pending;
-- The publication reads the partial sums of one span at a time.
CREATE INDEX fold_jobs_span ON fold_jobs (round_id, span);
