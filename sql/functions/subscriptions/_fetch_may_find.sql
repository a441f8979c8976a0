-- pgrelay._fetch_may_find(subscription, partition): a cheap, read-only "is there anything to
-- fetch here?" asked before pgrelay.fetch_batch locks a partition. Locking a partition row (FOR
-- UPDATE) gives the transaction an xid, writes WAL and makes its commit wait for a WAL flush,
-- and reading the retry chains and the log window costs more again: an idle consumer polling a
-- quiet subscription should pay none of that. True when a retry of the partition is due, or when
-- a log message of the subscription's topics and this partition lies after the cursor and below
-- the read horizon. It may say true when the batch turns out empty (a message delivered ahead,
-- or parked behind a retry); it never says false when there is work.
CREATE OR REPLACE FUNCTION pgrelay._fetch_may_find(p_sub pgrelay.subscriptions, p_part pgrelay.subscription_partitions)
RETURNS boolean
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
    v_all        boolean := p_sub.topics IS NULL;
    v_exact      text[] := ARRAY(SELECT t FROM unnest(p_sub.topics) AS t WHERE right(t, 1) <> '*');
    v_prefixes   text[] := ARRAY(SELECT left(t, -1) FROM unnest(p_sub.topics) AS t WHERE right(t, 1) = '*');
    v_any_prefix boolean;
BEGIN
    IF EXISTS (SELECT 1 FROM pgrelay.retries r
               WHERE r.subscription = p_sub.name AND r.partition_index = p_part.partition_index
                 AND r.next_attempt_at <= clock_timestamp()) THEN
        RETURN true;
    END IF;
    IF p_part.cursor_xid >= v_horizon THEN
        RETURN false; -- nothing below the horizon lies after the cursor
    END IF;
    v_any_prefix := cardinality(v_prefixes) > 0;
    -- The same walk as pgrelay._read_pull, stopped at the first match.
    RETURN EXISTS (
        SELECT 1
        FROM pgrelay.messages AS m
        WHERE (m.xid, m.position) > (p_part.cursor_xid, p_part.cursor_position)
          AND m.xid < v_horizon
          AND (v_all OR m.topic = ANY (v_exact)
               OR (v_any_prefix AND EXISTS (SELECT 1 FROM unnest(v_prefixes) AS p WHERE starts_with(m.topic, p))))
          AND (p_sub.partitions = 1 OR abs(hashtextextended(coalesce(m.key, m.id::text), 0) % p_sub.partitions) = p_part.partition_index)
        ORDER BY m.xid, m.position
        LIMIT 1);
END;
$$;
