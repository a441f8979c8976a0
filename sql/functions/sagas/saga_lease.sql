-- pgrelay.saga_lease(queue, worker, max_tasks, lease_seconds): claim due worker steps (actions or
-- compensations) of a queue, set-based with SKIP LOCKED. Each task carries its attempt number,
-- the fencing token saga_task_complete/_fail/_heartbeat check, and a stable idempotency key
-- (saga id : step : phase) to pass to remote services. The lease lasts the step's timeout unless
-- lease_seconds is given; an expired lease is a timed-out attempt.
CREATE OR REPLACE FUNCTION pgrelay.saga_lease(queue text, worker text, max_tasks integer DEFAULT 10,
                                              lease_seconds numeric DEFAULT NULL)
RETURNS SETOF pgrelay.saga_task
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn  constant text := 'pgrelay.saga_lease';
    v_now timestamptz := clock_timestamp();  -- a value, not a volatile call, so it bounds the index scan
BEGIN
    PERFORM pgrelay._check_name(v_fn, 'queue', saga_lease.queue);
    PERFORM pgrelay._check_name(v_fn, 'worker', saga_lease.worker);
    IF saga_lease.max_tasks IS NULL OR saga_lease.max_tasks NOT BETWEEN 1 AND 10000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'max_tasks', 'must be between 1 and 10000');
    END IF;
    IF saga_lease.lease_seconds IS NOT NULL AND (saga_lease.lease_seconds <= 0 OR saga_lease.lease_seconds > 86400) THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'lease_seconds', 'must be in (0, 86400]');
    END IF;
    RETURN QUERY
    WITH due AS (
        -- Walks saga_steps_worker_due_idx (queue, next_attempt_at) in order and stops at max_tasks.
        -- The saga's state is a scalar subquery on purpose: as a join, stale statistics (a burst of
        -- new sagas before autovacuum analyzes) made the planner loop over every ready step per saga.
        SELECT st.saga_id, st.step_index
        FROM pgrelay.saga_steps st
        WHERE st.status IN ('ready', 'compensation_ready')
          AND st.next_attempt_at <= v_now
          AND CASE WHEN st.status = 'ready' THEN st.action ->> 'worker' ELSE st.compensation ->> 'worker' END = saga_lease.queue
          AND (SELECT CASE WHEN st.status = 'ready'
                           THEN s.status = 'running' AND (s.deadline_at IS NULL OR s.deadline_at > clock_timestamp())
                           ELSE s.status = 'compensating' END
               FROM pgrelay.sagas s WHERE s.id = st.saga_id)
        ORDER BY st.next_attempt_at
        LIMIT saga_lease.max_tasks
        FOR UPDATE OF st SKIP LOCKED
    ), leased AS (
        UPDATE pgrelay.saga_steps st
           SET status = CASE WHEN st.status = 'ready' THEN 'leased' ELSE 'compensation_leased' END,
               attempts = st.attempts + 1,
               lease_owner = saga_lease.worker,
               lease_expires_at = clock_timestamp() + make_interval(secs => coalesce(saga_lease.lease_seconds, st.timeout_seconds)::double precision)
          FROM due
         WHERE st.saga_id = due.saga_id AND st.step_index = due.step_index
        RETURNING st.*
    )
    SELECT l.saga_id, s.saga_type, l.name, l.step_index,
           CASE WHEN l.status = 'leased' THEN 'action' ELSE 'compensation' END,
           saga_lease.queue, l.attempts,
           l.saga_id || ':' || l.name || ':' || CASE WHEN l.status = 'leased' THEN 'action' ELSE 'compensation' END,
           s.input, s.context, l.lease_expires_at
    FROM leased l JOIN pgrelay.sagas s ON s.id = l.saga_id;
END;
$$;
