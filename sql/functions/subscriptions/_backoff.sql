-- pgrelay._check_backoff(fn, backoff) / pgrelay._next_attempt_at(backoff, attempts):
-- exponential backoff with a cap and jitter. backoff = {"initial_ms", "max_ms", "multiplier", "jitter"}.
CREATE OR REPLACE FUNCTION pgrelay._check_backoff(p_function text, p_backoff jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_key text;
    v_result jsonb;
BEGIN
    IF p_backoff IS NULL OR p_backoff = 'null' THEN
        p_backoff := '{}';
    END IF;
    IF jsonb_typeof(p_backoff) <> 'object' THEN
        PERFORM pgrelay._raise('PR001', p_function, 'options', '"backoff" must be an object {initial_ms, max_ms, multiplier, jitter}');
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(p_backoff) AS k
    WHERE k NOT IN ('initial_ms', 'max_ms', 'multiplier', 'jitter') LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', p_function, 'options', format('"backoff" has an unknown field %L', v_key));
    END IF;
    v_result := jsonb_build_object(
        'initial_ms', pgrelay._int_option(p_function, p_backoff, 'initial_ms', 1000, 0, 86400000),
        'max_ms', pgrelay._int_option(p_function, p_backoff, 'max_ms', 300000, 0, 604800000),
        'multiplier', pgrelay._int_option(p_function, p_backoff, 'multiplier', 2, 1, 100),
        'jitter', pgrelay._int_option(p_function, p_backoff, 'jitter', 0.2, 0, 1));
    IF (v_result ->> 'max_ms')::numeric < (v_result ->> 'initial_ms')::numeric THEN
        PERFORM pgrelay._raise('PR001', p_function, 'options', '"backoff".max_ms must be >= initial_ms');
    END IF;
    RETURN v_result;
END;
$$;

CREATE OR REPLACE FUNCTION pgrelay._next_attempt_at(p_backoff jsonb, p_attempts integer)
RETURNS timestamptz
LANGUAGE sql
VOLATILE
AS $$
    SELECT clock_timestamp() + make_interval(secs =>
        least((p_backoff ->> 'max_ms')::numeric,
              (p_backoff ->> 'initial_ms')::numeric * power((p_backoff ->> 'multiplier')::numeric, greatest(p_attempts - 1, 0)))
        * (1 + (p_backoff ->> 'jitter')::numeric * (2 * random() - 1)) / 1000.0)
$$;
