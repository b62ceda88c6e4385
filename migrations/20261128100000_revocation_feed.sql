-- Every replica keeps the token denylist in memory and follows it by polling the rows
-- written since a transaction horizon (see src/auth/revocation.rs). The id of the writing
-- transaction makes that poll exact: every transaction older than the horizon a poll
-- returns had finished when the poll read, so nothing commits "behind" the next poll,
-- however long a logout's transaction took. Additive: older replicas insert without it.
-- Bounded: behind a long transaction on the table this fails (and the replica retries
-- later) rather than queueing every logout behind its lock.
SET lock_timeout = '5s';
SET statement_timeout = '60s';
ALTER TABLE revoked_tokens ADD COLUMN txid bigint NOT NULL DEFAULT txid_current();
CREATE INDEX revoked_tokens_txid ON revoked_tokens (txid);
