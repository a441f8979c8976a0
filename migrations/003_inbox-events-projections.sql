-- pgrelay 003: inbox, idempotency keys, event store, projections.
--
-- Event-store streams are (topic, key) streams of the same log: an appended event is an ordinary
-- message that also carries stream_version (1, 2, 3, ... without gaps, unique per stream). Plain
-- publishes leave it NULL and pay nothing for it (the index is partial).

-- Up Migration

ALTER TABLE pgrelay.messages ADD COLUMN stream_version bigint;

CREATE UNIQUE INDEX messages_stream_version_idx
    ON pgrelay.messages (topic, key, stream_version)
    WHERE stream_version IS NOT NULL;

-- Messages a consumer has processed, recorded in the consumer's own transaction.
CREATE TABLE pgrelay.inbox (
    consumer     text        NOT NULL,
    message_id   uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE INDEX inbox_processed_at_idx ON pgrelay.inbox (processed_at);

-- HTTP-style idempotency keys: one row per (scope, key) for as long as it lives.
CREATE TABLE pgrelay.idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    fingerprint  text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('in_progress', 'completed')),
    response     jsonb,
    locked_until timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_expires_at_idx ON pgrelay.idempotency_keys (expires_at);

-- Folded stream state at a version, per reducer.
CREATE TABLE pgrelay.snapshots (
    topic      text        NOT NULL,
    key        text        NOT NULL,
    reducer    text        NOT NULL,
    version    bigint      NOT NULL,
    state      jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, key, reducer)
);

-- Read models fed by the log: handler applied to each message, checkpoint in the same transaction.
CREATE TABLE pgrelay.projections (
    name            text        PRIMARY KEY,
    topics          text[]      NOT NULL,
    handler         regprocedure NOT NULL,
    reset_handler   regprocedure,
    cursor_xid      xid8        NOT NULL DEFAULT '0',
    cursor_position bigint      NOT NULL DEFAULT 0,
    applied_count   bigint      NOT NULL DEFAULT 0,
    last_applied_at timestamptz,
    last_error      text,
    failed_position bigint,
    -- Committed messages above the cursor that start 'latest' passed (xid, position pairs, the
    -- walk skips them); pairs fall away once the cursor passes them.
    skip_xids       xid8[]      NOT NULL DEFAULT '{}',
    skip_positions  bigint[]    NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TYPE pgrelay.stream_event AS (
    version    bigint,
    position   bigint,
    id         uuid,
    type       text,
    data       jsonb,
    metadata   jsonb,
    created_at timestamptz
);

-- Down Migration

DROP TYPE pgrelay.stream_event;
DROP TABLE pgrelay.projections;
DROP TABLE pgrelay.snapshots;
DROP TABLE pgrelay.idempotency_keys;
DROP TABLE pgrelay.inbox;
DROP INDEX pgrelay.messages_stream_version_idx;
ALTER TABLE pgrelay.messages DROP COLUMN stream_version;
