-- pgrelay._sync_local(fn, name, elsewhere): the row of a sync whose target is this database, for
-- the functions that apply or compare it here. PR001/PR003 naming `name` when it is malformed or
-- names no sync; PR007 when the sync targets another database (`elsewhere` says what to use).
CREATE OR REPLACE FUNCTION pgrelay._sync_local(p_function text, p_name text, p_elsewhere text)
RETURNS pgrelay.syncs
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_row pgrelay.syncs;
BEGIN
    PERFORM pgrelay._check_name(p_function, 'name', p_name);
    SELECT * INTO v_row FROM pgrelay.syncs s WHERE s.name = p_name;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', p_function, 'name', format('names no sync: %L', p_name));
    END IF;
    IF v_row.target ? 'database_env' THEN
        PERFORM pgrelay._raise('PR007', p_function, 'name', 'targets another database: ' || p_elsewhere);
    END IF;
    RETURN v_row;
END;
$$;
