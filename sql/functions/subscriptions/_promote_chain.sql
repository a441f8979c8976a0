-- pgrelay._promote_chain(subscription, partition, chain): make the head (lowest position) of a
-- retry chain due if it is parked. Called whenever a chain loses or gains a member, so a chain
-- never waits behind nothing.
CREATE OR REPLACE FUNCTION pgrelay._promote_chain(p_subscription text, p_partition integer, p_chain text)
RETURNS void
LANGUAGE sql
AS $$
    UPDATE pgrelay.retries r
       SET next_attempt_at = clock_timestamp()
     WHERE r.subscription = p_subscription
       AND r.position = (SELECT min(h.position) FROM pgrelay.retries h
                         WHERE h.subscription = p_subscription AND h.partition_index = p_partition
                           AND h.chain = p_chain)
       AND r.next_attempt_at IS NULL
$$;
