-- pgrelay._saga_advance(saga_id): move one saga as far as it can go now. The caller holds the
-- saga row lock. Runs due SQL steps and compensations inline (atomic with the state change),
-- makes worker steps ready for saga_lease, turns expired worker leases into failed attempts
-- (a timeout: outcome unknown), starts compensation on a final failure or a passed deadline, and
-- finishes the saga. Lifecycle events go to topic 'saga.<type>'.
CREATE OR REPLACE FUNCTION pgrelay._saga_advance(p_saga_id uuid)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_saga  pgrelay.sagas;
    v_step  pgrelay.saga_steps;
    v_run     record;
    v_guard   integer := 0;
    v_claimed boolean;
BEGIN
    LOOP
        v_guard := v_guard + 1;
        EXIT WHEN v_guard > 10000;
        SELECT * INTO v_saga FROM pgrelay.sagas s WHERE s.id = p_saga_id;

        IF v_saga.status = 'running' THEN
            IF v_saga.deadline_at IS NOT NULL AND v_saga.deadline_at <= clock_timestamp() THEN
                PERFORM pgrelay._saga_compensate(v_saga, 'deadline', jsonb_build_object('reason', 'deadline passed'));
                CONTINUE;
            END IF;
            SELECT * INTO v_step FROM pgrelay.saga_steps st
            WHERE st.saga_id = p_saga_id AND st.status <> 'succeeded' ORDER BY st.step_index LIMIT 1;
            IF NOT FOUND THEN
                UPDATE pgrelay.sagas s SET status = 'completed', updated_at = now() WHERE s.id = p_saga_id RETURNING * INTO v_saga;
                PERFORM pgrelay._saga_event(v_saga, 'saga.completed', jsonb_build_object('context', v_saga.context));
                RETURN;
            END IF;
            v_claimed := false;
            IF v_step.status = 'pending' THEN
                -- A SQL step is claimed (attempt 1) in the same statement that makes it ready.
                UPDATE pgrelay.saga_steps st
                   SET status = 'ready', next_attempt_at = clock_timestamp(), started_at = now(),
                       attempts = CASE WHEN st.action ? 'sql' THEN st.attempts + 1 ELSE st.attempts END
                WHERE st.saga_id = p_saga_id AND st.step_index = v_step.step_index RETURNING * INTO v_step;
                v_claimed := v_step.action ? 'sql';
            END IF;
            IF v_step.status = 'leased' AND v_step.lease_expires_at <= clock_timestamp() THEN
                PERFORM pgrelay._saga_step_failed(v_saga, v_step, format('timed out after %s s (outcome unknown)', v_step.timeout_seconds), true, true);
                CONTINUE;
            END IF;
            IF v_step.status = 'ready' AND v_step.action ? 'sql' AND (v_claimed OR v_step.next_attempt_at <= clock_timestamp()) THEN
                IF NOT v_claimed THEN
                    UPDATE pgrelay.saga_steps st SET attempts = st.attempts + 1
                    WHERE st.saga_id = p_saga_id AND st.step_index = v_step.step_index RETURNING * INTO v_step;
                END IF;
                v_run := pgrelay._saga_run_sql(v_saga, v_step, 'action');
                IF v_run.ok THEN
                    PERFORM pgrelay._saga_step_succeeded(v_saga, v_step, v_run.output);
                ELSIF v_run.contention THEN
                    PERFORM pgrelay._saga_step_contended(v_saga, v_step, v_run.error);
                    RETURN;
                ELSE
                    PERFORM pgrelay._saga_step_failed(v_saga, v_step, v_run.error, true, false);
                END IF;
                CONTINUE;
            END IF;
            RETURN; -- waiting: for a worker, a backoff, or a lease
        END IF;

        IF v_saga.status = 'compensating' THEN
            SELECT * INTO v_step FROM pgrelay.saga_steps st
            WHERE st.saga_id = p_saga_id
              AND st.status IN ('succeeded', 'unknown', 'compensation_ready', 'compensation_leased')
            ORDER BY st.step_index DESC LIMIT 1;
            IF NOT FOUND THEN
                UPDATE pgrelay.sagas s
                   SET status = CASE WHEN s.compensation_reason = 'cancelled' THEN 'cancelled' ELSE 'compensated' END,
                       updated_at = now()
                 WHERE s.id = p_saga_id RETURNING * INTO v_saga;
                PERFORM pgrelay._saga_event(v_saga, 'saga.' || v_saga.status, '{}');
                RETURN;
            END IF;
            IF v_step.compensation IS NULL OR v_step.compensation = 'null' THEN
                UPDATE pgrelay.saga_steps st SET status = 'skipped', finished_at = now()
                WHERE st.saga_id = p_saga_id AND st.step_index = v_step.step_index;
                CONTINUE;
            END IF;
            IF v_step.status IN ('succeeded', 'unknown') THEN
                UPDATE pgrelay.saga_steps st
                   SET status = 'compensation_ready', attempts = 0, timed_out = false, next_attempt_at = clock_timestamp(),
                       lease_owner = NULL, lease_expires_at = NULL
                 WHERE st.saga_id = p_saga_id AND st.step_index = v_step.step_index RETURNING * INTO v_step;
            END IF;
            IF v_step.status = 'compensation_leased' AND v_step.lease_expires_at <= clock_timestamp() THEN
                PERFORM pgrelay._saga_step_failed(v_saga, v_step, format('compensation timed out after %s s', v_step.timeout_seconds), true, true);
                CONTINUE;
            END IF;
            IF v_step.status = 'compensation_ready' AND v_step.next_attempt_at <= clock_timestamp() AND v_step.compensation ? 'sql' THEN
                UPDATE pgrelay.saga_steps st SET attempts = st.attempts + 1
                WHERE st.saga_id = p_saga_id AND st.step_index = v_step.step_index RETURNING * INTO v_step;
                v_run := pgrelay._saga_run_sql(v_saga, v_step, 'compensation');
                IF v_run.ok THEN
                    PERFORM pgrelay._saga_step_succeeded(v_saga, v_step, v_run.output);
                ELSIF v_run.contention THEN
                    PERFORM pgrelay._saga_step_contended(v_saga, v_step, v_run.error);
                    RETURN;
                ELSE
                    PERFORM pgrelay._saga_step_failed(v_saga, v_step, v_run.error, true, false);
                END IF;
                CONTINUE;
            END IF;
            RETURN;
        END IF;
        RETURN; -- completed, compensated, failed, cancelled: nothing to do
    END LOOP;
END;
$$;

-- pgrelay._saga_compensate(saga, reason, error): start compensating completed steps in reverse.
CREATE OR REPLACE FUNCTION pgrelay._saga_compensate(p_saga pgrelay.sagas, p_reason text, p_error jsonb)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_saga pgrelay.sagas;
BEGIN
    -- Forward steps that never finished stop here; a leased one's worker is fenced off.
    UPDATE pgrelay.saga_steps st
       SET status = CASE WHEN st.status = 'leased' THEN 'unknown' ELSE 'skipped' END,
           lease_owner = NULL, lease_expires_at = NULL, finished_at = now()
     WHERE st.saga_id = p_saga.id AND st.status IN ('pending', 'ready', 'leased');
    UPDATE pgrelay.sagas s
       SET status = 'compensating', compensation_reason = p_reason, error = coalesce(p_error, s.error), updated_at = now()
     WHERE s.id = p_saga.id RETURNING * INTO v_saga;
    PERFORM pgrelay._saga_event(v_saga, 'saga.compensating', jsonb_build_object('reason', p_reason, 'error', p_error));
END;
$$;

-- pgrelay._saga_step_succeeded(saga, step, output): record a successful action (output merged
-- into the context) or compensation.
CREATE OR REPLACE FUNCTION pgrelay._saga_step_succeeded(p_saga pgrelay.sagas, p_step pgrelay.saga_steps, p_output jsonb)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_step.status IN ('ready', 'leased') THEN
        UPDATE pgrelay.saga_steps st
           SET status = 'succeeded', output = p_output, finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,
               last_error = NULL
         WHERE st.saga_id = p_saga.id AND st.step_index = p_step.step_index;
        IF p_output IS NOT NULL AND p_output NOT IN ('null', '{}') THEN  -- nothing to merge: spare the saga row a version
            UPDATE pgrelay.sagas s SET context = pgrelay._saga_merge(s.context, p_step.name, p_output), updated_at = now()
             WHERE s.id = p_saga.id;
        END IF;
        PERFORM pgrelay._saga_event(p_saga, 'saga.step_succeeded', jsonb_build_object('step', p_step.name, 'attempt', p_step.attempts));
    ELSE
        UPDATE pgrelay.saga_steps st
           SET status = 'compensated', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL, last_error = NULL
         WHERE st.saga_id = p_saga.id AND st.step_index = p_step.step_index;
        PERFORM pgrelay._saga_event(p_saga, 'saga.step_compensated', jsonb_build_object('step', p_step.name, 'attempt', p_step.attempts));
    END IF;
END;
$$;

-- pgrelay._saga_step_contended(saga, step, error): a SQL step lost a lock race (deadlock,
-- serialization failure) with another transaction, for example another saga_tick holding a row of
-- the same account. Not an attempt: it runs again shortly, in a later transaction, because this
-- one may hold the very lock the other side waits for (running it again now would only repeat it).
CREATE OR REPLACE FUNCTION pgrelay._saga_step_contended(p_saga pgrelay.sagas, p_step pgrelay.saga_steps, p_error text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE pgrelay.saga_steps st
       SET attempts = st.attempts - 1, last_error = p_error,
           next_attempt_at = clock_timestamp() + make_interval(secs => 0.02 + random() * 0.2)
     WHERE st.saga_id = p_saga.id AND st.step_index = p_step.step_index;
END;
$$;

-- pgrelay._saga_step_failed(saga, step, error, retryable, timed_out): record a failed attempt:
-- retry after backoff, or fail for good. A forward step failing for good starts compensation (a
-- step whose attempt timed out counts as done-maybe and is compensated too); a compensation
-- failing for good puts the saga in 'failed' for a person.
CREATE OR REPLACE FUNCTION pgrelay._saga_step_failed(p_saga pgrelay.sagas, p_step pgrelay.saga_steps, p_error text,
                                                     p_retryable boolean, p_timed_out boolean)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_forward boolean := p_step.status IN ('ready', 'leased');
    v_final   boolean := NOT p_retryable OR p_step.attempts >= p_step.max_attempts;
    v_saga    pgrelay.sagas;
BEGIN
    PERFORM pgrelay._saga_event(p_saga, 'saga.step_failed',
        jsonb_build_object('step', p_step.name, 'phase', CASE WHEN v_forward THEN 'action' ELSE 'compensation' END,
                           'attempt', p_step.attempts, 'error', p_error, 'final', v_final));
    IF NOT v_final THEN
        UPDATE pgrelay.saga_steps st
           SET status = CASE WHEN v_forward THEN 'ready' ELSE 'compensation_ready' END,
               next_attempt_at = pgrelay._next_attempt_at(st.backoff, st.attempts),
               last_error = p_error, timed_out = st.timed_out OR p_timed_out, lease_owner = NULL, lease_expires_at = NULL
         WHERE st.saga_id = p_saga.id AND st.step_index = p_step.step_index;
        RETURN;
    END IF;
    IF v_forward THEN
        UPDATE pgrelay.saga_steps st
           SET status = CASE WHEN st.timed_out OR p_timed_out THEN 'unknown' ELSE 'failed' END,
               last_error = p_error, finished_at = now(), lease_owner = NULL, lease_expires_at = NULL
         WHERE st.saga_id = p_saga.id AND st.step_index = p_step.step_index;
        PERFORM pgrelay._saga_compensate(p_saga, 'failed', jsonb_build_object('step', p_step.name, 'error', p_error));
    ELSE
        UPDATE pgrelay.saga_steps st
           SET status = 'compensation_failed', last_error = p_error, finished_at = now(), lease_owner = NULL, lease_expires_at = NULL
         WHERE st.saga_id = p_saga.id AND st.step_index = p_step.step_index;
        UPDATE pgrelay.sagas s
           SET status = 'failed', updated_at = now(),
               error = jsonb_build_object('step', p_step.name, 'phase', 'compensation', 'error', p_error)
         WHERE s.id = p_saga.id RETURNING * INTO v_saga;
        PERFORM pgrelay._saga_event(v_saga, 'saga.failed', v_saga.error);
    END IF;
END;
$$;
