-- pgrelay.saga_start(saga_type, input, idempotency_key): start a saga of the latest definition
-- version and return its id. The same idempotency_key (per saga type) returns the same saga.
-- Due SQL steps run right away in this transaction; worker steps wait for saga_lease.
--
-- The leading run of SQL steps runs inline here, before the step rows are written: each step in
-- its own subtransaction with the context merged so far (what _saga_run_sql does, written out
-- here to spare a function call per step; the step's function called through _saga_call), and then the step rows are inserted once in the state
-- they reached, the saga row written once in its state, and the lifecycle events (saga.started,
-- saga.step_succeeded per step, saga.completed) appended in one statement, in the order they
-- happened. The first step that is not a SQL step, fails, or loses a lock race, or a passed
-- deadline, hands the saga to _saga_advance, exactly where _saga_advance would have been after
-- running the same steps one by one.
--
-- The saga row: with an idempotency key it is inserted first ('running'), since the key's unique
-- index is what makes one of two concurrent starts the winner and the other wait and return the
-- winner's id; it is updated once at the end. Without a key nothing can conflict, so it is
-- inserted once, after the inline steps, in the state they reached (a 'completed' saga never has a
-- 'running' row version: one heap update and its index entries fewer). While an inline step runs,
-- its step rows do not exist yet, nor (without a key) the saga row.
--
-- The events: topic 'saga.<type>' and key (the saga id) are valid by construction (saga_define
-- checks the type), and so is every type; only the payload size can be wrong (the input in
-- saga.started, the context in saga.completed), and then _publish_many raises what publish would.
CREATE OR REPLACE FUNCTION pgrelay.saga_start(saga_type text, input jsonb, idempotency_key text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn       constant text := 'pgrelay.saga_start';
    v_def      pgrelay.saga_definitions;
    v_specs    pgrelay.saga_step_spec[];
    v_spec     pgrelay.saga_step_spec;
    v_id       uuid;
    v_saga     pgrelay.sagas;
    v_step     pgrelay.saga_steps;
    v_keyed    boolean := saga_start.idempotency_key IS NOT NULL;
    v_count    integer;
    v_done     integer := 0;      -- steps that succeeded inline
    v_failed   boolean := false;  -- step v_done + 1 ran and did not succeed (v_error says how)
    v_error    text;
    v_contended boolean := false;
    v_proc     regprocedure;
    v_output   jsonb;
    v_outputs  jsonb[] := '{}';
    v_types    text[];
    v_data     jsonb[];
    v_base     jsonb;
    v_topic    text;
    v_key      text;
    v_next_xid xid8;
    v_positions bigint[] := '{}';
    v_random   bytea;
    v_xid      xid8;
    v_now      timestamptz;
    v_context  jsonb;          -- what every step's context adds that is the same for all steps
    v_succeeded jsonb;         -- saga.step_succeeded's data but the step name
    v_limit    integer;
BEGIN
    IF saga_start.saga_type IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'saga_type', 'must not be null');
    END IF;
    IF saga_start.input IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'input', 'must not be SQL NULL (use ''{}'')');
    END IF;
    IF v_keyed AND length(saga_start.idempotency_key) NOT BETWEEN 1 AND 255 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'idempotency_key', 'must be 1-255 characters');
    END IF;
    SELECT * INTO v_def FROM pgrelay.saga_definitions d
    WHERE d.saga_type = saga_start.saga_type ORDER BY d.version DESC LIMIT 1;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', v_fn, 'saga_type', format('names no defined saga type: %L (saga_define it first)', saga_start.saga_type));
    END IF;
    v_limit := pgrelay._max_payload_bytes();
    IF pg_column_size(saga_start.input) > v_limit THEN
        PERFORM pgrelay._raise('PR002', v_fn, 'input', format('is too large: %s bytes, the limit is %s', pg_column_size(saga_start.input), v_limit));
    END IF;

    IF v_keyed THEN
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
    ELSE
        -- The row as the INSERT below will write it (created_at and updated_at are now()).
        v_saga.id := gen_random_uuid();
        v_saga.saga_type := v_def.saga_type;
        v_saga.version := v_def.version;
        v_saga.status := 'running';
        v_saga.input := saga_start.input;
        v_saga.context := '{}';
        IF v_def.definition ? 'deadline' THEN
            v_saga.deadline_at := clock_timestamp() + make_interval(secs => (v_def.definition ->> 'deadline')::double precision);
        END IF;
    END IF;

    v_specs := coalesce(v_def.steps, pgrelay._saga_compile(v_fn, v_def.definition));
    v_count := cardinality(v_specs);
    v_base := jsonb_build_object('saga_id', v_saga.id, 'saga_type', v_saga.saga_type);
    v_types := ARRAY['saga.started'];
    v_data := ARRAY[v_base || jsonb_build_object('input', saga_start.input, 'version', v_def.version)];
    -- Built once: jsonb_build_object looks up every argument's type, per call.
    v_context := jsonb_build_object('saga_id', v_saga.id, 'phase', 'action', 'attempt', 1);
    v_succeeded := v_base || '{"attempt": 1}';

    WHILE v_done < v_count LOOP
        v_spec := v_specs[v_done + 1];
        EXIT WHEN NOT (v_spec.action ? 'sql');
        EXIT WHEN v_saga.deadline_at IS NOT NULL AND v_saga.deadline_at <= clock_timestamp();
        -- As _saga_run_sql: the step's function in a subtransaction, attempt 1.
        v_proc := to_regprocedure((v_spec.action ->> 'sql') || '(jsonb, jsonb)');
        IF v_proc IS NULL THEN
            v_failed := true;
            v_error := format('function %s(jsonb, jsonb) does not exist any more', v_spec.action ->> 'sql');
            EXIT;
        END IF;
        BEGIN
            v_output := pgrelay._saga_call(v_proc, v_saga.input,
                                           v_saga.context || v_context
                                           || jsonb_build_object('step', v_spec.name, 'idempotency_key', v_saga.id || ':' || v_spec.name || ':action'));
        EXCEPTION WHEN OTHERS THEN
            v_failed := true;
            v_error := format('%s (SQLSTATE %s)', SQLERRM, SQLSTATE);
            v_contended := SQLSTATE IN ('40P01', '40001', '55P03');
        END;
        EXIT WHEN v_failed;
        v_done := v_done + 1;
        v_outputs[v_done] := v_output;
        IF v_output IS NOT NULL AND v_output NOT IN ('null', '{}') THEN  -- as _saga_step_succeeded
            v_saga.context := pgrelay._saga_merge(v_saga.context, v_spec.name, v_output);
        END IF;
        v_types := v_types || 'saga.step_succeeded'::text;
        v_data := v_data || (v_succeeded || jsonb_build_object('step', v_spec.name));
    END LOOP;
    IF v_done = v_count THEN
        v_saga.status := 'completed';
        v_types := v_types || 'saga.completed'::text;
        v_data := v_data || (v_base || jsonb_build_object('context', v_saga.context));
    END IF;

    IF NOT v_keyed THEN
        INSERT INTO pgrelay.sagas (id, saga_type, version, status, input, context, deadline_at)
        VALUES (v_saga.id, v_saga.saga_type, v_saga.version, v_saga.status, v_saga.input, v_saga.context, v_saga.deadline_at)
        RETURNING * INTO v_saga;
    ELSIF v_done = v_count THEN
        UPDATE pgrelay.sagas s SET status = 'completed', context = v_saga.context, updated_at = now()
         WHERE s.id = v_saga.id;
    ELSIF v_done > 0 AND v_saga.context <> '{}' THEN
        UPDATE pgrelay.sagas s SET context = v_saga.context, updated_at = now() WHERE s.id = v_saga.id;
    END IF;

    -- clock_timestamp() read once, not per row: a volatile call in the SELECT would make the planner
    -- keep it as a subquery, which costs more to set up than the insert of the rows.
    v_now := clock_timestamp();
    INSERT INTO pgrelay.saga_steps (saga_id, step_index, name, action, compensation, max_attempts, timeout_seconds, backoff,
                                    status, attempts, next_attempt_at, output, started_at, finished_at)
    SELECT v_saga.id, n - 1, sp.name, sp.action, sp.compensation, sp.max_attempts, sp.timeout_seconds, sp.backoff,
           CASE WHEN n <= v_done THEN 'succeeded' WHEN n = v_done + 1 AND v_failed THEN 'ready' ELSE 'pending' END,
           CASE WHEN n <= v_done OR (n = v_done + 1 AND v_failed) THEN 1 ELSE 0 END,
           CASE WHEN n <= v_done OR (n = v_done + 1 AND v_failed) THEN v_now END,
           v_outputs[n],
           CASE WHEN n <= v_done OR (n = v_done + 1 AND v_failed) THEN now() END,
           CASE WHEN n <= v_done THEN now() END
    FROM unnest(v_specs) WITH ORDINALITY AS sp(name, action, compensation, max_attempts, timeout_seconds, backoff, n);

    -- The events, as _publish_many appends them (positions in order, next_xid taken once after the
    -- saga row is written, ids from positions, the doorbell rung once).
    v_topic := 'saga.' || v_saga.saga_type;
    v_key := v_saga.id::text;
    v_limit := v_limit - pg_column_size('{}'::jsonb);
    IF pg_column_size(v_data[1]) > v_limit OR (v_done = v_count AND pg_column_size(v_data[v_count + 2]) > v_limit) THEN
        PERFORM pgrelay._publish_many(v_fn, v_topic, v_key, v_types, v_data);  -- raises PR002
    END IF;
    -- Positions (in event order) and the random part of the ids are drawn here, so that no
    -- volatile function is left in the INSERT's SELECT: then it is a plain scan of the arrays,
    -- where otherwise the planner keeps it a subquery (and _publish_many's ORDER BY adds a sort),
    -- whose setup costs more than the rest of the statement.
    -- Ids as _message_id makes them (version 8: 60 random bits, the variant, the position), the
    -- random bits drawn once for the saga's events: the position keeps each id unique.
    FOR i IN 1 .. cardinality(v_types) LOOP
        v_positions[i] := nextval('pgrelay.message_position_seq');
    END LOOP;
    v_random := int8send((floor(random() * 281474976710656)::int8 << 16) | 32768 | floor(random() * 4096)::int8);
    v_xid := pg_current_xact_id();
    v_next_xid := pgrelay._next_xid();
    INSERT INTO pgrelay.messages (position, xid, next_xid, id, topic, key, type, data, metadata)
    SELECT m.position, v_xid, v_next_xid,
           encode(v_random || int8send((m.position & 4611686018427387903) | (-9223372036854775808)::int8), 'hex')::uuid,
           v_topic, v_key, m.type, m.data, '{}'
    FROM unnest(v_positions, v_types, v_data) AS m(position, type, data);
    IF (SELECT d.armed FROM pgrelay.doorbell d) THEN
        PERFORM pgrelay._ring_doorbell(v_topic);
    END IF;

    IF v_failed THEN
        -- What _saga_advance does with a SQL step that did not succeed: the step record as it
        -- would have it (claimed, attempt 1).
        v_spec := v_specs[v_done + 1];
        v_step.saga_id := v_saga.id;
        v_step.step_index := v_done;
        v_step.name := v_spec.name;
        v_step.action := v_spec.action;
        v_step.compensation := v_spec.compensation;
        v_step.max_attempts := v_spec.max_attempts;
        v_step.timeout_seconds := v_spec.timeout_seconds;
        v_step.backoff := v_spec.backoff;
        v_step.status := 'ready';
        v_step.attempts := 1;
        v_step.timed_out := false;
        IF v_contended THEN
            PERFORM pgrelay._saga_step_contended(v_saga, v_step, v_error);
            RETURN v_saga.id;
        END IF;
        PERFORM pgrelay._saga_step_failed(v_saga, v_step, v_error, true, false);
    END IF;
    IF v_done < v_count THEN
        PERFORM pgrelay._saga_advance(v_saga.id);
    END IF;
    RETURN v_saga.id;
END;
$$;
