-- pgrelay.cdc_snapshot(tbl, chunk_size): emit the next chunk of existing rows, in key order, as
-- 'snapshot' messages ({"before": null, "after": row}) and remember where it stopped, so a
-- backfill is resumable across calls, crashes and interruptions. Call it (each call its own
-- transaction) until done. Rows of a chunk are read FOR SHARE, so a concurrent update of one of
-- them commits after its snapshot message: a consumer applying messages in per-key order ends
-- with the table's current state. Returns (emitted so far, total rows when the backfill began,
-- done). pgrelay.cdc_snapshot_reset(tbl) starts the backfill over.
CREATE OR REPLACE FUNCTION pgrelay.cdc_snapshot(tbl regclass, chunk_size integer DEFAULT 1000,
                                                OUT emitted bigint, OUT total bigint, OUT done boolean)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn    constant text := 'pgrelay.cdc_snapshot';
    v_cfg   pgrelay.cdc_tables;
    v_state pgrelay.cdc_snapshots;
    v_cols  text[];
    v_order text;
    v_after text;
    v_img   text;
    v_key   text;
    v_count integer;
    v_last  jsonb;
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
    SELECT * INTO v_state FROM pgrelay.cdc_snapshots s WHERE s.relid = cdc_snapshot.tbl FOR UPDATE;
    IF v_state.total IS NULL THEN
        EXECUTE format('SELECT count(*) FROM %s', cdc_snapshot.tbl) INTO v_state.total;
        UPDATE pgrelay.cdc_snapshots s SET total = v_state.total WHERE s.relid = cdc_snapshot.tbl;
    END IF;
    IF v_state.finished_at IS NOT NULL THEN
        emitted := v_state.emitted; total := v_state.total; done := true;
        RETURN;
    END IF;

    SELECT array_agg(quote_ident(a.attname) ORDER BY k.n) INTO v_cols
    FROM unnest(v_cfg.key_attnums) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_attribute a ON a.attrelid = v_cfg.relid AND a.attnum = k.attnum;
    v_order := (SELECT string_agg('t.' || c, ', ') FROM unnest(v_cols) c);
    v_after := CASE WHEN v_state.last_key IS NULL THEN 'true'
                    ELSE format('(%s) > (%s)', v_order, (SELECT string_agg('r.' || c, ', ') FROM unnest(v_cols) c)) END;
    v_img := CASE WHEN cardinality(v_cfg.exclude) = 0 AND cardinality(v_cfg.mask) = 0 THEN 'to_jsonb(t.*)'
                  ELSE format('pgrelay._cdc_image(to_jsonb(t.*), %L, %L)', v_cfg.exclude, v_cfg.mask) END;
    v_key := CASE WHEN cardinality(v_cols) = 1 THEN format('(t.%s)::text', v_cols[1])
                  ELSE format('jsonb_build_array(%s)::text', v_order) END;

    EXECUTE format($q$
        WITH chunk AS (
            SELECT t.* FROM %1$s AS t LEFT JOIN LATERAL jsonb_populate_record(NULL::%1$s, $1) AS r ON true
            WHERE %2$s
            ORDER BY %3$s
            LIMIT $2
            FOR SHARE OF t
        ), written AS (
            INSERT INTO pgrelay.messages (position, xid, next_xid, id, topic, key, type, data, metadata)
            SELECT nextval('pgrelay.message_position_seq'), pg_current_xact_id(), pgrelay._next_xid(), gen_random_uuid(),
                   $3, %4$s, 'snapshot', jsonb_build_object('before', NULL, 'after', %5$s, 'changed', NULL),
                   jsonb_build_object('xid', pg_current_xact_id()::text, 'user', current_user, 'snapshot', true)
            FROM chunk AS t
            ORDER BY %3$s
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM written), (SELECT to_jsonb(t.*) FROM chunk AS t ORDER BY %6$s LIMIT 1)
    $q$, cdc_snapshot.tbl, v_after, v_order, v_key, v_img,
         (SELECT string_agg('t.' || c || ' DESC', ', ') FROM unnest(v_cols) c))
    INTO v_count, v_last
    USING v_state.last_key, cdc_snapshot.chunk_size, v_cfg.topic;

    UPDATE pgrelay.cdc_snapshots s
       SET last_key = coalesce(v_last, s.last_key), emitted = s.emitted + v_count,
           finished_at = CASE WHEN v_count < cdc_snapshot.chunk_size THEN clock_timestamp() END
     WHERE s.relid = cdc_snapshot.tbl
    RETURNING s.emitted, s.total, s.finished_at IS NOT NULL INTO emitted, total, done;
    PERFORM pgrelay._ring_doorbell(v_cfg.topic);
END;
$$;

CREATE OR REPLACE FUNCTION pgrelay.cdc_snapshot_reset(tbl regclass)
RETURNS void
LANGUAGE sql
AS $$
    DELETE FROM pgrelay.cdc_snapshots s WHERE s.relid = cdc_snapshot_reset.tbl
$$;
