-- pgrelay._saga_merge(context, step, output): a step's output merged into the saga context (an
-- object is merged key by key; anything else is stored under the step's name).
CREATE OR REPLACE FUNCTION pgrelay._saga_merge(p_context jsonb, p_step text, p_output jsonb)
RETURNS jsonb
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT CASE WHEN p_output IS NULL OR p_output = 'null' THEN p_context
                WHEN jsonb_typeof(p_output) = 'object' THEN p_context || p_output
                ELSE p_context || jsonb_build_object(p_step, p_output) END
$$;
