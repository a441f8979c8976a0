-- pgrelay.saga_start(saga_type, input, idempotency_key): start a saga of the latest definition
-- version and return its id. The same idempotency_key (per saga type) returns the same saga.
-- Due SQL steps run right away in this transaction; worker steps wait for saga_lease.
--
-- The leading run of SQL steps runs inline here, before the step rows are written: each step in
-- its own subtransaction (_saga_run_sql) with the context merged so far, and then the step rows
-- are inserted once in the state they reached, the saga row updated once, and the lifecycle
-- events (saga.started, saga.step_succeeded per step, saga.completed) appended in one statement
-- (_publish_many), in the order they happened. The first step that is not a SQL step, fails, or
-- loses a lock race, or a passed deadline, hands the saga to _saga_advance, exactly where
-- _saga_advance would have been after running the same steps one by one. While a step runs, the
-- saga row exists ('running') but its step rows do not yet.
CREATE OR REPLACE FUNCTION pgrelay.saga_start(saga_type text, input jsonb, idempotency_key text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn      constant text := 'pgrelay.saga_start';
    v_def     pgrelay.saga_definitions;
    v_specs   pgrelay.saga_step_spec[];
    v_spec    pgrelay.saga_step_spec;
    v_id      uuid;
    v_saga    pgrelay.sagas;
    v_step    pgrelay.saga_steps;
    v_run     record;
    v_count   integer;
    v_done    integer := 0;      -- steps that succeeded inline
    v_failed  boolean := false;  -- step v_done + 1 ran and did not succeed (v_run says how)
    v_outputs jsonb[] := '{}';
    v_types   text[];
    v_data    jsonb[];
    v_base    jsonb;
BEGIN
    IF saga_start.saga_type IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'saga_type', 'must not be null');
    END IF;
    IF saga_start.input IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'input', 'must not be SQL NULL (use ''{}'')');
    END IF;
    IF saga_start.idempotency_key IS NOT NULL AND length(saga_start.idempotency_key) NOT BETWEEN 1 AND 255 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'idempotency_key', 'must be 1-255 characters');
    END IF;
    SELECT * INTO v_def FROM pgrelay.saga_definitions d
    WHERE d.saga_type = saga_start.saga_type ORDER BY d.version DESC LIMIT 1;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', v_fn, 'saga_type', format('names no defined saga type: %L (saga_define it first)', saga_start.saga_type));
    END IF;
    IF pg_column_size(saga_start.input) > pgrelay._max_payload_bytes() THEN
        PERFORM pgrelay._raise('PR002', v_fn, 'input', format('is too large: %s bytes, the limit is %s', pg_column_size(saga_start.input), pgrelay._max_payload_bytes()));
    END IF;

    INSERT INTO pgrelay.sagas AS s (id, saga_type, version, status, input, idempotency_key, deadline_at)
    VALUES (gen_random_uuid(), v_def.saga_type, v_def.version, 'running', saga_start.input, saga_start.idempotency_key,
            CASE WHEN v_def.definition ? 'deadline'
                 THEN clock_timestamp() + make_interval(secs => (v_def.definition ->> 'deadline')::double precision) END)
    ON CONFLICT (saga_type, idempotency_key) DO NOTHING
    RETURNING * INTO v_saga;
    IF v_saga.id IS NULL THEN
        SELECT s.id INTO v_id FROM pgrelay.sagas s
        WHERE s.saga_type = saga_start.saga_type AND s.idempotency_key = saga_start.idempotency_key;
        RETURN v_id;
    END IF;

    v_specs := coalesce(v_def.steps, pgrelay._saga_compile(v_fn, v_def.definition));
    v_count := cardinality(v_specs);
    v_base := jsonb_build_object('saga_id', v_saga.id, 'saga_type', v_saga.saga_type);
    v_types := ARRAY['saga.started'];
    v_data := ARRAY[v_base || jsonb_build_object('input', saga_start.input, 'version', v_def.version)];

    -- The step record _saga_run_sql (and, on a failure, _saga_step_failed) sees: claimed, attempt 1.
    v_step.saga_id := v_saga.id;
    v_step.status := 'ready';
    v_step.attempts := 1;
    v_step.timed_out := false;
    WHILE v_done < v_count LOOP
        v_spec := v_specs[v_done + 1];
        EXIT WHEN NOT (v_spec.action ? 'sql');
        EXIT WHEN v_saga.deadline_at IS NOT NULL AND v_saga.deadline_at <= clock_timestamp();
        v_step.step_index := v_done;
        v_step.name := v_spec.name;
        v_step.action := v_spec.action;
        v_step.compensation := v_spec.compensation;
        v_step.max_attempts := v_spec.max_attempts;
        v_step.timeout_seconds := v_spec.timeout_seconds;
        v_step.backoff := v_spec.backoff;
        v_step.next_attempt_at := clock_timestamp();
        v_step.started_at := now();
        v_run := pgrelay._saga_run_sql(v_saga, v_step, 'action');
        IF NOT v_run.ok THEN
            v_failed := true;
            EXIT;
        END IF;
        v_done := v_done + 1;
        v_outputs[v_done] := v_run.output;
        IF v_run.output IS NOT NULL AND v_run.output NOT IN ('null', '{}') THEN  -- as _saga_step_succeeded
            v_saga.context := pgrelay._saga_merge(v_saga.context, v_spec.name, v_run.output);
        END IF;
        v_types := v_types || 'saga.step_succeeded'::text;
        v_data := v_data || (v_base || jsonb_build_object('step', v_spec.name, 'attempt', 1));
    END LOOP;

    INSERT INTO pgrelay.saga_steps (saga_id, step_index, name, action, compensation, max_attempts, timeout_seconds, backoff,
                                    status, attempts, next_attempt_at, output, started_at, finished_at)
    SELECT v_saga.id, n - 1, sp.name, sp.action, sp.compensation, sp.max_attempts, sp.timeout_seconds, sp.backoff,
           CASE WHEN n <= v_done THEN 'succeeded' WHEN n = v_done + 1 AND v_failed THEN 'ready' ELSE 'pending' END,
           CASE WHEN n <= v_done OR (n = v_done + 1 AND v_failed) THEN 1 ELSE 0 END,
           CASE WHEN n <= v_done OR (n = v_done + 1 AND v_failed) THEN clock_timestamp() END,
           v_outputs[n],
           CASE WHEN n <= v_done OR (n = v_done + 1 AND v_failed) THEN now() END,
           CASE WHEN n <= v_done THEN now() END
    FROM unnest(v_specs) WITH ORDINALITY AS sp(name, action, compensation, max_attempts, timeout_seconds, backoff, n);

    IF v_done = v_count THEN
        UPDATE pgrelay.sagas s SET status = 'completed', context = v_saga.context, updated_at = now()
         WHERE s.id = v_saga.id;
        v_types := v_types || 'saga.completed'::text;
        v_data := v_data || (v_base || jsonb_build_object('context', v_saga.context));
        PERFORM pgrelay._publish_many(v_fn, 'saga.' || v_saga.saga_type, v_saga.id::text, v_types, v_data);
        RETURN v_saga.id;
    END IF;
    IF v_done > 0 AND v_saga.context <> '{}' THEN
        UPDATE pgrelay.sagas s SET context = v_saga.context, updated_at = now() WHERE s.id = v_saga.id;
    END IF;
    PERFORM pgrelay._publish_many(v_fn, 'saga.' || v_saga.saga_type, v_saga.id::text, v_types, v_data);
    IF v_failed THEN
        -- What _saga_advance does with a SQL step that did not succeed.
        IF v_run.contention THEN
            PERFORM pgrelay._saga_step_contended(v_saga, v_step, v_run.error);
            RETURN v_saga.id;
        END IF;
        PERFORM pgrelay._saga_step_failed(v_saga, v_step, v_run.error, true, false);
    END IF;
    PERFORM pgrelay._saga_advance(v_saga.id);
    RETURN v_saga.id;
END;
$$;
