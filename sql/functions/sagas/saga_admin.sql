-- Saga administration: cancel, retry, skip a step, resolve by hand. Each locks the saga, checks
-- its state (PR007 when the action does not apply) and moves it on in the same transaction.

-- pgrelay._saga_lock(fn, saga_id): the saga row, locked; PR003 if unknown.
CREATE OR REPLACE FUNCTION pgrelay._saga_lock(p_function text, p_saga_id uuid)
RETURNS pgrelay.sagas
LANGUAGE plpgsql
AS $$
DECLARE
    v_saga pgrelay.sagas;
BEGIN
    SELECT * INTO v_saga FROM pgrelay.sagas s WHERE s.id = p_saga_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', p_function, 'saga_id', format('names no saga: %s', coalesce(p_saga_id::text, 'NULL')));
    END IF;
    RETURN v_saga;
END;
$$;

-- pgrelay.saga_cancel(saga_id, reason): a running saga compensates its completed steps and ends
-- 'cancelled'.
CREATE OR REPLACE FUNCTION pgrelay.saga_cancel(saga_id uuid, reason text DEFAULT 'cancelled')
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_saga pgrelay.sagas;
BEGIN
    v_saga := pgrelay._saga_lock('pgrelay.saga_cancel', saga_cancel.saga_id);
    IF v_saga.status <> 'running' THEN
        PERFORM pgrelay._raise('PR007', 'pgrelay.saga_cancel', 'saga_id', format('is %s: only a running saga can be cancelled', v_saga.status));
    END IF;
    PERFORM pgrelay._saga_compensate(v_saga, 'cancelled', jsonb_build_object('reason', coalesce(saga_cancel.reason, 'cancelled')));
    PERFORM pgrelay._saga_advance(v_saga.id);
END;
$$;

-- pgrelay.saga_retry(saga_id): after fixing the cause, retry a 'failed' saga's compensation that
-- could not finish (attempts start over).
CREATE OR REPLACE FUNCTION pgrelay.saga_retry(saga_id uuid)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_saga pgrelay.sagas;
BEGIN
    v_saga := pgrelay._saga_lock('pgrelay.saga_retry', saga_retry.saga_id);
    IF v_saga.status <> 'failed' THEN
        PERFORM pgrelay._raise('PR007', 'pgrelay.saga_retry', 'saga_id', format('is %s: only a failed saga can be retried', v_saga.status));
    END IF;
    UPDATE pgrelay.saga_steps st
       SET status = 'compensation_ready', attempts = 0, next_attempt_at = clock_timestamp(), finished_at = NULL
     WHERE st.saga_id = v_saga.id AND st.status = 'compensation_failed';
    UPDATE pgrelay.sagas s SET status = 'compensating', updated_at = now() WHERE s.id = v_saga.id RETURNING * INTO v_saga;
    PERFORM pgrelay._saga_event(v_saga, 'saga.retried', '{}');
    PERFORM pgrelay._saga_advance(v_saga.id);
END;
$$;

-- pgrelay.saga_skip_step(saga_id, step): for a 'failed' saga, a person declares the step's
-- compensation done (or not needed); the remaining compensations go on.
CREATE OR REPLACE FUNCTION pgrelay.saga_skip_step(saga_id uuid, step text)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_saga pgrelay.sagas;
BEGIN
    v_saga := pgrelay._saga_lock('pgrelay.saga_skip_step', saga_skip_step.saga_id);
    IF v_saga.status <> 'failed' THEN
        PERFORM pgrelay._raise('PR007', 'pgrelay.saga_skip_step', 'saga_id', format('is %s: steps can be skipped only in a failed saga', v_saga.status));
    END IF;
    UPDATE pgrelay.saga_steps st SET status = 'skipped', finished_at = now(),
           last_error = coalesce(st.last_error, '') || ' (skipped by hand)'
     WHERE st.saga_id = v_saga.id AND st.name = saga_skip_step.step AND st.status = 'compensation_failed';
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', 'pgrelay.saga_skip_step', 'step', format('names no failed compensation of saga %s: %L', v_saga.id, saga_skip_step.step));
    END IF;
    UPDATE pgrelay.sagas s SET status = 'compensating', updated_at = now() WHERE s.id = v_saga.id RETURNING * INTO v_saga;
    PERFORM pgrelay._saga_event(v_saga, 'saga.step_skipped', jsonb_build_object('step', saga_skip_step.step));
    PERFORM pgrelay._saga_advance(v_saga.id);
END;
$$;

-- pgrelay.saga_resolve(saga_id, note): a person settled a 'failed' saga outside pgrelay: it ends
-- 'compensated' with the note kept in its error.
CREATE OR REPLACE FUNCTION pgrelay.saga_resolve(saga_id uuid, note text)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_saga pgrelay.sagas;
BEGIN
    v_saga := pgrelay._saga_lock('pgrelay.saga_resolve', saga_resolve.saga_id);
    IF v_saga.status <> 'failed' THEN
        PERFORM pgrelay._raise('PR007', 'pgrelay.saga_resolve', 'saga_id', format('is %s: only a failed saga can be resolved', v_saga.status));
    END IF;
    IF saga_resolve.note IS NULL OR saga_resolve.note = '' THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.saga_resolve', 'note', 'must say how it was resolved');
    END IF;
    UPDATE pgrelay.saga_steps st SET status = 'skipped', finished_at = now()
     WHERE st.saga_id = v_saga.id AND st.status IN ('compensation_failed', 'succeeded', 'unknown', 'compensation_ready');
    UPDATE pgrelay.sagas s
       SET status = 'compensated', updated_at = now(), error = coalesce(s.error, '{}') || jsonb_build_object('resolved', saga_resolve.note)
     WHERE s.id = v_saga.id RETURNING * INTO v_saga;
    PERFORM pgrelay._saga_event(v_saga, 'saga.resolved', jsonb_build_object('note', saga_resolve.note));
END;
$$;
