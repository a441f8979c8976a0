-- pgrelay.saga_tick(max_sagas): progress up to max_sagas sagas that have something due: SQL
-- steps and compensations whose backoff passed, worker leases that expired (timeouts), and
-- passed deadlines. Needs no TypeScript worker alive. Returns how many sagas it advanced. The
-- daemon calls it; without the daemon, schedule CALL pgrelay.saga_drive() (e.g. with pg_cron).
-- A step that waits more than lock_timeout for a row another transaction holds (often another
-- tick, whose locks last until it commits) gives up and runs again shortly (_saga_step_contended)
-- instead of waiting, or waiting for deadlock detection.
CREATE OR REPLACE FUNCTION pgrelay.saga_tick(max_sagas integer DEFAULT 100)
RETURNS integer
LANGUAGE plpgsql
SET lock_timeout = '200ms'
AS $$
#variable_conflict use_column
DECLARE
    v_id    uuid;
    v_count integer := 0;
    v_now   timestamptz := clock_timestamp();  -- a value, not a volatile call, so it bounds the index scans
BEGIN
    IF saga_tick.max_sagas IS NULL OR saga_tick.max_sagas NOT BETWEEN 1 AND 100000 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.saga_tick', 'max_sagas', 'must be between 1 and 100000');
    END IF;
    FOR v_id IN
        SELECT s.id FROM pgrelay.sagas s
        WHERE s.id IN (
            SELECT st.saga_id FROM pgrelay.saga_steps st
            WHERE st.next_attempt_at <= v_now
              AND ((st.status = 'ready' AND st.action ? 'sql') OR (st.status = 'compensation_ready' AND st.compensation ? 'sql'))
            UNION
            SELECT st.saga_id FROM pgrelay.saga_steps st
            WHERE st.status IN ('leased', 'compensation_leased') AND st.lease_expires_at <= v_now
            UNION
            SELECT d.id FROM pgrelay.sagas d
            WHERE d.status = 'running' AND d.deadline_at IS NOT NULL AND d.deadline_at <= v_now)
          AND s.status IN ('running', 'compensating')
        LIMIT saga_tick.max_sagas
        FOR UPDATE OF s SKIP LOCKED
    LOOP
        PERFORM pgrelay._saga_advance(v_id);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END;
$$;

-- CALL pgrelay.saga_drive(max_sagas, max_rounds): saga_tick in rounds, committing after each, for
-- schedulers such as pg_cron: SELECT cron.schedule('pgrelay-sagas', '5 seconds', 'CALL pgrelay.saga_drive()');
CREATE OR REPLACE PROCEDURE pgrelay.saga_drive(max_sagas integer DEFAULT 100, max_rounds integer DEFAULT 100)
LANGUAGE plpgsql
AS $$
DECLARE
    v_round integer := 0;
BEGIN
    LOOP
        v_round := v_round + 1;
        EXIT WHEN pgrelay.saga_tick(max_sagas) = 0 OR v_round >= max_rounds;
        COMMIT;
    END LOOP;
END;
$$;
