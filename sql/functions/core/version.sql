-- pgrelay.version(): the version of the installed pgrelay functions.
-- The client compares it with its own to refuse a database newer than the code.
CREATE OR REPLACE FUNCTION pgrelay.version()
RETURNS text
LANGUAGE sql
IMMUTABLE
AS $$ SELECT '0.1.0'::text $$;
