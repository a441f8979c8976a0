-- pgrelay._consumer_alive(subscription, consumer, lease_seconds): record that a consumer of a
-- subscription is alive and return how many consumers are (itself included). A consumer not seen
-- for lease_seconds is gone. Cheap on the hot path: one indexed read of the subscription's few
-- consumer rows; the consumer's own row is written only when it is older than a quarter of
-- lease_seconds (and then rows gone for long are swept), so the many pull loops of one daemon do
-- not queue on its row.
CREATE OR REPLACE FUNCTION pgrelay._consumer_alive(p_subscription text, p_consumer text, p_lease_seconds numeric)
RETURNS integer
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_now    constant timestamptz := clock_timestamp();
    v_lease  constant interval := make_interval(secs => p_lease_seconds::double precision);
    v_live   integer;
    v_seen   timestamptz;
BEGIN
    SELECT count(*) FILTER (WHERE c.seen_at > v_now - v_lease),
           max(c.seen_at) FILTER (WHERE c.consumer = p_consumer)
      INTO v_live, v_seen
      FROM pgrelay.subscription_consumers c
     WHERE c.subscription = p_subscription;
    IF v_seen IS NULL OR v_seen <= v_now - v_lease / 4 THEN
        INSERT INTO pgrelay.subscription_consumers AS c (subscription, consumer, seen_at)
        VALUES (p_subscription, p_consumer, v_now)
        ON CONFLICT (subscription, consumer) DO UPDATE SET seen_at = greatest(c.seen_at, excluded.seen_at);
        -- SKIP LOCKED: two consumers sweeping at once never wait on each other's rows.
        DELETE FROM pgrelay.subscription_consumers c
         WHERE c.ctid IN (SELECT g.ctid FROM pgrelay.subscription_consumers g
                           WHERE g.subscription = p_subscription AND g.seen_at < v_now - v_lease * 10
                           FOR UPDATE SKIP LOCKED);
        IF v_seen IS NULL OR v_seen <= v_now - v_lease THEN
            v_live := v_live + 1; -- itself, not counted as alive above
        END IF;
    END IF;
    RETURN v_live;
END;
$$;
