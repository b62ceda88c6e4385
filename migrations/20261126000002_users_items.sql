-- Users, their items, revoked tokens and idempotency keys.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Emails are stored lower-cased; the index makes them unique and serves login.
CREATE UNIQUE INDEX users_email_key ON users (email);

-- array_to_string is only STABLE, and a generated column needs IMMUTABLE expressions.
-- Joining text with a space does not depend on any setting, so the wrapper is safe.
CREATE FUNCTION cartae_tags_text(tags text[]) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT array_to_string(tags, ' ') $$;

CREATE TABLE items (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type             text NOT NULL CHECK (type IN
                         ('email', 'task', 'document', 'message', 'event', 'note', 'contact', 'file')),
    title            text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 500),
    content          text NOT NULL DEFAULT '',
    tags             text[] NOT NULL DEFAULT '{}',
    metadata         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    source_connector text,
    source_id        text,
    source_url       text,
    archived         boolean NOT NULL DEFAULT false,
    favorite         boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    version          integer NOT NULL DEFAULT 1,
    -- Title weighs most, then tags, then the body. 'english' stems, so "meetings" finds
    -- "meeting".
    search           tsvector GENERATED ALWAYS AS (
                         setweight(to_tsvector('english', title), 'A') ||
                         setweight(to_tsvector('english', cartae_tags_text(tags)), 'B') ||
                         setweight(to_tsvector('english', content), 'C')
                     ) STORED,
    CHECK ((source_connector IS NULL) = (source_id IS NULL))
);

CREATE TRIGGER items_touch_updated_at BEFORE UPDATE ON items
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Keyset pagination, newest first (GET /api/items, with or without filters).
CREATE INDEX items_user_created ON items (user_id, created_at DESC, id DESC);
-- The same, filtered by type, and the per-type counts of /api/stats.
CREATE INDEX items_user_type_created ON items (user_id, type, created_at DESC, id DESC);
-- Tag filters (tags @> ARRAY[...]).
CREATE INDEX items_tags ON items USING gin (tags);
-- Full-text search.
CREATE INDEX items_search ON items USING gin (search);
-- Upsert by source, per user. NULLs are distinct, so items without a source never clash.
CREATE UNIQUE INDEX items_user_source_key ON items (user_id, source_connector, source_id);

-- The durable half of the token denylist: Redis answers fast, this never forgets.
CREATE TABLE revoked_tokens (
    jti        uuid PRIMARY KEY,
    user_id    uuid NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_tokens_expires ON revoked_tokens (expires_at);

-- Idempotency keys live in PostgreSQL, in the same transaction as the write they guard:
-- a concurrent request with the same key waits on the unique index until the first one
-- commits (then replays it) or rolls back (then runs itself).
CREATE TABLE idempotency_keys (
    scope       text NOT NULL,
    key         text NOT NULL,
    fingerprint bytea NOT NULL,
    status      smallint NOT NULL,
    body        jsonb NOT NULL,
    etag        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
