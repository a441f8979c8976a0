-- Projections: read models fed by the log, exactly once in effect.
--
-- pgrelay.projection_define(name, topics, handler, reset_handler, start) registers a projection.
-- handler is a function (message jsonb) RETURNS void, called for each matching message in log
-- order with {"id", "topic", "key", "type", "data", "metadata", "position", "created_at"}.
-- reset_handler (optional, () RETURNS void) empties the read model for a rebuild.
-- start: 'earliest' (default) or 'latest'.
CREATE OR REPLACE FUNCTION pgrelay._check_handler(p_function text, p_argument text, p_handler regprocedure, p_args oid[])
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_handler IS NULL OR NOT EXISTS (
        SELECT 1 FROM pg_proc p WHERE p.oid = p_handler
          AND coalesce((SELECT array_agg(t ORDER BY n) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, n)), '{}') = p_args) THEN
        PERFORM pgrelay._raise('PR001', p_function, p_argument,
            format('must be a function taking (%s)', (SELECT string_agg(format_type(a, NULL), ', ') FROM unnest(p_args) AS a)));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION pgrelay.projection_define(
    name          text,
    topics        text[],
    handler       regprocedure,
    reset_handler regprocedure DEFAULT NULL,
    start         text         DEFAULT 'earliest'
)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn              constant text := 'pgrelay.projection_define';
    v_cursor_xid      xid8 := '0';
    v_cursor_position bigint := 0;
    v_skip_xids       xid8[] := '{}';
    v_skip_positions  bigint[] := '{}';
BEGIN
    PERFORM pgrelay._check_name(v_fn, 'name', projection_define.name);
    PERFORM pgrelay._check_topic_patterns(v_fn, 'topics', projection_define.topics);
    PERFORM pgrelay._check_handler(v_fn, 'handler', projection_define.handler, ARRAY['jsonb'::regtype::oid]);
    IF projection_define.reset_handler IS NOT NULL THEN
        PERFORM pgrelay._check_handler(v_fn, 'reset_handler', projection_define.reset_handler, '{}');
    END IF;
    IF projection_define.start IS NULL OR projection_define.start NOT IN ('earliest', 'latest') THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'start', 'must be ''earliest'' or ''latest''');
    END IF;
    IF projection_define.start = 'latest' THEN
        -- The cursor can only sit below the horizon; transactions above it that have already
        -- committed are history too, so their messages are listed to be skipped.
        v_cursor_xid := (pg_snapshot_xmin(pg_current_snapshot())::text::numeric - 1)::text::xid8;
        v_cursor_position := 9223372036854775807;
        SELECT coalesce(array_agg(m.xid ORDER BY m.xid, m.position), '{}'),
               coalesce(array_agg(m.position ORDER BY m.xid, m.position), '{}')
          INTO v_skip_xids, v_skip_positions
          FROM pgrelay.messages m
         WHERE (m.xid, m.position) > (v_cursor_xid, v_cursor_position)
           AND pgrelay._topic_matches(m.topic, projection_define.topics);
    END IF;
    INSERT INTO pgrelay.projections AS p (name, topics, handler, reset_handler, cursor_xid, cursor_position,
                                          skip_xids, skip_positions)
    VALUES (projection_define.name, projection_define.topics, projection_define.handler, projection_define.reset_handler,
            v_cursor_xid, v_cursor_position, v_skip_xids, v_skip_positions)
    ON CONFLICT ON CONSTRAINT projections_pkey DO UPDATE
        SET topics = excluded.topics, handler = excluded.handler, reset_handler = excluded.reset_handler;
END;
$$;

-- pgrelay.projection_run(name, max_messages): apply the next gapless batch to the projection and
-- advance its checkpoint in the same transaction. Returns how many messages it applied. A handler
-- that raises rolls the batch back; the error is recorded in pgrelay.projections (last_error,
-- failed_position) and the projection stays where it was. Concurrent runs of one projection
-- do not overlap: the second returns 0.
CREATE OR REPLACE FUNCTION pgrelay.projection_run(name text, max_messages integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn      constant text := 'pgrelay.projection_run';
    v_proj    pgrelay.projections;
    v_batch   pgrelay.message_record[];
    v_message pgrelay.message_record;
    v_call    text;
    v_last    pgrelay.message_record;
    v_failed  bigint;
BEGIN
    PERFORM pgrelay._check_name(v_fn, 'name', projection_run.name);
    IF projection_run.max_messages IS NULL OR projection_run.max_messages NOT BETWEEN 1 AND 100000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'max_messages', 'must be between 1 and 100000');
    END IF;
    SELECT * INTO v_proj FROM pgrelay.projections p WHERE p.name = projection_run.name FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT 1 FROM pgrelay.projections p WHERE p.name = projection_run.name) THEN
            PERFORM pgrelay._raise('PR003', v_fn, 'name', format('names no projection: %L', projection_run.name));
        END IF;
        RETURN 0; -- another run holds it
    END IF;
    v_batch := pgrelay._read_walk(v_proj.cursor_xid, v_proj.cursor_position, projection_run.max_messages,
                                  v_proj.topics, 0, 1, v_proj.skip_positions);
    IF cardinality(v_batch) = 0 THEN
        RETURN 0;
    END IF;
    v_call := format('SELECT %s($1)', v_proj.handler::oid::regproc);
    BEGIN
        FOR v_message IN SELECT m.* FROM unnest(v_batch) AS m ORDER BY m.position LOOP
            v_failed := v_message.position;
            EXECUTE v_call USING jsonb_build_object(
                'id', v_message.id, 'topic', v_message.topic, 'key', v_message.key, 'type', v_message.type,
                'data', v_message.data, 'metadata', v_message.metadata, 'position', v_message.position::text,
                'created_at', v_message.created_at);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        UPDATE pgrelay.projections p
           SET last_error = format('%s (SQLSTATE %s)', SQLERRM, SQLSTATE), failed_position = v_failed
         WHERE p.name = v_proj.name;
        RETURN 0;
    END;
    v_last := v_batch[cardinality(v_batch)];
    UPDATE pgrelay.projections p
       SET cursor_xid = v_last.xid, cursor_position = v_last.position,
           applied_count = p.applied_count + cardinality(v_batch), last_applied_at = clock_timestamp(),
           last_error = NULL, failed_position = NULL,
           skip_xids = coalesce((SELECT array_agg(k.x ORDER BY k.x, k.pos) FROM unnest(p.skip_xids, p.skip_positions) AS k(x, pos)
                                 WHERE (k.x, k.pos) > (v_last.xid, v_last.position)), '{}'),
           skip_positions = coalesce((SELECT array_agg(k.pos ORDER BY k.x, k.pos) FROM unnest(p.skip_xids, p.skip_positions) AS k(x, pos)
                                      WHERE (k.x, k.pos) > (v_last.xid, v_last.position)), '{}')
     WHERE p.name = v_proj.name;
    RETURN cardinality(v_batch);
END;
$$;

-- pgrelay.projection_rebuild(name): empty the read model (reset_handler) and start the
-- projection over from the beginning of the log, in one transaction.
CREATE OR REPLACE FUNCTION pgrelay.projection_rebuild(name text)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_proj pgrelay.projections;
BEGIN
    PERFORM pgrelay._check_name('pgrelay.projection_rebuild', 'name', projection_rebuild.name);
    SELECT * INTO v_proj FROM pgrelay.projections p WHERE p.name = projection_rebuild.name FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', 'pgrelay.projection_rebuild', 'name', format('names no projection: %L', projection_rebuild.name));
    END IF;
    IF v_proj.reset_handler IS NOT NULL THEN
        EXECUTE format('SELECT %s()', v_proj.reset_handler::oid::regproc);
    END IF;
    UPDATE pgrelay.projections p
       SET cursor_xid = '0', cursor_position = 0, applied_count = 0, last_error = NULL, failed_position = NULL,
           skip_xids = '{}', skip_positions = '{}'
     WHERE p.name = v_proj.name;
END;
$$;

-- pgrelay.projection_drop(name): forget a projection (its read model is the user's).
CREATE OR REPLACE FUNCTION pgrelay.projection_drop(name text)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    PERFORM pgrelay._check_name('pgrelay.projection_drop', 'name', projection_drop.name);
    DELETE FROM pgrelay.projections p WHERE p.name = projection_drop.name;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', 'pgrelay.projection_drop', 'name', format('names no projection: %L', projection_drop.name));
    END IF;
END;
$$;

-- pgrelay.projection_lag(name): per projection, messages not yet applied (up to 1,000,000),
-- the age of the oldest, and the last error. NULL name: all.
CREATE OR REPLACE FUNCTION pgrelay.projection_lag(name text DEFAULT NULL)
RETURNS TABLE (projection_name text, pending bigint, lag_seconds double precision, applied bigint, last_error text)
LANGUAGE sql
STABLE
AS $$
    SELECT p.name,
           (SELECT count(*) FROM (SELECT 1 FROM pgrelay.messages m
                                  WHERE (m.xid, m.position) > (p.cursor_xid, p.cursor_position)
                                    AND m.position <> ALL (p.skip_positions)
                                    AND pgrelay._topic_matches(m.topic, p.topics) LIMIT 1000000) q),
           coalesce((SELECT extract(epoch FROM clock_timestamp() - min(m.created_at))::double precision
                     FROM (SELECT m.created_at FROM pgrelay.messages m
                           WHERE (m.xid, m.position) > (p.cursor_xid, p.cursor_position)
                             AND m.position <> ALL (p.skip_positions)
                             AND pgrelay._topic_matches(m.topic, p.topics)
                           ORDER BY m.xid, m.position LIMIT 1000) m), 0),
           p.applied_count, p.last_error
    FROM pgrelay.projections p
    WHERE projection_lag.name IS NULL OR p.name = projection_lag.name
    ORDER BY p.name
$$;
