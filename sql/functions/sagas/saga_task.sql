-- pgrelay._saga_task(fn, saga_id, step, attempt): lock a leased step and check the fencing token.
-- A worker whose lease expired (and whose step was retried, handed to another worker or
-- compensated) gets PR005 and changes nothing.
CREATE OR REPLACE FUNCTION pgrelay._saga_task(p_function text, p_saga_id uuid, p_step text, p_attempt integer,
                                              OUT saga pgrelay.sagas, OUT step pgrelay.saga_steps)
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_saga_id IS NULL OR p_step IS NULL OR p_attempt IS NULL THEN
        PERFORM pgrelay._raise('PR001', p_function, CASE WHEN p_saga_id IS NULL THEN 'saga_id' WHEN p_step IS NULL THEN 'step' ELSE 'attempt' END,
                               'must not be null');
    END IF;
    SELECT * INTO saga FROM pgrelay.sagas s WHERE s.id = p_saga_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', p_function, 'saga_id', format('names no saga: %s', p_saga_id));
    END IF;
    SELECT * INTO step FROM pgrelay.saga_steps st WHERE st.saga_id = p_saga_id AND st.name = p_step FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', p_function, 'step', format('names no step of saga %s: %L', p_saga_id, p_step));
    END IF;
    IF step.status NOT IN ('leased', 'compensation_leased') OR step.attempts <> p_attempt
       OR step.lease_expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION USING
            ERRCODE = 'PR005',
            MESSAGE = format('%s: argument attempt %s no longer holds step %L of saga %s (now %s, attempt %s)',
                             p_function, p_attempt, p_step, p_saga_id, step.status, step.attempts),
            COLUMN = 'attempt';
    END IF;
END;
$$;

-- pgrelay.saga_task_complete(saga_id, step, attempt, output): a worker finished a leased action
-- (output merged into the saga context) or compensation. The saga moves on in this transaction.
CREATE OR REPLACE FUNCTION pgrelay.saga_task_complete(saga_id uuid, step text, attempt integer, output jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_task record;
BEGIN
    v_task := pgrelay._saga_task('pgrelay.saga_task_complete', saga_task_complete.saga_id, saga_task_complete.step, saga_task_complete.attempt);
    PERFORM pgrelay._saga_step_succeeded(v_task.saga, v_task.step, saga_task_complete.output);
    PERFORM pgrelay._saga_advance(saga_task_complete.saga_id);
END;
$$;

-- pgrelay.saga_task_fail(saga_id, step, attempt, error, retryable): a worker's attempt failed.
-- Retried after backoff up to max_attempts (not at all when retryable is false); then the saga
-- compensates (action) or fails for a person (compensation).
CREATE OR REPLACE FUNCTION pgrelay.saga_task_fail(saga_id uuid, step text, attempt integer, error text,
                                                  retryable boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_task record;
BEGIN
    v_task := pgrelay._saga_task('pgrelay.saga_task_fail', saga_task_fail.saga_id, saga_task_fail.step, saga_task_fail.attempt);
    PERFORM pgrelay._saga_step_failed(v_task.saga, v_task.step, coalesce(saga_task_fail.error, 'failed'),
                                      coalesce(saga_task_fail.retryable, true), false);
    PERFORM pgrelay._saga_advance(saga_task_fail.saga_id);
END;
$$;

-- pgrelay.saga_task_heartbeat(saga_id, step, attempt, lease_seconds): extend a long step's lease.
CREATE OR REPLACE FUNCTION pgrelay.saga_task_heartbeat(saga_id uuid, step text, attempt integer, lease_seconds numeric DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_task    record;
    v_expires timestamptz;
BEGIN
    v_task := pgrelay._saga_task('pgrelay.saga_task_heartbeat', saga_task_heartbeat.saga_id, saga_task_heartbeat.step, saga_task_heartbeat.attempt);
    IF saga_task_heartbeat.lease_seconds IS NOT NULL AND (saga_task_heartbeat.lease_seconds <= 0 OR saga_task_heartbeat.lease_seconds > 86400) THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.saga_task_heartbeat', 'lease_seconds', 'must be in (0, 86400]');
    END IF;
    UPDATE pgrelay.saga_steps st
       SET lease_expires_at = clock_timestamp() + make_interval(secs => coalesce(saga_task_heartbeat.lease_seconds, st.timeout_seconds)::double precision)
     WHERE st.saga_id = saga_task_heartbeat.saga_id AND st.name = saga_task_heartbeat.step
    RETURNING st.lease_expires_at INTO v_expires;
    RETURN v_expires;
END;
$$;
