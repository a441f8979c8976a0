-- pgrelay.unsubscribe(name): remove a subscription with its cursors, retries and dead letters.
CREATE OR REPLACE FUNCTION pgrelay.unsubscribe(name text)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    PERFORM pgrelay._check_name('pgrelay.unsubscribe', 'name', unsubscribe.name);
    DELETE FROM pgrelay.subscriptions s WHERE s.name = unsubscribe.name;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', 'pgrelay.unsubscribe', 'name', format('names no subscription: %L', unsubscribe.name));
    END IF;
END;
$$;
