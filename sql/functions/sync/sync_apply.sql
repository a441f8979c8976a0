-- pgrelay.sync_apply(name, target, messages, from_xid, from_position, to_xid, to_position,
--                    source_format): apply one batch of source messages to a target table, in
-- the TARGET database, and move the sync's checkpoint from (from_xid, from_position) to
-- (to_xid, to_position) in the same transaction. messages: a JSON array of
-- {"position", "type", "data", "created_at"} in position order (what pgrelay.read returns).
--   - A batch whose end the checkpoint already passed is a no-op (replay): returns 0.
--   - A checkpoint elsewhere than from_* means another applier moved it: PR007, nothing written.
--   - Per row key only the last change of the batch counts, and only if it is newer than the
--     position the row already reflects (pgrelay.sync_row_versions): stale changes never win,
--     and a delete racing an upsert ends as whichever committed last in the source.
--   - cdc format: insert/update/snapshot upsert `after`, delete removes by `before`, truncate
--     empties the target (per its delete mode). event format: data is the row; types listed in
--     target.delete_types delete.
--   - An empty array moves the checkpoint only (the source's walk passed other topics' messages).
-- Returns how many row changes it applied.
CREATE OR REPLACE FUNCTION pgrelay.sync_apply(
    name          text,
    target        jsonb,
    messages      jsonb,
    from_xid      xid8,
    from_position bigint,
    to_xid        xid8,
    to_position   bigint,
    source_format text DEFAULT 'cdc'
)
RETURNS integer
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn        constant text := 'pgrelay.sync_apply';
    v_tbl       regclass;
    v_cp        pgrelay.sync_checkpoints;
    v_keys      text[];
    v_cols      text[];
    v_map       text;
    v_keyexpr   text;
    v_join      text;
    v_set       text;
    v_delete    jsonb := coalesce(target -> 'delete', '"delete"');
    v_soft      text;
    v_soft_val  text;
    v_soft_undo text;
    v_bad       text;
    v_truncate  bigint;
    v_applied   integer;
    v_stale     integer;
    v_latest    timestamptz;
BEGIN
    PERFORM pgrelay._check_name(v_fn, 'name', sync_apply.name);
    v_tbl := pgrelay._sync_check_target(v_fn, sync_apply.target, true);
    IF sync_apply.messages IS NULL OR jsonb_typeof(sync_apply.messages) <> 'array' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'messages', 'must be a JSON array');
    END IF;
    IF sync_apply.source_format IS NULL OR sync_apply.source_format NOT IN ('cdc', 'event') THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'source_format', 'must be ''cdc'' or ''event''');
    END IF;
    -- Every message must carry a position, a type and a row image (a malformed one stops the
    -- sync with this error instead of writing a half-empty row).
    SELECT format('message %s %s', ord,
                  CASE WHEN jsonb_typeof(e) <> 'object' THEN 'is not an object'
                       WHEN jsonb_typeof(e -> 'position') <> 'number' AND NOT coalesce(e ->> 'position' ~ '^[0-9]{1,19}$', false) THEN 'has no numeric "position"'
                       WHEN jsonb_typeof(e -> 'type') IS DISTINCT FROM 'string' THEN 'has no string "type"'
                       WHEN sync_apply.source_format = 'event' THEN 'has no object "data"'
                       ELSE 'has no object "data" with an object "after" or "before"' END)
      INTO v_bad
    FROM jsonb_array_elements(sync_apply.messages) WITH ORDINALITY AS m(e, ord)
    WHERE jsonb_typeof(e) <> 'object'
       OR (jsonb_typeof(e -> 'position') IS DISTINCT FROM 'number' AND NOT coalesce(e ->> 'position' ~ '^[0-9]{1,19}$', false))
       OR jsonb_typeof(e -> 'type') IS DISTINCT FROM 'string'
       OR (sync_apply.source_format = 'event' AND jsonb_typeof(e -> 'data') IS DISTINCT FROM 'object')
       OR (sync_apply.source_format = 'cdc' AND e ->> 'type' <> 'truncate'
           AND jsonb_typeof(e -> 'data' -> 'after') IS DISTINCT FROM 'object' AND jsonb_typeof(e -> 'data' -> 'before') IS DISTINCT FROM 'object')
    LIMIT 1;
    IF v_bad IS NOT NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'messages', v_bad);
    END IF;
    IF sync_apply.from_xid IS NULL OR sync_apply.from_position IS NULL OR sync_apply.to_xid IS NULL OR sync_apply.to_position IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'to_position', 'the from/to cursors must not be null');
    END IF;

    INSERT INTO pgrelay.sync_checkpoints AS c (name) VALUES (sync_apply.name) ON CONFLICT ON CONSTRAINT sync_checkpoints_pkey DO NOTHING;
    SELECT * INTO v_cp FROM pgrelay.sync_checkpoints c WHERE c.name = sync_apply.name FOR UPDATE;
    IF (v_cp.cursor_xid, v_cp.cursor_position) >= (sync_apply.to_xid, sync_apply.to_position) THEN
        RETURN 0;
    END IF;
    IF (v_cp.cursor_xid, v_cp.cursor_position) <> (sync_apply.from_xid, sync_apply.from_position) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'PR007',
            MESSAGE = format('%s: argument from_position: the checkpoint of sync %L is at (%s, %s), not (%s, %s): another applier moved it',
                             v_fn, sync_apply.name, v_cp.cursor_xid, v_cp.cursor_position, sync_apply.from_xid, sync_apply.from_position),
            COLUMN = 'from_position';
    END IF;

    -- An empty batch only moves the checkpoint: the source walk passed messages of other topics.
    IF jsonb_array_length(sync_apply.messages) = 0 THEN
        UPDATE pgrelay.sync_checkpoints c SET cursor_xid = sync_apply.to_xid, cursor_position = sync_apply.to_position
         WHERE c.name = sync_apply.name;
        RETURN 0;
    END IF;

    v_keys := ARRAY(SELECT jsonb_array_elements_text(target -> 'key_columns'));
    SELECT m.columns, m.expression INTO v_cols, v_map FROM pgrelay._sync_mapping(target, v_tbl) AS m;
    IF jsonb_typeof(v_delete) = 'object' THEN
        v_soft := v_delete ->> 'soft';
        -- A boolean soft-delete column is set true (and back to false); any other type gets now() (and NULL).
        IF (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = v_tbl AND a.attname = v_soft) = 'boolean'::regtype THEN
            v_soft_val := 'true';
            v_soft_undo := 'false';
        ELSE
            v_soft_val := 'now()';
            v_soft_undo := 'NULL';
        END IF;
    END IF;
    v_keyexpr := 'jsonb_build_array(' || (SELECT string_agg(format('obj -> %L', k), ', ') FROM unnest(v_keys) k) || ')::text';
    v_join := (SELECT string_agg(format('t.%1$I = r.%1$I', k), ' AND ') FROM unnest(v_keys) k);
    v_set := coalesce((SELECT string_agg(format('%1$I = excluded.%1$I', c), ', ') FROM unnest(v_cols) c WHERE NOT c = ANY (v_keys)), '');

    -- A TRUNCATE in the batch: everything before it is gone; the target is emptied.
    SELECT max((m ->> 'position')::bigint) FILTER (WHERE m ->> 'type' = 'truncate'), max((m ->> 'created_at')::timestamptz)
      INTO v_truncate, v_latest
    FROM jsonb_array_elements(sync_apply.messages) m;
    IF v_truncate IS NOT NULL AND sync_apply.source_format = 'cdc' THEN
        IF v_delete = '"delete"' THEN
            EXECUTE format('DELETE FROM %s', v_tbl);
        ELSIF v_soft IS NOT NULL THEN
            EXECUTE format('UPDATE %s SET %I = %s', v_tbl, v_soft, v_soft_val);
        END IF;
        DELETE FROM pgrelay.sync_row_versions v WHERE v.name = sync_apply.name;
        UPDATE pgrelay.sync_checkpoints c SET truncate_position = greatest(c.truncate_position, v_truncate) WHERE c.name = sync_apply.name;
        v_cp.truncate_position := greatest(v_cp.truncate_position, v_truncate);
    END IF;

    IF to_regclass('pg_temp.pgrelay_sync_batch') IS NULL THEN
        CREATE TEMP TABLE pgrelay_sync_batch (row_key text, pos bigint, is_delete boolean, obj jsonb) ON COMMIT DELETE ROWS;
    END IF;
    DELETE FROM pgrelay_sync_batch;
    EXECUTE format($q$
        INSERT INTO pgrelay_sync_batch (row_key, pos, is_delete, obj)
        SELECT DISTINCT ON (k.row_key) k.row_key, k.pos, k.is_delete, k.obj
        FROM (
            SELECT %1$s AS row_key, ch.pos, ch.is_delete, ch.obj
            FROM (
                SELECT m.pos, m.is_delete, %2$s AS obj
                FROM (
                    SELECT (e ->> 'position')::bigint AS pos, x.is_delete, x.img
                    FROM jsonb_array_elements($1) AS e
                    CROSS JOIN LATERAL (
                        SELECT CASE WHEN $2 = 'cdc' THEN e ->> 'type' = 'delete'
                                    ELSE e ->> 'type' IN (SELECT jsonb_array_elements_text(coalesce($3, '[]'))) END,
                               CASE WHEN $2 = 'cdc' THEN coalesce(nullif(e -> 'data' -> 'after', 'null'), e -> 'data' -> 'before') ELSE e -> 'data' END
                        UNION ALL
                        -- An update may change the key: the before image's key is deleted. When the
                        -- key did not change, the upsert of the same position wins (ORDER BY below).
                        SELECT true, e -> 'data' -> 'before'
                        WHERE $2 = 'cdc' AND e ->> 'type' = 'update' AND jsonb_typeof(e -> 'data' -> 'before') = 'object'
                    ) AS x(is_delete, img)
                    WHERE NOT (e ->> 'type' = 'truncate' AND $2 = 'cdc') AND (e ->> 'position')::bigint > $4
                ) AS m(pos, is_delete, img)
            ) AS ch(pos, is_delete, obj)
        ) AS k
        ORDER BY k.row_key, k.pos DESC, k.is_delete
    $q$, v_keyexpr, v_map)
    USING sync_apply.messages, sync_apply.source_format, target -> 'delete_types', v_cp.truncate_position;

    SELECT format('message at position %s maps to a row without its key columns %s', b.pos, target -> 'key_columns') INTO v_bad
    FROM pgrelay_sync_batch b
    WHERE EXISTS (SELECT 1 FROM unnest(v_keys) k WHERE b.obj -> k IS NULL OR b.obj -> k = 'null')
    LIMIT 1;
    IF v_bad IS NOT NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'messages', v_bad);
    END IF;

    -- One pass over the row versions, one index probe per key of the batch (already collapsed to
    -- its last change per key): a key is recorded at the batch's position unless the row already
    -- reflects a newer one; the keys not recorded are stale and leave the batch unapplied.
    WITH fresh AS (
        INSERT INTO pgrelay.sync_row_versions AS v (name, row_key, position, deleted)
        SELECT sync_apply.name, b.row_key, b.pos, b.is_delete FROM pgrelay_sync_batch b
        ON CONFLICT ON CONSTRAINT sync_row_versions_pkey DO UPDATE SET position = excluded.position, deleted = excluded.deleted
        WHERE v.position < excluded.position
        RETURNING v.row_key
    )
    DELETE FROM pgrelay_sync_batch b WHERE NOT EXISTS (SELECT 1 FROM fresh f WHERE f.row_key = b.row_key);
    GET DIAGNOSTICS v_stale = ROW_COUNT;

    EXECUTE format($q$
        INSERT INTO %1$s AS t (%2$s)
        SELECT %3$s FROM pgrelay_sync_batch b, jsonb_populate_record(NULL::%1$s, b.obj) AS r
        WHERE NOT b.is_delete
        ON CONFLICT (%4$s) DO %5$s
    $q$, v_tbl,
         (SELECT string_agg(format('%I', c), ', ') FROM unnest(v_cols) c),
         (SELECT string_agg(format('r.%I', c), ', ') FROM unnest(v_cols) c),
         (SELECT string_agg(format('%I', k), ', ') FROM unnest(v_keys) k),
         CASE WHEN v_set = '' AND v_soft IS NULL THEN 'NOTHING'
              ELSE 'UPDATE SET ' || array_to_string(ARRAY[nullif(v_set, ''), CASE WHEN v_soft IS NOT NULL THEN format('%I = %s', v_soft, v_soft_undo) END], ', ') END);
    IF v_delete = '"delete"' THEN
        EXECUTE format('DELETE FROM %s AS t USING pgrelay_sync_batch b, jsonb_populate_record(NULL::%s, b.obj) AS r WHERE b.is_delete AND %s',
                       v_tbl, v_tbl, v_join);
    ELSIF v_soft IS NOT NULL THEN
        EXECUTE format('UPDATE %s AS t SET %I = %s FROM pgrelay_sync_batch b, jsonb_populate_record(NULL::%s, b.obj) AS r WHERE b.is_delete AND %s',
                       v_tbl, v_soft, v_soft_val, v_tbl, v_join);
    END IF;

    SELECT count(*) INTO v_applied FROM pgrelay_sync_batch;

    UPDATE pgrelay.sync_checkpoints c
       SET cursor_xid = sync_apply.to_xid, cursor_position = sync_apply.to_position,
           applied = c.applied + v_applied, skipped_stale = c.skipped_stale + v_stale,
           last_applied_at = clock_timestamp(), last_source_at = coalesce(v_latest, c.last_source_at)
     WHERE c.name = sync_apply.name;
    RETURN v_applied;
END;
$$;
