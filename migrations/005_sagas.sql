-- pgrelay 005: sagas.
--
-- A saga is a row in pgrelay.sagas and one row per step in pgrelay.saga_steps, copied from the
-- definition version it started with. Step status moves forward
--   pending -> ready -> (leased ->) succeeded | failed | unknown (a timed-out worker step)
-- and, when the saga compensates, back through
--   compensation_ready -> (compensation_leased ->) compensated | compensation_failed | skipped.
-- attempts counts tries of the current phase and is the fencing token of a worker's lease.

-- Up Migration

CREATE TABLE pgrelay.saga_definitions (
    saga_type  text        NOT NULL,
    version    integer     NOT NULL,
    definition jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_type, version)
);

CREATE TABLE pgrelay.sagas (
    id                  uuid        PRIMARY KEY,
    saga_type           text        NOT NULL,
    version             integer     NOT NULL,
    status              text        NOT NULL CHECK (status IN ('running', 'completed', 'compensating', 'compensated', 'failed', 'cancelled')),
    input               jsonb       NOT NULL,
    context             jsonb       NOT NULL DEFAULT '{}',
    idempotency_key     text,
    compensation_reason text,
    deadline_at         timestamptz,
    error               jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (saga_type, version) REFERENCES pgrelay.saga_definitions (saga_type, version),
    UNIQUE (saga_type, idempotency_key)
);

CREATE INDEX sagas_deadline_idx ON pgrelay.sagas (deadline_at) WHERE status = 'running' AND deadline_at IS NOT NULL;

CREATE TABLE pgrelay.saga_steps (
    saga_id          uuid        NOT NULL REFERENCES pgrelay.sagas (id) ON DELETE CASCADE,
    step_index       integer     NOT NULL,
    name             text        NOT NULL,
    action           jsonb       NOT NULL,
    compensation     jsonb,
    max_attempts     integer     NOT NULL,
    timeout_seconds  numeric     NOT NULL,
    backoff          jsonb       NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    timed_out        boolean     NOT NULL DEFAULT false,
    next_attempt_at  timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz,
    output           jsonb,
    last_error       text,
    started_at       timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (saga_id, step_index),
    UNIQUE (saga_id, name)
);

-- Due worker steps by queue, oldest first: saga_lease reads it in order and stops at max_tasks.
CREATE INDEX saga_steps_worker_due_idx ON pgrelay.saga_steps
    ((CASE WHEN status = 'ready' THEN action ->> 'worker' ELSE compensation ->> 'worker' END), next_attempt_at)
    WHERE status IN ('ready', 'compensation_ready');
-- Due SQL steps: what saga_tick runs, without walking the ready worker steps.
CREATE INDEX saga_steps_sql_due_idx ON pgrelay.saga_steps (next_attempt_at)
    WHERE (status = 'ready' AND action ? 'sql') OR (status = 'compensation_ready' AND compensation ? 'sql');
CREATE INDEX saga_steps_leased_idx ON pgrelay.saga_steps (lease_expires_at)
    WHERE status IN ('leased', 'compensation_leased');

CREATE TYPE pgrelay.saga_task AS (
    saga_id          uuid,
    saga_type        text,
    step             text,
    step_index       integer,
    phase            text,
    queue            text,
    attempt          integer,
    idempotency_key  text,
    input            jsonb,
    context          jsonb,
    lease_expires_at timestamptz
);

-- Down Migration

DROP TYPE pgrelay.saga_task;
DROP TABLE pgrelay.saga_steps;
DROP TABLE pgrelay.sagas;
DROP TABLE pgrelay.saga_definitions;
