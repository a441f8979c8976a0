-- pgrelay.sync_reconcile_chunk(name, target, rows, after_key, last_key): in the TARGET database,
-- compare one chunk of source rows (a JSON array of source row images, in key order, covering
-- the source keys in (after_key, last_key]; last_key NULL = to the end) with the target rows in
-- the same key range, and repair drift: insert missing rows, update different ones (compared on
-- the mapped columns), delete (or soft-delete) extra ones. Returns (missing, different, extra).
-- Run it under pgrelay.sync_lock(name) with the source rows read after taking the lock (the
-- daemon's reconcile does): the rows are then at least as new as anything the sync applied, so
-- row versions stay as they are and a change the sync has not applied yet still applies after.
CREATE OR REPLACE FUNCTION pgrelay.sync_reconcile_chunk(
    name      text,
    target    jsonb,
    rows      jsonb,
    after_key jsonb,
    last_key  jsonb,
    OUT missing bigint, OUT different bigint, OUT extra bigint)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn     constant text := 'pgrelay.sync_reconcile_chunk';
    v_tbl    regclass;
    v_keys   text[];
    v_cols   text[];
    v_map    text;
    v_keysql text;
    v_range  text;
    v_delete jsonb := coalesce(target -> 'delete', '"delete"');
    v_soft   text := target -> 'delete' ->> 'soft';
    v_active text;
BEGIN
    PERFORM pgrelay._check_name(v_fn, 'name', sync_reconcile_chunk.name);
    v_tbl := pgrelay._sync_check_target(v_fn, sync_reconcile_chunk.target, true);
    IF sync_reconcile_chunk.rows IS NULL OR jsonb_typeof(sync_reconcile_chunk.rows) <> 'array' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'rows', 'must be a JSON array of source rows');
    END IF;
    v_keys := ARRAY(SELECT jsonb_array_elements_text(target -> 'key_columns'));
    SELECT m.columns, m.expression INTO v_cols, v_map FROM pgrelay._sync_mapping(target, v_tbl) AS m;
    v_keysql := (SELECT string_agg(format('t.%I', k), ', ') FROM unnest(v_keys) k);
    v_range := format('($2 IS NULL OR (%1$s) > (SELECT %2$s FROM jsonb_populate_record(NULL::%3$s, $2) AS a)) AND ($3 IS NULL OR (%1$s) <= (SELECT %2$s FROM jsonb_populate_record(NULL::%3$s, $3) AS a))',
                      v_keysql, (SELECT string_agg(format('a.%I', k), ', ') FROM unnest(v_keys) k), v_tbl);
    -- Soft-deleted target rows count as absent.
    v_active := CASE WHEN v_soft IS NOT NULL THEN format(' AND (t.%1$I IS NULL OR t.%1$I::text = ''false'')', v_soft) ELSE '' END;

    IF to_regclass('pg_temp.pgrelay_sync_expected') IS NULL THEN
        CREATE TEMP TABLE pgrelay_sync_expected (row_key text, obj jsonb) ON COMMIT DELETE ROWS;
        CREATE TEMP TABLE pgrelay_sync_actual (row_key text, obj jsonb) ON COMMIT DELETE ROWS;
    END IF;
    TRUNCATE pgrelay_sync_expected;
    EXECUTE format('INSERT INTO pgrelay_sync_expected SELECT jsonb_build_array(%s)::text, obj FROM (SELECT %s AS obj FROM jsonb_array_elements($1) AS s(img)) AS m',
                   (SELECT string_agg(format('obj -> %L', k), ', ') FROM unnest(v_keys) k), v_map)
    USING sync_reconcile_chunk.rows;

    -- Target rows in range, projected on the mapped columns, as jsonb.
    TRUNCATE pgrelay_sync_actual;
    EXECUTE format('INSERT INTO pgrelay_sync_actual SELECT jsonb_build_array(%1$s)::text, jsonb_build_object(%2$s) FROM %3$s AS t WHERE (%4$s)%5$s',
                   (SELECT string_agg(format('to_jsonb(t.%I)', k), ', ') FROM unnest(v_keys) k),
                   (SELECT string_agg(format('%L, t.%I', c, c), ', ') FROM unnest(v_cols) c),
                   v_tbl, v_range, v_active)
    USING sync_reconcile_chunk.rows, sync_reconcile_chunk.after_key, sync_reconcile_chunk.last_key;

    -- Normalise expected rows through the target's column types before comparing.
    EXECUTE format('UPDATE pgrelay_sync_expected e SET obj = (SELECT jsonb_build_object(%s) FROM jsonb_populate_record(NULL::%s, e.obj) AS t)',
                   (SELECT string_agg(format('%L, t.%I', c, c), ', ') FROM unnest(v_cols) c), v_tbl);

    SELECT count(*) INTO missing FROM pgrelay_sync_expected e WHERE NOT EXISTS (SELECT 1 FROM pgrelay_sync_actual a WHERE a.row_key = e.row_key);
    SELECT count(*) INTO different FROM pgrelay_sync_expected e JOIN pgrelay_sync_actual a USING (row_key) WHERE a.obj IS DISTINCT FROM e.obj;
    SELECT count(*) INTO extra FROM pgrelay_sync_actual a WHERE NOT EXISTS (SELECT 1 FROM pgrelay_sync_expected e WHERE e.row_key = a.row_key);

    IF missing + different > 0 THEN
        EXECUTE format($q$
            INSERT INTO %1$s AS t (%2$s)
            SELECT %3$s FROM pgrelay_sync_expected e, jsonb_populate_record(NULL::%1$s, e.obj) AS r
            WHERE NOT EXISTS (SELECT 1 FROM pgrelay_sync_actual a WHERE a.row_key = e.row_key AND a.obj IS NOT DISTINCT FROM e.obj)
            ON CONFLICT (%4$s) DO %5$s
        $q$, v_tbl,
             (SELECT string_agg(format('%I', c), ', ') FROM unnest(v_cols) c),
             (SELECT string_agg(format('r.%I', c), ', ') FROM unnest(v_cols) c),
             (SELECT string_agg(format('%I', k), ', ') FROM unnest(v_keys) k),
             coalesce('UPDATE SET ' || nullif(array_to_string(
                 ARRAY(SELECT format('%1$I = excluded.%1$I', c) FROM unnest(v_cols) c WHERE NOT c = ANY (v_keys))
                 || CASE WHEN v_soft IS NOT NULL THEN ARRAY[format('%I = %s', v_soft,
                         CASE WHEN (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = v_tbl AND a.attname = v_soft) = 'boolean'::regtype
                              THEN 'false' ELSE 'NULL' END)] ELSE '{}'::text[] END, ', '), ''), 'NOTHING'));
    END IF;
    IF extra > 0 AND v_delete <> '"ignore"' THEN
        v_keysql := format('jsonb_build_array(%s)::text', (SELECT string_agg(format('to_jsonb(t.%I)', k), ', ') FROM unnest(v_keys) k));
        IF v_soft IS NOT NULL THEN
            EXECUTE format('UPDATE %s AS t SET %I = %s FROM pgrelay_sync_actual a WHERE a.row_key = %s '
                           'AND NOT EXISTS (SELECT 1 FROM pgrelay_sync_expected e WHERE e.row_key = a.row_key)',
                           v_tbl, v_soft,
                           CASE WHEN (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = v_tbl AND a.attname = v_soft) = 'boolean'::regtype
                                THEN 'true' ELSE 'now()' END,
                           v_keysql);
        ELSE
            EXECUTE format('DELETE FROM %s AS t USING pgrelay_sync_actual a WHERE a.row_key = %s '
                           'AND NOT EXISTS (SELECT 1 FROM pgrelay_sync_expected e WHERE e.row_key = a.row_key)',
                           v_tbl, v_keysql);
        END IF;
    END IF;
    TRUNCATE pgrelay_sync_expected;
    TRUNCATE pgrelay_sync_actual;
END;
$$;
