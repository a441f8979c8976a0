-- pgrelay._sync_walk(topics, after_xid, after_position, max_messages): the next batch a sync reads
-- after its checkpoint: up to max_messages messages of the topics after (after_xid,
-- after_position), in (xid, position) walk order, below the visibility horizon (every transaction
-- there has ended, so a message committing late is never skipped: the walk is gapless).
--
-- Unlike pgrelay._read_walk it does not hold a message back for an older message of its key in a
-- younger transaction: a sync does not need that delivery order, because pgrelay.sync_apply keeps
-- per-key order itself by position (a change older than the one a target row reflects is skipped
-- as stale; within a batch only each key's newest change counts). That makes the read one index
-- range scan, with no window over the candidates.
--
-- enable_sort is off for the function so the plan stays an ordered scan of the primary key that
-- stops at the limit, whatever the statistics say (a fresh, unanalysed log otherwise gets a
-- bitmap scan of the whole backlog and a sort, per batch).
CREATE OR REPLACE FUNCTION pgrelay._sync_walk(p_topics text[], p_after_xid xid8, p_after_position bigint, p_limit integer)
RETURNS TABLE (xid xid8, "position" bigint, type text, data jsonb, created_at timestamptz)
LANGUAGE plpgsql
STABLE
SET enable_sort = off
AS $$
DECLARE
    v_horizon    xid8 := pg_snapshot_xmin(pg_current_snapshot());
    v_exact      text[] := ARRAY(SELECT t FROM unnest(p_topics) AS t WHERE right(t, 1) <> '*');
    v_prefixes   text[] := ARRAY(SELECT left(t, -1) FROM unnest(p_topics) AS t WHERE right(t, 1) = '*');
    v_any_prefix boolean;
BEGIN
    v_any_prefix := cardinality(v_prefixes) > 0;
    RETURN QUERY
    SELECT m.xid, m.position, m.type, m.data, m.created_at
    FROM pgrelay.messages AS m
    WHERE (m.xid, m.position) > (p_after_xid, p_after_position)
      AND m.xid < v_horizon
      AND (m.topic = ANY (v_exact)
           OR (v_any_prefix AND EXISTS (SELECT 1 FROM unnest(v_prefixes) AS p WHERE starts_with(m.topic, p))))
    ORDER BY m.xid, m.position
    LIMIT p_limit;
END;
$$;
