-- pgrelay._saga_check_handler(fn, path, handler): an action or compensation is
-- {"sql": "schema.function"} - a function (input jsonb, context jsonb) RETURNS jsonb - or
-- {"worker": "queue-name"}.
CREATE OR REPLACE FUNCTION pgrelay._saga_check_handler(p_function text, p_path text, p_handler jsonb)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_proc regprocedure;
BEGIN
    IF jsonb_typeof(p_handler) <> 'object' OR (SELECT count(*) FROM jsonb_object_keys(p_handler)) <> 1
       OR NOT (p_handler ? 'sql' OR p_handler ? 'worker') THEN
        PERFORM pgrelay._raise('PR001', p_function, 'definition',
            format('%s must be {"sql": "schema.function"} or {"worker": "queue"}', p_path));
    END IF;
    IF p_handler ? 'worker' THEN
        IF jsonb_typeof(p_handler -> 'worker') <> 'string' OR (p_handler ->> 'worker') !~ '^[A-Za-z0-9._-]{1,200}$' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'definition',
                format('%s.worker must be a queue name of 1-200 characters of [A-Za-z0-9._-]', p_path));
        END IF;
        RETURN;
    END IF;
    IF jsonb_typeof(p_handler -> 'sql') <> 'string' THEN
        PERFORM pgrelay._raise('PR001', p_function, 'definition', format('%s.sql must be a function name', p_path));
    END IF;
    BEGIN
        v_proc := to_regprocedure((p_handler ->> 'sql') || '(jsonb, jsonb)');
    EXCEPTION WHEN OTHERS THEN
        v_proc := NULL;
    END;
    IF v_proc IS NULL OR (SELECT p.prorettype FROM pg_proc p WHERE p.oid = v_proc) <> 'jsonb'::regtype THEN
        PERFORM pgrelay._raise('PR001', p_function, 'definition',
            format('%s.sql names no function %s(input jsonb, context jsonb) RETURNS jsonb', p_path, p_handler ->> 'sql'));
    END IF;
END;
$$;

-- pgrelay._saga_number(value): a JSON number as numeric, NULL for anything else (no cast errors).
CREATE OR REPLACE FUNCTION pgrelay._saga_number(p_value jsonb)
RETURNS numeric
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT CASE WHEN jsonb_typeof(p_value) = 'number' THEN (p_value #>> '{}')::numeric END
$$;

-- pgrelay._saga_compile(fn, definition): a checked definition's steps as saga_steps will hold them
-- (defaults filled in, backoff normalised). saga_define stores it per version (saga_definitions.steps)
-- so that saga_start does not parse the definition again for every saga.
CREATE OR REPLACE FUNCTION pgrelay._saga_compile(p_function text, p_definition jsonb)
RETURNS pgrelay.saga_step_spec[]
LANGUAGE sql
AS $$
    SELECT array_agg(ROW(st ->> 'name', st -> 'action', nullif(st -> 'compensation', 'null'),
                         coalesce((st ->> 'max_attempts')::integer, 3), coalesce((st ->> 'timeout')::numeric, 30),
                         pgrelay._check_backoff(p_function, st -> 'backoff'))::pgrelay.saga_step_spec ORDER BY n)
    FROM jsonb_array_elements(p_definition -> 'steps') WITH ORDINALITY AS t(st, n)
$$;

-- pgrelay.saga_define(saga_type, definition): register a saga type, or a new version of it when
-- the definition changed (running sagas keep the version they started with). definition:
--   {"steps": [{"name", "action", "compensation"?, "max_attempts"? (default 3),
--               "timeout"? (seconds a worker may hold a step, default 30), "backoff"?}, ...],
--    "deadline"? (seconds from start; past it the saga compensates)}
-- Returns the version in force.
CREATE OR REPLACE FUNCTION pgrelay.saga_define(saga_type text, definition jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn      constant text := 'pgrelay.saga_define';
    v_step    jsonb;
    v_index   integer := 0;
    v_names   text[] := '{}';
    v_key     text;
    v_latest  pgrelay.saga_definitions;
    v_def     jsonb;
    v_number  numeric;
    v_version integer;
BEGIN
    IF saga_define.saga_type IS NULL OR saga_define.saga_type !~ '^[A-Za-z0-9._-]{1,190}$' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'saga_type',
            format('must be 1-190 characters of [A-Za-z0-9._-], got %s', coalesce(quote_literal(saga_define.saga_type), 'NULL')));
    END IF;
    IF saga_define.definition IS NULL OR jsonb_typeof(saga_define.definition) <> 'object'
       OR jsonb_typeof(saga_define.definition -> 'steps') IS DISTINCT FROM 'array'
       OR jsonb_array_length(saga_define.definition -> 'steps') = 0 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'definition', 'must be an object with a non-empty "steps" array');
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(saga_define.definition) AS k WHERE k NOT IN ('steps', 'deadline') LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'definition', format('has an unknown field %L (known: steps, deadline)', v_key));
    END IF;
    v_number := pgrelay._saga_number(saga_define.definition -> 'deadline');
    IF saga_define.definition ? 'deadline' AND (v_number IS NULL OR v_number <= 0) THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'definition', '"deadline" must be a positive number of seconds');
    END IF;
    FOR v_step IN SELECT s FROM jsonb_array_elements(saga_define.definition -> 'steps') AS s LOOP
        IF jsonb_typeof(v_step) <> 'object' OR jsonb_typeof(v_step -> 'name') IS DISTINCT FROM 'string'
           OR (v_step ->> 'name') !~ '^[A-Za-z0-9._-]{1,100}$' THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'definition',
                format('steps[%s] must be an object with a "name" of 1-100 characters of [A-Za-z0-9._-]', v_index));
        END IF;
        IF (v_step ->> 'name') = ANY (v_names) THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'definition', format('steps[%s]: duplicate step name %L', v_index, v_step ->> 'name'));
        END IF;
        v_names := v_names || (v_step ->> 'name');
        SELECT k INTO v_key FROM jsonb_object_keys(v_step) AS k
        WHERE k NOT IN ('name', 'action', 'compensation', 'max_attempts', 'timeout', 'backoff') LIMIT 1;
        IF FOUND THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'definition',
                format('steps[%s] has an unknown field %L (known: name, action, compensation, max_attempts, timeout, backoff)', v_index, v_key));
        END IF;
        IF NOT v_step ? 'action' THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'definition', format('steps[%s] needs an "action"', v_index));
        END IF;
        PERFORM pgrelay._saga_check_handler(v_fn, format('steps[%s].action', v_index), v_step -> 'action');
        IF v_step ? 'compensation' AND v_step -> 'compensation' <> 'null' THEN
            PERFORM pgrelay._saga_check_handler(v_fn, format('steps[%s].compensation', v_index), v_step -> 'compensation');
        END IF;
        v_number := pgrelay._saga_number(v_step -> 'max_attempts');
        IF v_step ? 'max_attempts' AND (v_number IS NULL OR v_number NOT BETWEEN 1 AND 1000 OR v_number <> trunc(v_number)) THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'definition',
                format('steps[%s].max_attempts must be a whole number between 1 and 1000, got %s', v_index, v_step -> 'max_attempts'));
        END IF;
        v_number := pgrelay._saga_number(v_step -> 'timeout');
        IF v_step ? 'timeout' AND (v_number IS NULL OR v_number NOT BETWEEN 0.001 AND 86400) THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'definition',
                format('steps[%s].timeout must be a number of seconds between 0.001 and 86400, got %s', v_index, v_step -> 'timeout'));
        END IF;
        BEGIN
            PERFORM pgrelay._check_backoff(v_fn, v_step -> 'backoff');
        EXCEPTION WHEN SQLSTATE 'PR001' THEN
            -- _check_backoff names 'options' (the subscription argument); here it is part of the definition.
            PERFORM pgrelay._raise('PR001', v_fn, 'definition',
                format('steps[%s].%s', v_index, regexp_replace(SQLERRM, '^.*?argument options ', '')));
        END;
        v_index := v_index + 1;
    END LOOP;

    v_def := saga_define.definition;
    PERFORM pg_advisory_xact_lock(hashtextextended('pgrelay.saga_define:' || saga_define.saga_type, 0));
    SELECT * INTO v_latest FROM pgrelay.saga_definitions d
    WHERE d.saga_type = saga_define.saga_type ORDER BY d.version DESC LIMIT 1;
    IF FOUND AND v_latest.definition = v_def THEN
        v_version := v_latest.version;
        IF v_latest.steps IS NULL THEN  -- defined before migration 008: compile it now
            UPDATE pgrelay.saga_definitions d SET steps = pgrelay._saga_compile(v_fn, v_def)
             WHERE d.saga_type = v_latest.saga_type AND d.version = v_latest.version;
        END IF;
    ELSE
        v_version := coalesce(v_latest.version, 0) + 1;
        INSERT INTO pgrelay.saga_definitions (saga_type, version, definition, steps)
        VALUES (saga_define.saga_type, v_version, v_def, pgrelay._saga_compile(v_fn, v_def));
    END IF;
    -- SQL handlers that _saga_call cannot call statically yet (new, or created again since the
    -- last generation): generate it again, so that steps run without a dynamic EXECUTE.
    IF EXISTS (SELECT 1 FROM pgrelay._saga_sql_handlers(v_def) AS h(proc) WHERE NOT pgrelay._saga_call_knows(h.proc)) THEN
        PERFORM pgrelay._saga_generate_call();
    END IF;
    RETURN v_version;
END;
$$;
