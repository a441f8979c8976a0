-- pgrelay.sync_read(topics, after_xid, after_position, max_messages): in the SOURCE database, the
-- next gapless batch after a sync's checkpoint (pgrelay._sync_walk), already as the JSON array
-- pgrelay.sync_apply takes in the target ([{position, type, data, created_at}] in position order),
-- with its size and the cursor the checkpoint moves to. One text value: the daemon passes it on
-- without decoding it.
-- key_fields (CDC only): the source fields the target key is built from; an update that changes
-- none of them travels without its before image (sync_apply needs it only for key changes).
-- A short batch (fewer than max_messages) means the walk passed every message below the horizon,
-- so the cursor moves to (horizon, 0) even past the last message returned: a sync of a rare topic
-- in a busy log does not rescan other topics' messages on every read. With no message returned it
-- does so only once the horizon is 1,000 transactions past the cursor (the caller then writes a
-- checkpoint with an empty batch; one write per idle read would be a write for nothing); otherwise
-- to_xid/to_position are NULL. The horizon is taken before the walk, whose own horizon can only be
-- the same or later.
CREATE OR REPLACE FUNCTION pgrelay.sync_read(topics text[], after_xid xid8, after_position bigint, max_messages integer DEFAULT 2000,
                                             key_fields text[] DEFAULT NULL,
                                             OUT messages_count integer, OUT messages text, OUT to_xid xid8, OUT to_position bigint)
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v_fn      constant text := 'pgrelay.sync_read';
    v_horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
BEGIN
    PERFORM pgrelay._check_topic_patterns(v_fn, 'topics', sync_read.topics);
    IF sync_read.after_xid IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'after_xid', 'must not be null (start from ''0'')');
    END IF;
    IF sync_read.after_position IS NULL OR sync_read.after_position < 0 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'after_position', 'must be a position >= 0');
    END IF;
    IF sync_read.max_messages IS NULL OR sync_read.max_messages NOT BETWEEN 1 AND 100000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'max_messages', 'must be between 1 and 100000');
    END IF;
    -- One pass over the walk (pgrelay._sync_walk): the JSON, the count and the last (xid, position).
    -- json, not jsonb: building text is cheaper, and the target parses it once anyway.
    WITH b AS MATERIALIZED (
        SELECT * FROM pgrelay._sync_walk(sync_read.topics, sync_read.after_xid, sync_read.after_position, sync_read.max_messages)
    )
    SELECT count(*)::integer,
           json_agg(json_build_object('position', b.position, 'type', b.type,
                                      'data', CASE WHEN b.type = 'update' AND sync_read.key_fields IS NOT NULL
                                                        AND NOT EXISTS (SELECT 1 FROM unnest(sync_read.key_fields) AS k
                                                                        WHERE b.data -> 'before' -> k IS DISTINCT FROM b.data -> 'after' -> k)
                                                   THEN jsonb_build_object('after', b.data -> 'after')
                                                   ELSE b.data END,
                                      'created_at', b.created_at) ORDER BY b.position)::text,
           (SELECT l.xid FROM b AS l ORDER BY l.xid DESC, l.position DESC LIMIT 1),
           (SELECT l.position FROM b AS l ORDER BY l.xid DESC, l.position DESC LIMIT 1)
      INTO messages_count, messages, to_xid, to_position
      FROM b;
    IF messages_count < sync_read.max_messages
       AND (v_horizon, 0::bigint) > (coalesce(to_xid, sync_read.after_xid), coalesce(to_position, sync_read.after_position))
       AND (messages_count > 0 OR v_horizon::text::numeric - sync_read.after_xid::text::numeric >= 1000) THEN
        to_xid := v_horizon;
        to_position := 0;
    END IF;
END;
$$;
