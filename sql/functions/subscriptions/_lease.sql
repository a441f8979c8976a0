-- pgrelay._lease(fn, subscription, partition_index, lease_token): lock a partition row and check
-- the fencing token. A lease taken over by another consumer (its token bumped), released, or
-- reset raises PR005 lease_lost: the caller's batch is no longer its own to acknowledge.
CREATE OR REPLACE FUNCTION pgrelay._lease(p_function text, p_subscription text, p_partition integer, p_token bigint)
RETURNS pgrelay.subscription_partitions
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_part pgrelay.subscription_partitions;
    v_sub  pgrelay.subscriptions;
BEGIN
    v_sub := pgrelay._subscription(p_function, p_subscription);
    IF p_partition IS NULL THEN
        PERFORM pgrelay._raise('PR001', p_function, 'partition_index', 'must not be null');
    END IF;
    IF p_partition < 0 OR p_partition >= v_sub.partitions THEN
        PERFORM pgrelay._raise('PR001', p_function, 'partition_index',
            format('must be between 0 and %s, got %s', v_sub.partitions - 1, p_partition));
    END IF;
    IF p_token IS NULL THEN
        PERFORM pgrelay._raise('PR001', p_function, 'lease_token', 'must not be null');
    END IF;
    SELECT * INTO v_part FROM pgrelay.subscription_partitions p
    WHERE p.subscription = p_subscription AND p.partition_index = p_partition
    FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', p_function, 'partition_index', format('names no partition of %L: %s', p_subscription, p_partition));
    END IF;
    IF v_part.lease_owner IS NULL OR v_part.lease_token <> p_token THEN
        RAISE EXCEPTION USING
            ERRCODE = 'PR005',
            MESSAGE = format('%s: argument lease_token %s no longer holds partition %s of %L (current token %s%s)',
                             p_function, p_token, p_partition, p_subscription, v_part.lease_token,
                             CASE WHEN v_part.lease_owner IS NULL THEN ', released' ELSE ', held by ' || v_part.lease_owner END),
            COLUMN = 'lease_token';
    END IF;
    RETURN v_part;
END;
$$;
