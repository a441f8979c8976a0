-- pgrelay.saga_status(saga_id): the saga as JSON: {"id", "saga_type", "version", "status",
-- "compensation_reason", "input", "context", "error", "created_at", "updated_at", "steps": [{"name",
-- "status", "attempts", "last_error", "output", "kind", "compensation_kind", ...}]}. PR003 if unknown.
CREATE OR REPLACE FUNCTION pgrelay.saga_status(saga_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_result jsonb;
BEGIN
    SELECT jsonb_build_object(
               'id', s.id, 'saga_type', s.saga_type, 'version', s.version, 'status', s.status,
               'compensation_reason', s.compensation_reason, 'input', s.input, 'context', s.context, 'error', s.error,
               'idempotency_key', s.idempotency_key, 'deadline_at', s.deadline_at,
               'created_at', s.created_at, 'updated_at', s.updated_at,
               'steps', (SELECT jsonb_agg(jsonb_build_object(
                                 'name', st.name, 'status', st.status, 'attempts', st.attempts, 'max_attempts', st.max_attempts,
                                 'last_error', st.last_error, 'output', st.output, 'timed_out', st.timed_out,
                                 'kind', CASE WHEN st.action ? 'sql' THEN 'sql' ELSE 'worker' END,
                                 'compensation_kind', CASE WHEN st.compensation IS NULL THEN NULL
                                                           WHEN st.compensation ? 'sql' THEN 'sql' ELSE 'worker' END,
                                 'next_attempt_at', st.next_attempt_at, 'lease_owner', st.lease_owner,
                                 'lease_expires_at', st.lease_expires_at, 'started_at', st.started_at,
                                 'finished_at', st.finished_at) ORDER BY st.step_index)
                         FROM pgrelay.saga_steps st WHERE st.saga_id = s.id))
      INTO v_result
      FROM pgrelay.sagas s WHERE s.id = saga_status.saga_id;
    IF v_result IS NULL THEN
        PERFORM pgrelay._raise('PR003', 'pgrelay.saga_status', 'saga_id', format('names no saga: %s', coalesce(saga_status.saga_id::text, 'NULL')));
    END IF;
    RETURN v_result;
END;
$$;
