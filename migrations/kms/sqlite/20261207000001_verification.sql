-- Verification (issue #24): each deposit's signed root of its upload over verification spans,
-- and the aggregate's digest recorded with the contributor set (releases echo both). Rows from
-- before keep NULL: their releases carry no roots. Never edit once landed; add a migration.
ALTER TABLE deposits ADD COLUMN upload_root TEXT;
ALTER TABLE rounds ADD COLUMN aggregate_sha256 TEXT;
