-- pgrelay._advance_idle_cursors(subscription, partition_index): move the cursor of every free
-- partition that has nothing of its own below the read horizon to (horizon, 0). Called by
-- pgrelay.fetch_batch when it finds nothing to hand out.
--
-- Without it, a subscription of a rare topic in a busy log kept its cursor at its last message,
-- so every fetch (each doorbell ring, each safety poll) walked all other topics' messages since
-- then: 27-35 ms per empty fetch after 200,000 of them, growing until a message of its own came,
-- and retention could not remove those messages either. Safe for the same reason as the walk:
-- the horizon is taken before pgrelay._fetch_may_find looks (which takes its own, the same or
-- later), every transaction below it has ended, and _fetch_may_find says false only when no
-- message of the subscription's topics and this partition lies after the cursor and below its
-- horizon, nor a retry is due. Partitions with any retry, a lease (even expired: its batch is
-- redelivered from the cursor) or another fetch's lock are left alone. Only when the horizon is
-- 1,000 transactions or more past the cursor, or 1,000 messages or more lie between them, so an
-- idle consumer writes once per 1,000 others' transactions or messages, not on every fetch.
CREATE OR REPLACE FUNCTION pgrelay._advance_idle_cursors(p_sub pgrelay.subscriptions, p_partition integer)
RETURNS void
LANGUAGE plpgsql
-- The stretch count must be an ordered primary-key scan that stops at 1,001 rows.
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
DECLARE
    v_horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
BEGIN
    UPDATE pgrelay.subscription_partitions AS p
       SET cursor_xid = v_horizon, cursor_position = 0
     WHERE (p.subscription, p.partition_index) IN (
               SELECT c.subscription, c.partition_index
                 FROM pgrelay.subscription_partitions AS c
                WHERE c.subscription = p_sub.name
                  AND (p_partition IS NULL OR c.partition_index = p_partition)
                  AND c.lease_owner IS NULL
                  AND c.cursor_xid < v_horizon
                  AND NOT EXISTS (SELECT 1 FROM pgrelay.retries r
                                   WHERE r.subscription = c.subscription AND r.partition_index = c.partition_index)
                  AND NOT pgrelay._fetch_may_find(p_sub, c)
                  AND (c.cursor_xid::text::numeric + 1000 <= v_horizon::text::numeric
                       OR EXISTS (SELECT 1 FROM pgrelay.messages AS m
                                   WHERE (m.xid, m.position) > (c.cursor_xid, c.cursor_position) AND m.xid < v_horizon
                                   ORDER BY m.xid, m.position
                                  OFFSET 1000 LIMIT 1))
                  FOR UPDATE SKIP LOCKED);
END;
$$;
