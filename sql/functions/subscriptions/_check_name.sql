-- pgrelay._check_name(fn, argument, value): validate an object name (subscription, consumer,
-- saga type, ...): 1-200 characters of [A-Za-z0-9._-].
CREATE OR REPLACE FUNCTION pgrelay._check_name(p_function text, p_argument text, p_value text)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    IF p_value IS NULL OR p_value !~ '^[A-Za-z0-9._-]{1,200}$' THEN
        PERFORM pgrelay._raise('PR001', p_function, p_argument,
            format('must be 1-200 characters of [A-Za-z0-9._-], got %s', coalesce(quote_literal(left(p_value, 220)), 'NULL')));
    END IF;
END;
$$;
