-- pgrelay._saga_call(proc, input, context): call a SQL step's function (action or compensation),
-- found by the caller with to_regprocedure. Written here: the fallback, a dynamic EXECUTE, which
-- PostgreSQL parses and plans again on every call (for saga_start of 3 no-op steps about 18 % of
-- its instructions). _saga_generate_call replaces this body with one that calls every SQL handler
-- of the saga definitions by name, statically (a plan cached for the session), keyed by the
-- function's oid, and keeps the EXECUTE for any other oid (a function created after the last
-- generation, or dropped and created again: its oid changed). saga_define regenerates it when a
-- definition names a handler it does not know, and migrate up after installing the functions.
CREATE OR REPLACE FUNCTION pgrelay._saga_call(p_proc oid, p_input jsonb, p_context jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_output jsonb;
BEGIN
    EXECUTE format('SELECT %s($1, $2)', p_proc::regproc) INTO v_output USING p_input, p_context;
    RETURN v_output;
END;
$$;

-- pgrelay._saga_sql_handlers(definition): the functions a saga definition names as SQL actions
-- or compensations, as they resolve now (NULL for a name that does not).
CREATE OR REPLACE FUNCTION pgrelay._saga_sql_handlers(p_definition jsonb)
RETURNS SETOF oid
LANGUAGE sql
STABLE
AS $$
    SELECT to_regprocedure((hv.h ->> 'sql') || '(jsonb, jsonb)')::oid
      FROM jsonb_array_elements(p_definition -> 'steps') AS st,
           LATERAL (VALUES (st -> 'action'), (st -> 'compensation')) AS hv(h)
     WHERE jsonb_typeof(hv.h) = 'object' AND hv.h ? 'sql'
$$;

-- pgrelay._saga_generate_call(): (re)write _saga_call with a static call of every function that a
-- saga definition names as a SQL action or compensation (and exists now). The names in the
-- generated code are schema-qualified and quoted (quote_ident), never the definition's text.
-- Serialised by an advisory lock: two concurrent CREATE OR REPLACE of one function would fail.
CREATE OR REPLACE FUNCTION pgrelay._saga_generate_call()
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_cases text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('pgrelay._saga_generate_call', 0));
    SELECT string_agg(format('    IF p_proc = %s THEN RETURN %I.%I(p_input, p_context); END IF;', p.oid, n.nspname, p.proname),
                      E'\n' ORDER BY p.oid)
      INTO v_cases
      FROM pg_proc p
      JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.oid IN (SELECT h.proc FROM pgrelay.saga_definitions d, pgrelay._saga_sql_handlers(d.definition) AS h(proc));
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION pgrelay._saga_call(p_proc oid, p_input jsonb, p_context jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $pgrelay_saga_call$
DECLARE
    v_output jsonb;
BEGIN
%s
    EXECUTE format('SELECT %%s($1, $2)', p_proc::regproc) INTO v_output USING p_input, p_context;
    RETURN v_output;
END;
$pgrelay_saga_call$
$f$, coalesce(v_cases, ''));
END;
$$;

-- pgrelay._saga_call_knows(proc): whether the generated _saga_call has a static call of proc.
CREATE OR REPLACE FUNCTION pgrelay._saga_call_knows(p_proc oid)
RETURNS boolean
LANGUAGE sql
STABLE
AS $$
    SELECT position(format('IF p_proc = %s THEN', p_proc) IN prosrc) > 0
      FROM pg_proc WHERE oid = 'pgrelay._saga_call(oid, jsonb, jsonb)'::regprocedure
$$;
