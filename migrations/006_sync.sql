-- pgrelay 006: sync (replica tables and read models kept in step with a source's changes).
--
-- pgrelay.syncs lives in the source database (the one whose log carries the changes).
-- pgrelay.sync_checkpoints and pgrelay.sync_row_versions live in the target database (pgrelay is
-- installed there too): a batch's target writes, its checkpoint and its row versions commit in
-- one target transaction, so a crash neither loses nor double-applies a change, and a change
-- older than what a target row already reflects is skipped.

-- Up Migration

CREATE TABLE pgrelay.syncs (
    name          text        PRIMARY KEY,
    topics        text[]      NOT NULL,
    source_format text        NOT NULL CHECK (source_format IN ('cdc', 'event')),
    target        jsonb       NOT NULL,
    source_table  text,
    paused        boolean     NOT NULL DEFAULT false,
    -- Where the sync's target checkpoint was last seen (kept here, in the source, for lag and for
    -- retention: the log must keep what a cross-database sync has not applied yet). Only moves forward.
    applied_xid      xid8     NOT NULL DEFAULT '0',
    applied_position bigint   NOT NULL DEFAULT 0,
    applied_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgrelay.sync_checkpoints (
    name            text        PRIMARY KEY,
    cursor_xid      xid8        NOT NULL DEFAULT '0',
    cursor_position bigint      NOT NULL DEFAULT 0,
    applied         bigint      NOT NULL DEFAULT 0,
    skipped_stale   bigint      NOT NULL DEFAULT 0,
    last_applied_at timestamptz,
    last_source_at  timestamptz,
    -- a TRUNCATE applied at this position: anything older is stale for every row
    truncate_position bigint    NOT NULL DEFAULT 0
);

CREATE TABLE pgrelay.sync_row_versions (
    name     text    NOT NULL,
    row_key  text    NOT NULL,
    position bigint  NOT NULL,
    deleted  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (name, row_key)
) WITH (fillfactor = 50); -- every applied batch rewrites its keys' rows: room on the page keeps those updates HOT (no new index entry)

-- Down Migration

DROP TABLE pgrelay.sync_row_versions;
DROP TABLE pgrelay.sync_checkpoints;
DROP TABLE pgrelay.syncs;
