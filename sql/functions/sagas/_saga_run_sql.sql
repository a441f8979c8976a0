-- pgrelay._saga_run_sql(saga, step, phase): run a step's SQL action or compensation inside the
-- caller's transaction, in a subtransaction: its effects commit with the saga's state change or
-- not at all. Returns (ok, output, error, contention): contention when the step lost a lock race
-- (deadlock, serialization failure, lock not available), which is no fault of the step.
CREATE OR REPLACE FUNCTION pgrelay._saga_run_sql(p_saga pgrelay.sagas, p_step pgrelay.saga_steps, p_phase text,
                                                 OUT ok boolean, OUT output jsonb, OUT error text, OUT contention boolean)
LANGUAGE plpgsql
AS $$
DECLARE
    v_handler jsonb := CASE WHEN p_phase = 'action' THEN p_step.action ELSE p_step.compensation END;
    v_proc    regprocedure := to_regprocedure((v_handler ->> 'sql') || '(jsonb, jsonb)');
BEGIN
    contention := false;
    IF v_proc IS NULL THEN
        ok := false;
        error := format('function %s(jsonb, jsonb) does not exist any more', v_handler ->> 'sql');
        RETURN;
    END IF;
    BEGIN
        output := pgrelay._saga_call(v_proc, p_saga.input,
                                     p_saga.context || jsonb_build_object('saga_id', p_saga.id, 'step', p_step.name,
                                                                          'phase', p_phase, 'attempt', p_step.attempts,
                                                                          'idempotency_key', p_saga.id || ':' || p_step.name || ':' || p_phase));
        ok := true;
    EXCEPTION WHEN OTHERS THEN
        ok := false;
        error := format('%s (SQLSTATE %s)', SQLERRM, SQLSTATE);
        contention := SQLSTATE IN ('40P01', '40001', '55P03');
    END;
END;
$$;
