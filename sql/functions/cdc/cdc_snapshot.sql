-- pgrelay.cdc_snapshot(tbl, chunk_size): emit the next chunk of existing rows, in key order, as
-- 'snapshot' messages ({"before": null, "after": row, "changed": null}, same key and topic as
-- live changes) and remember where it stopped, so a backfill is resumable across calls, crashes
-- and interruptions. Call it (each call its own transaction) until done. Rows of a chunk are
-- read FOR SHARE, so an update of one of them either committed before (the chunk reads its
-- result) or waits and commits after the snapshot message: a consumer applying messages in
-- per-key order ends with the table's current state. Locks last one chunk, never the backfill.
-- Returns (emitted so far, total rows when the backfill began, done).
-- pgrelay.cdc_snapshot_reset(tbl) starts the backfill over.
CREATE OR REPLACE FUNCTION pgrelay.cdc_snapshot(tbl regclass, chunk_size integer DEFAULT 1000,
                                                OUT emitted bigint, OUT total bigint, OUT done boolean)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn     constant text := 'pgrelay.cdc_snapshot';
    v_cfg    pgrelay.cdc_tables;
    v_state  pgrelay.cdc_snapshots;
    v_cols   text[];
    v_types  text[];
    v_exclude text[];
    v_mask   text[];
    v_order  text;
    v_after  text;
    v_img    text;
    v_key    text;
    v_count  integer;
    v_bound  integer;
    v_last   jsonb;
    v_meta   jsonb;
BEGIN
    IF cdc_snapshot.tbl IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'tbl', 'must name a table');
    END IF;
    IF cdc_snapshot.chunk_size IS NULL OR cdc_snapshot.chunk_size NOT BETWEEN 1 AND 100000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'chunk_size', 'must be between 1 and 100000');
    END IF;
    SELECT * INTO v_cfg FROM pgrelay.cdc_tables c WHERE c.relid = cdc_snapshot.tbl;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', v_fn, 'tbl', format('%s is not captured: cdc_enable it first', cdc_snapshot.tbl));
    END IF;
    INSERT INTO pgrelay.cdc_snapshots AS s (relid) VALUES (cdc_snapshot.tbl) ON CONFLICT ON CONSTRAINT cdc_snapshots_pkey DO NOTHING;
    -- One backfill step at a time per table: a second caller waits here for the first chunk.
    SELECT * INTO v_state FROM pgrelay.cdc_snapshots s WHERE s.relid = cdc_snapshot.tbl FOR UPDATE;
    IF v_state.finished_at IS NOT NULL THEN
        emitted := v_state.emitted; total := v_state.total; done := true;
        RETURN;
    END IF;
    IF v_state.total IS NULL THEN
        EXECUTE format('SELECT count(*) FROM %s', cdc_snapshot.tbl) INTO v_state.total;
        UPDATE pgrelay.cdc_snapshots s SET total = v_state.total WHERE s.relid = cdc_snapshot.tbl;
    END IF;

    SELECT array_agg(quote_ident(a.attname) ORDER BY k.n), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.n)
    INTO v_cols, v_types
    FROM unnest(v_cfg.key_attnums) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_attribute a ON a.attrelid = v_cfg.relid AND a.attnum = k.attnum AND NOT a.attisdropped;
    v_exclude := ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = v_cfg.relid AND a.attnum = ANY (v_cfg.exclude_attnums) AND NOT a.attisdropped);
    v_mask := ARRAY(SELECT a.attname::text FROM pg_attribute a
                    WHERE a.attrelid = v_cfg.relid AND a.attnum = ANY (v_cfg.mask_attnums) AND NOT a.attisdropped);
    v_order := (SELECT string_agg('t.' || c, ', ') FROM unnest(v_cols) c);
    -- The last key is kept as text values and cast back to the key columns' types.
    v_after := CASE WHEN v_state.last_key IS NULL THEN 'true'
                    ELSE format('(%s) > (%s)', v_order,
                                (SELECT string_agg(format('CAST($1 ->> %s AS %s)', n - 1, ty), ', ')
                                 FROM unnest(v_types) WITH ORDINALITY AS x(ty, n))) END;
    v_img := CASE WHEN cardinality(v_exclude) = 0 AND cardinality(v_mask) = 0 THEN 'to_jsonb(t.*)'
                  ELSE format('pgrelay._cdc_image(to_jsonb(t.*), %L, %L)', v_exclude, v_mask) END;
    v_key := CASE WHEN cardinality(v_cols) = 1 THEN format('(t.%s)::text', v_cols[1])
                  ELSE format('jsonb_build_array(%s)::text', v_order) END;
    v_meta := jsonb_build_object('xid', pg_current_xact_id()::text, 'user', current_user,
                                 'application_name', current_setting('application_name'),
                                 'schema', (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = v_cfg.relid),
                                 'table', (SELECT c.relname FROM pg_class c WHERE c.oid = v_cfg.relid),
                                 'captured_at', now(), 'snapshot', true);

    -- The chunk's key range is fixed first, by a plain read (bound): the next chunk_size keys
    -- after the last one. The rows are then read again in that range FOR SHARE. A row whose key
    -- a concurrent UPDATE changes while the chunk waits for its lock comes back (EvalPlanQual)
    -- with its new key; with the range in the WHERE clause such a row is rechecked against the
    -- range and skipped when it left it (its new key is read when the backfill gets there, or it
    -- moved behind the backfill and its live 'insert' message carries it). Taking the last key
    -- from the locked rows instead let a row moved far ahead become the last key, and the
    -- backfill skipped every key in between and finished early.
    EXECUTE format($q$
        WITH bound AS (
            SELECT t.* FROM %1$s AS t
            WHERE %2$s
            ORDER BY %3$s
            LIMIT $2
        ), chunk AS (
            SELECT t.* FROM %1$s AS t
            WHERE %2$s AND (%3$s) <= (SELECT %3$s FROM bound AS t ORDER BY %7$s LIMIT 1)
            ORDER BY %3$s
            FOR SHARE OF t
        ), written AS (
            INSERT INTO pgrelay.messages (position, xid, next_xid, id, topic, key, type, data, metadata)
            SELECT m.position, pg_current_xact_id(), pgrelay._next_xid(), pgrelay._message_id(m.position),
                   $3, m.key, 'snapshot', m.data, $4
            FROM (SELECT nextval('pgrelay.message_position_seq') AS position, %4$s AS key,
                         jsonb_build_object('before', NULL, 'after', %5$s, 'changed', NULL) AS data
                  FROM chunk AS t
                  ORDER BY %3$s) AS m
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM written),
               (SELECT count(*) FROM bound),
               (SELECT to_jsonb(ARRAY[%6$s]) FROM bound AS t ORDER BY %7$s LIMIT 1)
    $q$, cdc_snapshot.tbl, v_after, v_order, v_key, v_img,
         (SELECT string_agg(format('(t.%s)::text', c), ', ') FROM unnest(v_cols) c),
         (SELECT string_agg('t.' || c || ' DESC', ', ') FROM unnest(v_cols) c))
    INTO v_count, v_bound, v_last
    USING v_state.last_key, cdc_snapshot.chunk_size, v_cfg.topic, v_meta;
    UPDATE pgrelay.cdc_snapshots s
       SET last_key = coalesce(v_last, s.last_key), emitted = s.emitted + v_count,
           finished_at = CASE WHEN v_bound < cdc_snapshot.chunk_size THEN clock_timestamp() END
     WHERE s.relid = cdc_snapshot.tbl
    RETURNING s.emitted, s.total, s.finished_at IS NOT NULL INTO emitted, total, done;
    PERFORM pgrelay._ring_doorbell(v_cfg.topic);
END;
$$;

-- pgrelay.cdc_snapshot_reset(tbl): forget a table's backfill progress (the next cdc_snapshot
-- starts from the first key).
CREATE OR REPLACE FUNCTION pgrelay.cdc_snapshot_reset(tbl regclass)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    IF cdc_snapshot_reset.tbl IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.cdc_snapshot_reset', 'tbl', 'must name a table');
    END IF;
    DELETE FROM pgrelay.cdc_snapshots s WHERE s.relid = cdc_snapshot_reset.tbl;
END;
$$;
