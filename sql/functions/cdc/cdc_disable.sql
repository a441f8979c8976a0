-- pgrelay.cdc_disable(tbl): stop capturing a table: its triggers, generated function, options
-- and snapshot progress are removed. PR003 if it is not captured.
CREATE OR REPLACE FUNCTION pgrelay.cdc_disable(tbl regclass)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_trig record;
BEGIN
    IF cdc_disable.tbl IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.cdc_disable', 'tbl', 'must name a table');
    END IF;
    DELETE FROM pgrelay.cdc_tables c WHERE c.relid = cdc_disable.tbl;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', 'pgrelay.cdc_disable', 'tbl', format('%s is not captured', cdc_disable.tbl));
    END IF;
    DELETE FROM pgrelay.cdc_snapshots s WHERE s.relid = cdc_disable.tbl;
    -- Its triggers on the table and on every partition, then the function they call.
    FOR v_trig IN
        SELECT g.tgname, g.tgrelid::regclass AS tbl FROM pg_trigger g
        WHERE g.tgfoid = to_regprocedure(format('pgrelay.%I()', '_cdc_capture_' || cdc_disable.tbl::oid))
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', v_trig.tgname, v_trig.tbl);
    END LOOP;
    EXECUTE format('DROP FUNCTION IF EXISTS pgrelay.%I()', '_cdc_capture_' || cdc_disable.tbl::oid);
END;
$$;

-- pgrelay.cdc_list(): the captured tables that still exist (schema-qualified names), with their
-- options and backfill progress.
CREATE OR REPLACE FUNCTION pgrelay.cdc_list()
RETURNS TABLE (table_name text, topic text, key_columns text[], exclude text[], mask text[], operations text[],
               skip_unchanged boolean, snapshot_emitted bigint, snapshot_total bigint, snapshot_done boolean)
LANGUAGE sql
STABLE
AS $$
    SELECT format('%I.%I', n.nspname, r.relname), c.topic,
           ARRAY(SELECT a.attname::text FROM unnest(c.key_attnums) WITH ORDINALITY AS k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = c.relid AND a.attnum = k.attnum ORDER BY k.n),
           ARRAY(SELECT a.attname::text FROM pg_attribute a
                 WHERE a.attrelid = c.relid AND a.attnum = ANY (c.exclude_attnums) AND NOT a.attisdropped ORDER BY a.attnum),
           ARRAY(SELECT a.attname::text FROM pg_attribute a
                 WHERE a.attrelid = c.relid AND a.attnum = ANY (c.mask_attnums) AND NOT a.attisdropped ORDER BY a.attnum),
           c.operations, c.skip_unchanged, s.emitted, s.total, s.finished_at IS NOT NULL
    FROM pgrelay.cdc_tables c
    JOIN pg_class r ON r.oid = c.relid
    JOIN pg_namespace n ON n.oid = r.relnamespace
    LEFT JOIN pgrelay.cdc_snapshots s ON s.relid = c.relid
    ORDER BY 1
$$;
