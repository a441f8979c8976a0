-- pgrelay 002: subscriptions, partition leases, retries and dead letters.
--
-- A subscription reads the log through `partitions` independent partitions (messages hashed by
-- key). Each partition has a cursor (xid, position) and is leased one batch at a time: fetch
-- takes the lease and bumps lease_token (the fencing token), complete checks it, so a consumer
-- whose lease was taken over cannot acknowledge for the new holder.
--
-- A failed message leaves the walk and moves to pgrelay.retries, where it waits for its backoff.
-- Later messages of the same key are parked behind it in the same chain (next_attempt_at NULL),
-- so per-key order holds through failures while other keys keep flowing. After max_attempts the
-- message goes to pgrelay.dead_letters and the next message of its chain becomes due.

-- Up Migration

CREATE TABLE pgrelay.subscriptions (
    name          text        PRIMARY KEY,
    topics        text[]      NOT NULL,
    sink          jsonb       NOT NULL,
    partitions    integer     NOT NULL,
    max_attempts  integer     NOT NULL,
    backoff       jsonb       NOT NULL,
    batch_size    integer     NOT NULL,
    lease_seconds numeric     NOT NULL,
    options       jsonb       NOT NULL,
    paused        boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgrelay.subscription_partitions (
    subscription      text        NOT NULL REFERENCES pgrelay.subscriptions (name) ON DELETE CASCADE,
    partition_index   integer     NOT NULL,
    cursor_xid        xid8        NOT NULL,
    cursor_position   bigint      NOT NULL,
    lease_owner       text,
    lease_token       bigint      NOT NULL DEFAULT 0,
    lease_expires_at  timestamptz,
    -- The log messages of the batch in flight, in walk order (complete advances the cursor over them).
    inflight_xids     xid8[]      NOT NULL DEFAULT '{}',
    inflight_positions bigint[]   NOT NULL DEFAULT '{}',
    -- The retries (by position) handed out in the batch in flight.
    inflight_retries  bigint[]    NOT NULL DEFAULT '{}',
    -- Messages pulled ahead of the walk into the batch in flight (a same-key predecessor of a
    -- batch member that the walk has not reached yet).
    inflight_ahead_xids      xid8[]   NOT NULL DEFAULT '{}',
    inflight_ahead_positions bigint[] NOT NULL DEFAULT '{}',
    last_fetch_at     timestamptz,
    delivered_count   bigint      NOT NULL DEFAULT 0,
    failed_count      bigint      NOT NULL DEFAULT 0,
    dead_count        bigint      NOT NULL DEFAULT 0,
    last_delivered_at timestamptz,
    PRIMARY KEY (subscription, partition_index)
);

-- Messages delivered past a cursor that could not move yet (rare: a batch cut short).
CREATE TABLE pgrelay.delivered_ahead (
    subscription    text   NOT NULL,
    partition_index integer NOT NULL,
    xid             xid8   NOT NULL,
    position        bigint NOT NULL,
    PRIMARY KEY (subscription, partition_index, xid, position),
    FOREIGN KEY (subscription, partition_index)
        REFERENCES pgrelay.subscription_partitions (subscription, partition_index) ON DELETE CASCADE
);

CREATE TABLE pgrelay.retries (
    subscription    text        NOT NULL,
    partition_index integer     NOT NULL,
    chain           text        NOT NULL, -- the key, or the position for keyless messages
    position        bigint      NOT NULL,
    xid             xid8        NOT NULL,
    message         pgrelay.message_record NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,          -- NULL: parked behind an earlier message of its chain
    last_error      text,
    PRIMARY KEY (subscription, position),
    FOREIGN KEY (subscription, partition_index)
        REFERENCES pgrelay.subscription_partitions (subscription, partition_index) ON DELETE CASCADE
);

CREATE INDEX retries_chain_idx ON pgrelay.retries (subscription, partition_index, chain, position);

CREATE TABLE pgrelay.dead_letters (
    subscription    text        NOT NULL REFERENCES pgrelay.subscriptions (name) ON DELETE CASCADE,
    position        bigint      NOT NULL,
    xid             xid8        NOT NULL,
    message         pgrelay.message_record NOT NULL,
    attempts        integer     NOT NULL,
    last_error      text,
    dead_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription, position)
);

-- What a consumer receives from pgrelay.fetch.
CREATE TYPE pgrelay.delivery AS (
    subscription    text,
    partition_index integer,
    lease_token     bigint,
    attempt         integer,
    position        bigint,
    xid             xid8,
    id              uuid,
    topic           text,
    key             text,
    type            text,
    data            jsonb,
    metadata        jsonb,
    created_at      timestamptz
);

-- Down Migration

DROP TYPE pgrelay.delivery;
DROP TABLE pgrelay.dead_letters;
DROP TABLE pgrelay.retries;
DROP TABLE pgrelay.delivered_ahead;
DROP TABLE pgrelay.subscription_partitions;
DROP TABLE pgrelay.subscriptions;
