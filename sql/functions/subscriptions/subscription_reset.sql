-- pgrelay.subscription_reset(subscription, from_position, from_time): replay (or skip ahead).
-- Moves every partition's cursor so that every message with position >= from_position (or
-- created at or after from_time) is delivered again, and no committed message before that point
-- is; with neither, from the beginning. The cursor goes just below the oldest transaction that
-- holds a message at or after the point or is still open, and the committed messages above it
-- that lie before the point are marked as passed (pgrelay._skip_committed); messages of
-- transactions still open were never delivered and come. With nothing at or after the point
-- yet, what commits from now on is delivered. A from_position beyond the next position the log
-- will assign raises PR001. Pending retries and in-flight leases are dropped (their tokens no longer hold).
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
    v_fn   constant text := 'pgrelay.subscription_reset';
    v_sub  pgrelay.subscriptions;
    v_xid  xid8;
    v_next bigint;
BEGIN
    v_sub := pgrelay._subscription(v_fn, subscription_reset.subscription);
    IF from_position IS NOT NULL AND from_time IS NOT NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'from_position', 'and from_time cannot both be given');
    END IF;
    IF from_position IS NOT NULL AND from_position < 0 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'from_position', format('must be >= 0, got %s', from_position));
    END IF;
    IF from_position IS NOT NULL THEN
        SELECT CASE WHEN q.is_called THEN q.last_value + 1 ELSE q.last_value END INTO v_next
        FROM pgrelay.message_position_seq AS q;
        IF from_position > v_next THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'from_position',
                format('is past the end of the log: the next position is %s, got %s', v_next, from_position));
        END IF;
    END IF;
    -- Serialise with fetch and complete: every lease of the subscription is dropped below.
    PERFORM 1 FROM pgrelay.subscription_partitions p WHERE p.subscription = v_sub.name FOR UPDATE;

    SELECT min(m.xid) INTO v_xid FROM pgrelay.messages m
    WHERE (from_position IS NULL OR m.position >= from_position)
      AND (from_time IS NULL OR m.created_at >= from_time);
    IF from_position IS NOT NULL OR from_time IS NOT NULL THEN
        -- A transaction still open below that xid may hold a message at or after the point (or,
        -- with nothing there yet, what commits from now on): the cursor stays below the horizon.
        v_xid := least(v_xid, pg_snapshot_xmin(pg_current_snapshot()));
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
    IF from_position IS NOT NULL OR from_time IS NOT NULL THEN
        PERFORM pgrelay._skip_committed(v_sub.name, from_position, from_time);
    END IF;
    PERFORM pgrelay._ring_doorbell('pgrelay.reset');
END;
$$;
