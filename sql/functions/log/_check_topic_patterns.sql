-- pgrelay._check_topic_patterns(fn, argument, patterns): validate a list of topic patterns
-- (exact topics or prefixes ending in '*'). NULL is allowed only where the caller allows it.
CREATE OR REPLACE FUNCTION pgrelay._check_topic_patterns(p_function text, p_argument text, p_patterns text[])
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_bad text;
BEGIN
    IF p_patterns IS NULL OR cardinality(p_patterns) = 0 THEN
        PERFORM pgrelay._raise('PR001', p_function, p_argument, 'must be a non-empty array of topics or prefixes ending in *');
    END IF;
    SELECT p INTO v_bad FROM unnest(p_patterns) AS p
    WHERE p IS NULL OR p !~ '^([A-Za-z0-9._-]{1,200}|[A-Za-z0-9._-]{0,199}\*)$'
    LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', p_function, p_argument,
            format('has an invalid pattern %s: use 1-200 characters of [A-Za-z0-9._-], optionally ending in *',
                   coalesce(quote_literal(v_bad), 'NULL')));
    END IF;
END;
$$;
