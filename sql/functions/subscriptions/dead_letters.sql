-- Dead letters: messages that failed max_attempts times. List them with
--   SELECT * FROM pgrelay.dead_letters WHERE subscription = '...';
-- pgrelay.dead_letter_retry(subscription, position) puts one (or, with position NULL, all of the
-- subscription's) back into its retry chain with a fresh attempt count, due now (behind any
-- earlier pending message of its key). pgrelay.dead_letter_discard(subscription, position)
-- deletes one (or all). Both return how many dead letters they took; naming a position that is
-- not a dead letter of the subscription raises PR003.
CREATE OR REPLACE FUNCTION pgrelay.dead_letter_retry(subscription text, "position" bigint DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_sub    pgrelay.subscriptions;
    v_count  integer;
    v_parts  integer[];
    v_chains text[];
BEGIN
    v_sub := pgrelay._subscription('pgrelay.dead_letter_retry', dead_letter_retry.subscription);
    -- Each taken dead letter becomes a retry that has not been attempted yet (attempts 0, parked),
    -- keeping its last_error; then each chain's head is made due.
    WITH taken AS (
        DELETE FROM pgrelay.dead_letters d
        WHERE d.subscription = v_sub.name AND (dead_letter_retry.position IS NULL OR d.position = dead_letter_retry.position)
          AND NOT EXISTS (SELECT 1 FROM pgrelay.retries r WHERE r.subscription = d.subscription AND r.position = d.position)
        RETURNING d.*
    ), queued AS (
        INSERT INTO pgrelay.retries (subscription, partition_index, chain, position, xid, message, attempts, next_attempt_at, last_error)
        SELECT t.subscription, pgrelay._partition_of((t.message).key, (t.message).id, v_sub.partitions),
               pgrelay._chain_of((t.message).topic, (t.message).key, t.position), t.position, t.xid, t.message, 0, NULL, t.last_error
        FROM taken t
        RETURNING partition_index, chain
    )
    SELECT count(*), coalesce(array_agg(q.partition_index), '{}'), coalesce(array_agg(q.chain), '{}')
      INTO v_count, v_parts, v_chains
      FROM queued q;
    IF dead_letter_retry.position IS NOT NULL AND v_count = 0 THEN
        PERFORM pgrelay._raise('PR003', 'pgrelay.dead_letter_retry', 'position',
            format('names no dead letter of %L: %s', v_sub.name, dead_letter_retry.position));
    END IF;
    PERFORM pgrelay._promote_chain(v_sub.name, c.partition_index, c.chain)
    FROM (SELECT DISTINCT u.partition_index, u.chain FROM unnest(v_parts, v_chains) AS u(partition_index, chain)) AS c;
    IF v_count > 0 THEN
        PERFORM pgrelay._ring_doorbell('pgrelay.retry');
    END IF;
    RETURN v_count;
END;
$$;

CREATE OR REPLACE FUNCTION pgrelay.dead_letter_discard(subscription text, "position" bigint DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_sub   pgrelay.subscriptions;
    v_count integer;
BEGIN
    v_sub := pgrelay._subscription('pgrelay.dead_letter_discard', dead_letter_discard.subscription);
    DELETE FROM pgrelay.dead_letters d
    WHERE d.subscription = v_sub.name AND (dead_letter_discard.position IS NULL OR d.position = dead_letter_discard.position);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF dead_letter_discard.position IS NOT NULL AND v_count = 0 THEN
        PERFORM pgrelay._raise('PR003', 'pgrelay.dead_letter_discard', 'position',
            format('names no dead letter of %L: %s', v_sub.name, dead_letter_discard.position));
    END IF;
    RETURN v_count;
END;
$$;
