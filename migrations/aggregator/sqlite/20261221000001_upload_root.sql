-- Each upload's root over verification spans, computed while it is received (issue #24): a
-- member whose deposits sign another root is left out of the contributor set. Uploads from
-- before keep NULL. Never edit once landed; add a migration.
ALTER TABLE uploads ADD COLUMN upload_root TEXT;
