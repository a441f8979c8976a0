-- pgrelay.subscription_lag(subscription): per partition, how far behind the log it is:
-- pending messages after the cursor (counted up to 1,000,000), the age in seconds of the oldest
-- of them, retries waiting and dead letters. NULL subscription: every subscription; a name
-- that is no subscription raises PR003 (an empty answer would read as "no lag").
CREATE OR REPLACE FUNCTION pgrelay.subscription_lag(subscription text DEFAULT NULL)
RETURNS TABLE (
    subscription_name text,
    partition_index   integer,
    pending           bigint,
    lag_seconds       double precision,
    retrying          bigint,
    dead              bigint,
    delivered         bigint,
    paused            boolean,
    lease_owner       text
)
LANGUAGE plpgsql
STABLE
AS $$
#variable_conflict use_column
BEGIN
    IF subscription_lag.subscription IS NOT NULL THEN
        PERFORM pgrelay._subscription('pgrelay.subscription_lag', subscription_lag.subscription);
    END IF;
    RETURN QUERY
    SELECT s.name, p.partition_index,
           (SELECT count(*) FROM (
                SELECT 1 FROM pgrelay.messages m
                WHERE (m.xid, m.position) > (p.cursor_xid, p.cursor_position)
                  AND pgrelay._topic_matches(m.topic, s.topics)
                  AND pgrelay._partition_of(m.key, m.id, s.partitions) = p.partition_index
                  AND NOT EXISTS (SELECT 1 FROM pgrelay.delivered_ahead d
                                  WHERE d.subscription = s.name AND d.partition_index = p.partition_index
                                    AND d.xid = m.xid AND d.position = m.position)
                LIMIT 1000000) AS q),
           coalesce((SELECT extract(epoch FROM clock_timestamp() - min(m.created_at))::double precision FROM (
                SELECT m.created_at FROM pgrelay.messages m
                WHERE (m.xid, m.position) > (p.cursor_xid, p.cursor_position)
                  AND pgrelay._topic_matches(m.topic, s.topics)
                  AND pgrelay._partition_of(m.key, m.id, s.partitions) = p.partition_index
                  AND NOT EXISTS (SELECT 1 FROM pgrelay.delivered_ahead d
                                  WHERE d.subscription = s.name AND d.partition_index = p.partition_index
                                    AND d.xid = m.xid AND d.position = m.position)
                ORDER BY m.xid, m.position
                LIMIT 1000) AS m), 0),
           (SELECT count(*) FROM pgrelay.retries r WHERE r.subscription = s.name AND r.partition_index = p.partition_index),
           (SELECT count(*) FROM pgrelay.dead_letters d WHERE d.subscription = s.name
              AND pgrelay._partition_of((d.message).key, (d.message).id, s.partitions) = p.partition_index),
           p.delivered_count, s.paused, p.lease_owner
    FROM pgrelay.subscriptions s
    JOIN pgrelay.subscription_partitions p ON p.subscription = s.name
    WHERE subscription_lag.subscription IS NULL OR s.name = subscription_lag.subscription
    ORDER BY s.name, p.partition_index;
END;
$$;
