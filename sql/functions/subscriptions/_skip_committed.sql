-- pgrelay._skip_committed(subscription, before_position, before_time): mark as delivered the
-- committed messages after each partition's cursor that lie before a starting point.
--
-- A cursor can only be placed below the horizon (xmin - 1): transactions above it may still be
-- open, and their messages must come. But some transactions above the horizon have already
-- committed, and their messages are as old as the starting point's past. Those visible to this
-- transaction are recorded in delivered_ahead so the walk passes them (start "latest", a reset
-- to a point). before_position / before_time: only messages before that point are skipped
-- (NULL for both: every visible one). Messages still in flight are not visible here and come.
CREATE OR REPLACE FUNCTION pgrelay._skip_committed(p_subscription text, p_before_position bigint, p_before_time timestamptz)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_count bigint;
BEGIN
    INSERT INTO pgrelay.delivered_ahead (subscription, partition_index, xid, position)
    SELECT p.subscription, p.partition_index, m.xid, m.position
    FROM pgrelay.subscriptions s
    JOIN pgrelay.subscription_partitions p ON p.subscription = s.name
    JOIN pgrelay.messages m
      ON (m.xid, m.position) > (p.cursor_xid, p.cursor_position)
     AND pgrelay._topic_matches(m.topic, s.topics)
     AND pgrelay._partition_of(m.key, m.id, s.partitions) = p.partition_index
    WHERE s.name = p_subscription
      AND (p_before_position IS NULL OR m.position < p_before_position)
      AND (p_before_time IS NULL OR m.created_at < p_before_time)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;
