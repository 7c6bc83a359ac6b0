-- A btree index entry holds at most about 2.7 kB: indexing the device token itself made one
-- registration with a longer token fail its batch, and with it the projection, forever (the log
-- may hold tokens of any length, from before the API bounded them or from another writer).
-- Index a hash of the token instead. md5 is used because PostgreSQL marks it immutable (an index
-- expression must be), not for secrecy: a lookup by token still compares the token itself,
--   WHERE tenant_id = $1 AND md5(token) = md5($2) AND token = $2 AND active
DROP INDEX devices_active_token;
CREATE INDEX devices_active_token_md5 ON devices (tenant_id, md5(token)) WHERE active;
