-- pgrelay.saga_start(saga_type, input, idempotency_key): start a saga of the latest definition
-- version and return its id. The same idempotency_key (per saga type) returns the same saga.
-- Due SQL steps run right away in this transaction; worker steps wait for saga_lease.
CREATE OR REPLACE FUNCTION pgrelay.saga_start(saga_type text, input jsonb, idempotency_key text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn   constant text := 'pgrelay.saga_start';
    v_def  pgrelay.saga_definitions;
    v_id   uuid;
    v_saga pgrelay.sagas;
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

    INSERT INTO pgrelay.saga_steps (saga_id, step_index, name, action, compensation, max_attempts, timeout_seconds, backoff)
    SELECT v_saga.id, n - 1, st ->> 'name', st -> 'action', nullif(st -> 'compensation', 'null'),
           coalesce((st ->> 'max_attempts')::integer, 3), coalesce((st ->> 'timeout')::numeric, 30),
           pgrelay._check_backoff(v_fn, st -> 'backoff')
    FROM jsonb_array_elements(v_def.definition -> 'steps') WITH ORDINALITY AS t(st, n);

    PERFORM pgrelay._saga_event(v_saga, 'saga.started', jsonb_build_object('input', saga_start.input, 'version', v_def.version));
    PERFORM pgrelay._saga_advance(v_saga.id);
    RETURN v_saga.id;
END;
$$;
