-- Every replica keeps the token denylist in memory and follows it by polling the rows
-- written since a transaction horizon (see src/auth/revocation.rs). The id of the writing
-- transaction makes that poll exact: every transaction older than the horizon a poll
-- returns had finished when the poll read, so nothing commits "behind" the next poll,
-- however long a logout's transaction took. Additive: older replicas insert without it.
ALTER TABLE revoked_tokens ADD COLUMN txid bigint NOT NULL DEFAULT txid_current();
CREATE INDEX revoked_tokens_txid ON revoked_tokens (txid);
