-- pgrelay._read_pull(...): the subscription read. Like pgrelay._read_walk it walks (xid, position)
-- below the horizon, but it never holds a batch back: when a keyed message c waits for a
-- same-key message o with a smaller position and a younger xid (see _read_candidates), o is
-- committed and visible, so it is pulled forward into this batch instead, together with what o
-- itself waits for. The caller remembers pulled messages (pgrelay.delivered_ahead) and skips
-- them when the walk reaches them. This keeps per-key position order without the stall a
-- held-back prefix suffers while serialised producers keep a chain of such inversions open.
-- Rows: the walk window (walk = true), then the pulled messages (walk = false).
CREATE OR REPLACE FUNCTION pgrelay._read_pull(
    p_after_xid      xid8,
    p_after_position bigint,
    p_limit          integer,
    p_topics         text[],
    p_partition      integer,
    p_partitions     integer,
    p_skip           bigint[]
)
RETURNS TABLE (message pgrelay.message_record, walk boolean)
LANGUAGE plpgsql
STABLE
-- The walk must be an index scan of the primary key in (xid, position) order that stops at the
-- limit. Planned with the actual cursor (PL/pgSQL's first five calls on a connection, and after
-- any replan) and stale statistics after a burst of publishes, the planner prefers a bitmap scan
-- of everything after the cursor plus a sort: 150 ms instead of 2 ms per batch on a 100,000
-- message backlog. Scans that need a sort or read the whole tail are switched off here.
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
DECLARE
    v_horizon    xid8 := pg_snapshot_xmin(pg_current_snapshot());
    v_all        boolean := p_topics IS NULL;
    v_exact      text[] := ARRAY(SELECT t FROM unnest(p_topics) AS t WHERE right(t, 1) <> '*');
    v_prefixes   text[] := ARRAY(SELECT left(t, -1) FROM unnest(p_topics) AS t WHERE right(t, 1) = '*');
    v_any_prefix boolean;
BEGIN
    v_any_prefix := cardinality(v_prefixes) > 0;
    RETURN QUERY
    WITH RECURSIVE walk_window AS MATERIALIZED (
        SELECT m.position, m.xid, m.next_xid, m.id, m.topic, m.key, m.type, m.data, m.metadata, m.created_at
        FROM pgrelay.messages AS m
        WHERE (m.xid, m.position) > (p_after_xid, p_after_position)
          AND m.xid < v_horizon
          AND (v_all OR m.topic = ANY (v_exact)
               OR (v_any_prefix AND EXISTS (SELECT 1 FROM unnest(v_prefixes) AS p WHERE starts_with(m.topic, p))))
          AND (p_partitions = 1 OR abs(hashtextextended(coalesce(m.key, m.id::text), 0) % p_partitions) = p_partition)
          AND (cardinality(p_skip) = 0 OR m.position <> ALL (p_skip))
        ORDER BY m.xid, m.position
        LIMIT p_limit
    ), pulled AS (
        SELECT o.position, o.xid, o.next_xid, o.id, o.topic, o.key, o.type, o.data, o.metadata, o.created_at
        FROM walk_window AS c
        JOIN pgrelay.messages AS o
          ON c.key IS NOT NULL
         -- Implied by the xid range below; checked first, it spares an index probe for every row
         -- whose publisher saw no younger transaction (a backlog written by one session).
         AND coalesce(c.next_xid > c.xid, true)
         AND o.topic = c.topic
         AND o.key = c.key
         AND o.xid > c.xid
         AND o.xid < coalesce(c.next_xid, '18446744073709551615'::xid8)
         AND o.position < c.position
        WHERE (cardinality(p_skip) = 0 OR o.position <> ALL (p_skip))
          AND NOT EXISTS (SELECT 1 FROM walk_window AS w WHERE w.xid = o.xid AND w.position = o.position)
        UNION
        SELECT o.position, o.xid, o.next_xid, o.id, o.topic, o.key, o.type, o.data, o.metadata, o.created_at
        FROM pulled AS c
        JOIN pgrelay.messages AS o
          ON o.topic = c.topic
         AND o.key = c.key
         AND o.xid > c.xid
         AND o.xid < coalesce(c.next_xid, '18446744073709551615'::xid8)
         AND o.position < c.position
        WHERE (cardinality(p_skip) = 0 OR o.position <> ALL (p_skip))
          AND NOT EXISTS (SELECT 1 FROM walk_window AS w WHERE w.xid = o.xid AND w.position = o.position)
    )
    SELECT ROW(w.position, w.xid, w.id, w.topic, w.key, w.type, w.data, w.metadata, w.created_at)::pgrelay.message_record, true
    FROM walk_window AS w
    UNION ALL
    SELECT ROW(p.position, p.xid, p.id, p.topic, p.key, p.type, p.data, p.metadata, p.created_at)::pgrelay.message_record, false
    FROM (SELECT DISTINCT * FROM pulled) AS p;
END;
$$;
