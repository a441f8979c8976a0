-- pgrelay._sync_regclass(name): the table a name denotes, or NULL when there is none or the name
-- is not valid syntax (to_regclass raises on bad syntax before PostgreSQL 16).
CREATE OR REPLACE FUNCTION pgrelay._sync_regclass(p_name text)
RETURNS regclass
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
    RETURN to_regclass(p_name);
EXCEPTION WHEN invalid_name OR syntax_error OR invalid_parameter_value THEN
    RETURN NULL;
END;
$$;
