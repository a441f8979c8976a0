-- pgrelay._subscription(fn, name): the subscription row, or PR003 naming the argument.
CREATE OR REPLACE FUNCTION pgrelay._subscription(p_function text, p_name text)
RETURNS pgrelay.subscriptions
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_row pgrelay.subscriptions;
BEGIN
    PERFORM pgrelay._check_name(p_function, 'subscription', p_name);
    SELECT * INTO v_row FROM pgrelay.subscriptions s WHERE s.name = p_name;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', p_function, 'subscription', format('names no subscription: %L', p_name));
    END IF;
    RETURN v_row;
END;
$$;
