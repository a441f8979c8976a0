-- pgrelay._int_option(fn, options, name, default, min, max): an integer option, validated.
CREATE OR REPLACE FUNCTION pgrelay._int_option(
    p_function text, p_options jsonb, p_name text, p_default numeric, p_min numeric, p_max numeric)
RETURNS numeric
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_value jsonb := p_options -> p_name;
BEGIN
    IF v_value IS NULL OR v_value = 'null' THEN
        RETURN p_default;
    END IF;
    IF jsonb_typeof(v_value) <> 'number' OR (v_value #>> '{}')::numeric NOT BETWEEN p_min AND p_max THEN
        PERFORM pgrelay._raise('PR001', p_function, 'options',
            format('"%s" must be a number between %s and %s, got %s', p_name, p_min, p_max, v_value));
    END IF;
    RETURN (v_value #>> '{}')::numeric;
END;
$$;

-- pgrelay._whole_option(fn, options, name, default, min, max): the same for options that count
-- things (partitions, max_attempts, batch_size): a fraction like 2.5 is rejected, not rounded.
CREATE OR REPLACE FUNCTION pgrelay._whole_option(
    p_function text, p_options jsonb, p_name text, p_default integer, p_min integer, p_max integer)
RETURNS integer
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_value numeric := pgrelay._int_option(p_function, p_options, p_name, p_default, p_min, p_max);
BEGIN
    IF v_value <> trunc(v_value) THEN
        PERFORM pgrelay._raise('PR001', p_function, 'options',
            format('"%s" must be a whole number between %s and %s, got %s', p_name, p_min, p_max, p_options -> p_name));
    END IF;
    RETURN v_value::integer;
END;
$$;
