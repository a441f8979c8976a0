-- pgrelay.subscription_reset(subscription, from_position, from_time): replay.
-- Moves every partition's cursor back so that every message with position >= from_position
-- (or created at or after from_time) is delivered again; with neither, from the beginning.
-- Walk order is by transaction id, so a few messages just before the point may come again too
-- (delivery is at least once). Pending retries and in-flight leases are dropped.
CREATE OR REPLACE FUNCTION pgrelay.subscription_reset(
    subscription  text,
    from_position bigint      DEFAULT NULL,
    from_time     timestamptz DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_sub pgrelay.subscriptions;
    v_xid xid8;
BEGIN
    v_sub := pgrelay._subscription('pgrelay.subscription_reset', subscription_reset.subscription);
    IF from_position IS NOT NULL AND from_time IS NOT NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.subscription_reset', 'from_position', 'and from_time cannot both be given');
    END IF;
    IF from_position IS NOT NULL AND from_position < 0 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.subscription_reset', 'from_position', format('must be >= 0, got %s', from_position));
    END IF;
    SELECT min(m.xid) INTO v_xid FROM pgrelay.messages m
    WHERE (from_position IS NULL OR m.position >= from_position)
      AND (from_time IS NULL OR m.created_at >= from_time);
    IF v_xid IS NULL AND (from_position IS NOT NULL OR from_time IS NOT NULL) THEN
        -- Nothing at or after the point yet: deliver what commits from now on.
        v_xid := pg_snapshot_xmin(pg_current_snapshot());
    END IF;
    UPDATE pgrelay.subscription_partitions p
       SET cursor_xid = CASE WHEN v_xid IS NULL OR v_xid = '0' THEN '0'
                             ELSE (v_xid::text::numeric - 1)::text::xid8 END,
           cursor_position = CASE WHEN v_xid IS NULL OR v_xid = '0' THEN 0 ELSE 9223372036854775807 END,
           lease_owner = NULL, lease_expires_at = NULL, lease_token = p.lease_token + 1,
           inflight_xids = '{}', inflight_positions = '{}', inflight_retries = '{}',
           inflight_ahead_xids = '{}', inflight_ahead_positions = '{}'
     WHERE p.subscription = v_sub.name;
    DELETE FROM pgrelay.delivered_ahead d WHERE d.subscription = v_sub.name;
    DELETE FROM pgrelay.retries r WHERE r.subscription = v_sub.name;
    PERFORM pgrelay._ring_doorbell('pgrelay.reset');
END;
$$;
