-- pgrelay._sync_check_expression(expression, type): parse and plan a column expression over the
-- source row image (img jsonb) as exactly one value of the target column's type, without running
-- it. RETURN QUERY EXECUTE refuses a string holding more than one statement (before running any)
-- and a result of more than one column, so an expression that tries to close the wrapper and add
-- a statement or a column fails here. The expression sits on lines of its own so that a trailing
-- "--" comment cannot swallow the wrapper.
CREATE OR REPLACE FUNCTION pgrelay._sync_check_expression(p_expression text, p_type text)
RETURNS SETOF text
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN QUERY EXECUTE format(E'SELECT ((\n%s\n)::%s)::text FROM (SELECT NULL::jsonb AS img) AS s LIMIT 0', p_expression, p_type);
END;
$$;
