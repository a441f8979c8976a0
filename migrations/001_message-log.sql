-- pgrelay 001: the schema and the message log.
--
-- The log is one table. Ordering and gaplessness come from three columns set by pgrelay.publish:
--   position  - taken from a sequence at insert; commit order for publishers of a key that were
--               serialised by a lock (row lock, expected version, or publish's advisory lock).
--   xid       - the publishing transaction's id (xid8). Readers walk (xid, position) and stop at
--               the visibility horizon, so a transaction that commits late is never skipped.
--   next_xid  - the xmax of a snapshot taken when the message was written (after any lock the
--               publisher waited for): above the xid of every transaction that had completed by
--               then. A serialised earlier publisher of the same key completed before this one
--               wrote, so only xids in (xid, next_xid) can hold a same-key message that must go
--               first. NULL under REPEATABLE READ / SERIALIZABLE (the snapshot is the
--               transaction's first): readers then search all younger xids for that key.
--               Unserialised publishers of a key get causal order only (see README).
-- Functions live in sql/functions and are reinstalled after migrations run.

-- Up Migration

CREATE SCHEMA pgrelay;

COMMENT ON SCHEMA pgrelay IS 'pgrelay: message log, subscriptions, inbox, event store, sagas, CDC and sync';

CREATE SEQUENCE pgrelay.message_position_seq AS bigint;

CREATE TABLE pgrelay.messages (
    position   bigint      NOT NULL,
    xid        xid8        NOT NULL,
    next_xid   xid8,
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    topic      text        NOT NULL,
    key        text,
    type       text        NOT NULL,
    data       jsonb       NOT NULL,
    metadata   jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_pkey PRIMARY KEY (xid, position)
);

ALTER SEQUENCE pgrelay.message_position_seq OWNED BY pgrelay.messages.position;

-- Same-key lookups for the per-key order check (and stream reads).
CREATE INDEX messages_topic_key_xid_idx ON pgrelay.messages (topic, key, xid) WHERE key IS NOT NULL;

-- What readers return: a message without its internal next_xid bound.
CREATE TYPE pgrelay.message_record AS (
    position   bigint,
    xid        xid8,
    id         uuid,
    topic      text,
    key        text,
    type       text,
    data       jsonb,
    metadata   jsonb,
    created_at timestamptz
);

-- The doorbell: a relay that has nothing to do arms it; the next publisher disarms it and
-- sends one NOTIFY. A busy system never notifies (a NOTIFY serialises commits cluster-wide).
CREATE TABLE pgrelay.doorbell (
    id       boolean     PRIMARY KEY DEFAULT true CHECK (id),
    armed    boolean     NOT NULL DEFAULT false,
    armed_at timestamptz
);

INSERT INTO pgrelay.doorbell (id, armed) VALUES (true, false);

-- Down Migration

DROP SCHEMA pgrelay CASCADE;
