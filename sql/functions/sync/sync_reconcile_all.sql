-- pgrelay.sync_reconcile(name, chunk_size): reconcile a same-database sync from SQL: walk its
-- source table (options.source_table) in key order, chunk_size rows at a time, and let
-- pgrelay.sync_reconcile_chunk compare each chunk with the target and repair drift, all under the
-- sync's checkpoint lock (so the applier waits). One transaction: for large tables prefer
-- `pgrelay sync reconcile NAME`, which commits chunk by chunk and shows progress; it is also the
-- way to reconcile a cross-database sync. Returns (rows, missing, different, extra).
CREATE OR REPLACE FUNCTION pgrelay.sync_reconcile(name text, chunk_size integer DEFAULT 1000,
                                                  OUT rows bigint, OUT missing bigint, OUT different bigint, OUT extra bigint)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn      constant text := 'pgrelay.sync_reconcile';
    v_sync    pgrelay.syncs;
    v_src     regclass;
    v_tkeys   text[];
    v_skeys   text[];
    v_chunk   jsonb;
    v_count   integer;
    v_after   jsonb;
    v_last    jsonb;
    v_result  record;
BEGIN
    PERFORM pgrelay._check_name(v_fn, 'name', sync_reconcile.name);
    IF sync_reconcile.chunk_size IS NULL OR sync_reconcile.chunk_size NOT BETWEEN 1 AND 100000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'chunk_size', 'must be between 1 and 100000');
    END IF;
    v_sync := pgrelay._sync_local(v_fn, sync_reconcile.name, 'reconcile it with `pgrelay sync reconcile`');
    v_src := to_regclass(v_sync.source_table);
    IF v_src IS NULL THEN
        PERFORM pgrelay._raise('PR007', v_fn, 'name', 'has no source_table: define it with options {"source_table": "schema.table"}');
    END IF;
    v_tkeys := ARRAY(SELECT jsonb_array_elements_text(v_sync.target -> 'key_columns'));
    v_skeys := ARRAY(SELECT CASE WHEN v_sync.target -> 'columns' -> k IS NULL THEN k
                                 WHEN jsonb_typeof(v_sync.target -> 'columns' -> k) = 'string' THEN v_sync.target -> 'columns' ->> k END
                     FROM unnest(v_tkeys) WITH ORDINALITY AS u(k, i) ORDER BY i);
    IF array_position(v_skeys, NULL) IS NOT NULL THEN
        PERFORM pgrelay._raise('PR007', v_fn, 'name', 'has a key column computed by a function: reconcile needs plain source key columns');
    END IF;

    PERFORM pgrelay.sync_lock(sync_reconcile.name);
    rows := 0; missing := 0; different := 0; extra := 0;
    LOOP
        EXECUTE format('SELECT jsonb_agg(to_jsonb(c) ORDER BY %1$s), count(*) FROM (SELECT s.* FROM %2$s AS s WHERE $1 IS NULL OR (%3$s) > (SELECT %4$s FROM jsonb_populate_record(NULL::%2$s, $1) AS a) ORDER BY %3$s LIMIT %5$s) AS c',
                       (SELECT string_agg(format('c.%I', k), ', ') FROM unnest(v_skeys) k), v_src,
                       (SELECT string_agg(format('s.%I', k), ', ') FROM unnest(v_skeys) k),
                       (SELECT string_agg(format('a.%I', k), ', ') FROM unnest(v_skeys) k),
                       sync_reconcile.chunk_size)
        INTO v_chunk, v_count USING v_after;
        v_last := CASE WHEN v_count = sync_reconcile.chunk_size THEN v_chunk -> (v_count - 1) END;
        SELECT * INTO v_result FROM pgrelay.sync_reconcile_chunk(
            sync_reconcile.name, v_sync.target, coalesce(v_chunk, '[]'),
            (SELECT jsonb_object_agg(t, v_after -> s) FROM unnest(v_tkeys, v_skeys) AS u(t, s) WHERE v_after IS NOT NULL),
            (SELECT jsonb_object_agg(t, v_last -> s) FROM unnest(v_tkeys, v_skeys) AS u(t, s) WHERE v_last IS NOT NULL));
        rows := rows + v_count;
        missing := missing + v_result.missing;
        different := different + v_result.different;
        extra := extra + v_result.extra;
        EXIT WHEN v_last IS NULL;
        v_after := v_last;
    END LOOP;
END;
$$;
