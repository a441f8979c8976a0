-- pgrelay 008: sagas start faster and list by status without a full scan.
--
-- saga_definitions.steps: each version's steps compiled once by saga_define (defaults filled in,
-- backoff checked and normalised), so saga_start copies them into saga_steps without parsing
-- the definition's JSON or checking each step's backoff again for every saga. NULL for versions
-- defined before this migration: saga_start compiles those on the fly, and saga_define fills the
-- column in when the same definition is defined again.
--
-- sagas_status_updated_idx: pgrelay.saga_list filters by status (and type) and lists the most
-- recently changed first; without it every call read and sorted the whole sagas table.

-- Up Migration

CREATE TYPE pgrelay.saga_step_spec AS (
    name            text,
    action          jsonb,
    compensation    jsonb,
    max_attempts    integer,
    timeout_seconds numeric,
    backoff         jsonb
);

ALTER TABLE pgrelay.saga_definitions ADD COLUMN steps pgrelay.saga_step_spec[];

CREATE INDEX sagas_status_updated_idx ON pgrelay.sagas (status, updated_at DESC, id);

-- Down Migration

DROP INDEX pgrelay.sagas_status_updated_idx;
ALTER TABLE pgrelay.saga_definitions DROP COLUMN steps;
DROP TYPE pgrelay.saga_step_spec;
