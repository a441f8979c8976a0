-- pgrelay._read_candidates(...): the window a reader may deliver from, with what each row waits for.
--
-- Rows: messages after the cursor (xid, position), in (xid, position) walk order, whose xid is
-- below the visibility horizon pg_snapshot_xmin(pg_current_snapshot()). Every transaction below
-- the horizon has ended, so no message can appear there later: a walk in this order never skips
-- a message that commits late.
--
-- reach_xid/reach_position: for a keyed row c, the greatest (xid, position) of a visible,
-- undelivered message o of the same (topic, key) with a smaller position but a younger xid. o
-- committed before c was written (publishers of a key are serialised), so per-key order needs o
-- delivered first. Such an o has an xid in (c.xid, c.next_xid) (see migrations/001), which keeps
-- the search to transactions that overlapped c's. held: o lies above the horizon, so c cannot
-- go out before the horizon passes o.
--
-- PL/pgSQL rather than SQL so the plans are cached; topic patterns are split once into exact
-- topics and prefixes so the per-row filter is plain expressions, and the scan follows the
-- primary key in order and stops at the limit.
CREATE OR REPLACE FUNCTION pgrelay._read_candidates(
    p_after_xid      xid8,
    p_after_position bigint,
    p_limit          integer,
    p_topics         text[],
    p_partition      integer,
    p_partitions     integer,
    p_skip           bigint[]
)
RETURNS TABLE (
    message        pgrelay.message_record,
    walk_xid       xid8,
    walk_position  bigint,
    reach_xid      xid8,
    reach_position bigint,
    held           boolean
)
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v_horizon  xid8 := pg_snapshot_xmin(pg_current_snapshot());
    v_all      boolean := p_topics IS NULL;
    v_exact    text[] := ARRAY(SELECT t FROM unnest(p_topics) AS t WHERE right(t, 1) <> '*');
    v_prefixes text[] := ARRAY(SELECT left(t, -1) FROM unnest(p_topics) AS t WHERE right(t, 1) = '*');
    v_any_prefix boolean;
BEGIN
    v_any_prefix := cardinality(v_prefixes) > 0;
    RETURN QUERY
    WITH candidates AS MATERIALIZED (
        SELECT m.*
        FROM pgrelay.messages AS m
        WHERE (m.xid, m.position) > (p_after_xid, p_after_position)
          AND m.xid < v_horizon
          AND (v_all OR m.topic = ANY (v_exact)
               OR (v_any_prefix AND EXISTS (SELECT 1 FROM unnest(v_prefixes) AS p WHERE starts_with(m.topic, p))))
          AND (p_partitions = 1 OR abs(hashtextextended(coalesce(m.key, m.id::text), 0) % p_partitions) = p_partition)
          AND (cardinality(p_skip) = 0 OR m.position <> ALL (p_skip))
        ORDER BY m.xid, m.position
        LIMIT p_limit
    )
    SELECT ROW(c.position, c.xid, c.id, c.topic, c.key, c.type, c.data, c.metadata, c.created_at)::pgrelay.message_record,
           c.xid, c.position, b.xid, b.position, coalesce(b.xid >= v_horizon, false)
    FROM candidates AS c
    LEFT JOIN LATERAL (
        SELECT o.xid, o.position
        FROM pgrelay.messages AS o
        WHERE c.key IS NOT NULL
          AND o.topic = c.topic
          AND o.key = c.key
          AND o.xid > c.xid
          AND o.xid < coalesce(c.next_xid, '18446744073709551615'::xid8)
          AND o.position < c.position
          AND (cardinality(p_skip) = 0 OR o.position <> ALL (p_skip))
        ORDER BY o.xid DESC, o.position DESC
        LIMIT 1
    ) AS b ON true
    ORDER BY c.xid, c.position;
END;
$$;
