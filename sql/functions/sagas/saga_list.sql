-- pgrelay.saga_list(with_status, of_type, max_rows): sagas for people and dashboards, most recently
-- changed first, filtered by status and/or type, with the step they are at (the first step not
-- done going forward, the last one not undone while compensating) and its last error.
CREATE OR REPLACE FUNCTION pgrelay.saga_list(with_status text DEFAULT NULL, of_type text DEFAULT NULL, max_rows integer DEFAULT 100)
RETURNS TABLE (id uuid, saga_type text, version integer, status text, compensation_reason text, current_step text,
               step_status text, attempts integer, last_error text, error jsonb, created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql
STABLE
AS $$
#variable_conflict use_column
DECLARE
    v_fn constant text := 'pgrelay.saga_list';
BEGIN
    IF saga_list.with_status IS NOT NULL
       AND saga_list.with_status NOT IN ('running', 'completed', 'compensating', 'compensated', 'failed', 'cancelled') THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'with_status',
            format('must be one of running, completed, compensating, compensated, failed, cancelled; got %L', saga_list.with_status));
    END IF;
    IF saga_list.max_rows IS NULL OR saga_list.max_rows NOT BETWEEN 1 AND 100000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'max_rows', 'must be between 1 and 100000');
    END IF;
    RETURN QUERY
    SELECT s.id, s.saga_type, s.version, s.status::text, s.compensation_reason, cur.name, cur.status, cur.attempts, cur.last_error,
           s.error, s.created_at, s.updated_at
    FROM pgrelay.sagas s
    LEFT JOIN LATERAL (
        SELECT st.name, st.status, st.attempts, st.last_error
        FROM pgrelay.saga_steps st
        WHERE st.saga_id = s.id
          AND CASE WHEN s.status IN ('compensating', 'failed')
                   THEN st.status IN ('succeeded', 'unknown', 'compensation_ready', 'compensation_leased', 'compensation_failed')
                   ELSE st.status NOT IN ('succeeded', 'skipped') END
        ORDER BY CASE WHEN s.status IN ('compensating', 'failed') THEN -st.step_index ELSE st.step_index END
        LIMIT 1) cur ON s.status NOT IN ('completed', 'compensated', 'cancelled')
    WHERE (saga_list.with_status IS NULL OR s.status = saga_list.with_status)
      AND (saga_list.of_type IS NULL OR s.saga_type = saga_list.of_type)
    ORDER BY s.updated_at DESC, s.id
    LIMIT saga_list.max_rows;
END;
$$;
