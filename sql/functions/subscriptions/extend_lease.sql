-- pgrelay.extend_lease(subscription, partition_index, lease_token, lease_seconds): heartbeat for
-- a long batch. Raises PR005 if the lease was lost in the meantime. It also keeps the lease
-- holder counted as a live consumer (fair share, see fetch_batch).
CREATE OR REPLACE FUNCTION pgrelay.extend_lease(
    subscription    text,
    partition_index integer,
    lease_token     bigint,
    lease_seconds   numeric DEFAULT NULL
)
RETURNS timestamptz
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_sub     pgrelay.subscriptions;
    v_part    pgrelay.subscription_partitions;
    v_expires timestamptz;
BEGIN
    v_part := pgrelay._lease('pgrelay.extend_lease', extend_lease.subscription, extend_lease.partition_index, extend_lease.lease_token);
    v_sub := pgrelay._subscription('pgrelay.extend_lease', extend_lease.subscription);
    IF extend_lease.lease_seconds IS NOT NULL AND (extend_lease.lease_seconds <= 0 OR extend_lease.lease_seconds > 3600) THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.extend_lease', 'lease_seconds', format('must be in (0, 3600], got %s', extend_lease.lease_seconds));
    END IF;
    UPDATE pgrelay.subscription_partitions p
       SET lease_expires_at = clock_timestamp()
                              + make_interval(secs => coalesce(extend_lease.lease_seconds, v_sub.lease_seconds)::double precision)
     WHERE p.subscription = v_sub.name AND p.partition_index = extend_lease.partition_index
    RETURNING p.lease_expires_at INTO v_expires;
    PERFORM pgrelay._consumer_alive(v_sub.name, v_part.lease_owner, v_sub.lease_seconds);
    RETURN v_expires;
END;
$$;
