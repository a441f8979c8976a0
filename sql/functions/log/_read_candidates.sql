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
LANGUAGE sql
STABLE
AS $$
    WITH horizon AS MATERIALIZED (
        SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
    ),
    candidates AS MATERIALIZED (
        SELECT m.*
        FROM pgrelay.messages AS m
        WHERE (m.xid, m.position) > (p_after_xid, p_after_position)
          AND m.xid < (SELECT h.xmin FROM horizon AS h)
          AND pgrelay._topic_matches(m.topic, p_topics)
          AND pgrelay._partition_of(m.key, m.id, p_partitions) = p_partition
          AND m.position <> ALL (p_skip)
        ORDER BY m.xid, m.position
        LIMIT p_limit
    )
    SELECT ROW(c.position, c.xid, c.id, c.topic, c.key, c.type, c.data, c.metadata, c.created_at)::pgrelay.message_record,
           c.xid, c.position, b.xid, b.position, b.xid >= (SELECT h.xmin FROM horizon AS h)
    FROM candidates AS c
    LEFT JOIN LATERAL (
        SELECT o.xid, o.position
        FROM pgrelay.messages AS o
        WHERE c.key IS NOT NULL
          AND o.topic = c.topic
          AND o.key = c.key
          AND o.xid > c.xid
          AND (c.next_xid IS NULL OR o.xid < c.next_xid)
          AND o.position < c.position
          AND o.position <> ALL (p_skip)
        ORDER BY o.xid DESC, o.position DESC
        LIMIT 1
    ) AS b ON true
    ORDER BY c.xid, c.position
$$;
