-- pgrelay.publish(topic, key, type, data, metadata, lock_key): append one message to the log
-- in the caller's transaction and return its id. The message exists if and only if the
-- caller's transaction commits. key may be NULL (no ordering promise); lock_key => true takes
-- a transaction-scoped advisory lock on (topic, key) first, so concurrent publishers of that
-- key commit in position order (needed for per-key order when no row lock serialises them).
--
-- This is the hot path of every producer, so it does as little as it can: the argument checks
-- are one expression (pgrelay._check_message, which names the bad argument, runs only when it
-- fails), the id comes from the position (pgrelay._message_id) instead of gen_random_uuid(), and
-- the doorbell function is called only when the doorbell is armed. Folding the doorbell read
-- (or the position and id) into the INSERT as one statement was measured and costs more, not
-- less: see bench/README.md, "Publish: per-transaction cost".
CREATE OR REPLACE FUNCTION pgrelay.publish(
    topic    text,
    key      text,
    type     text,
    data     jsonb,
    metadata jsonb   DEFAULT '{}',
    lock_key boolean DEFAULT false
)
RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
    v_position bigint;
    v_id       uuid;
BEGIN
    -- The same conditions as pgrelay._check_message (keep them in step), in one expression.
    -- Every function in a PL/pgSQL expression is set up again in each transaction (the
    -- expression's state lives as long as the transaction), which is most of what a publish
    -- costs over a plain INSERT; so no call here that another one already implies: the pattern
    -- needs at least one character, so only the upper length bound is checked.
    IF publish.topic IS NULL OR length(publish.topic) > 200 OR publish.topic !~ '^[A-Za-z0-9._-]+$'
       OR length(publish.key) > 1000
       OR publish.type IS NULL OR publish.type = '' OR length(publish.type) > 200
       OR publish.data IS NULL OR publish.metadata IS NULL OR jsonb_typeof(publish.metadata) <> 'object'
       OR pg_column_size(publish.data) + pg_column_size(publish.metadata) > pgrelay._max_payload_bytes()
       OR publish.lock_key IS NULL THEN
        PERFORM pgrelay._check_message('pgrelay.publish', '', publish.topic, publish.key, publish.type,
                                       publish.data, publish.metadata);
        IF publish.lock_key IS NULL THEN
            PERFORM pgrelay._raise('PR001', 'pgrelay.publish', 'lock_key', 'must not be null');
        END IF;
    END IF;
    IF publish.lock_key AND publish.key IS NOT NULL THEN
        PERFORM pgrelay._lock_key(publish.topic, publish.key);
    END IF;

    v_position := nextval('pgrelay.message_position_seq');
    v_id := pgrelay._message_id(v_position);
    INSERT INTO pgrelay.messages (position, xid, next_xid, id, topic, key, type, data, metadata)
    VALUES (v_position, pg_current_xact_id(), pgrelay._next_xid(), v_id,
            publish.topic, publish.key, publish.type, publish.data, publish.metadata);

    -- Read in its own statement, after the INSERT gave this transaction its xid: the doorbell
    -- protocol needs a publisher whose xid is above the relay's watermark to see the arming
    -- (doorbell_arm). PERFORM ... WHERE with FOUND is a plan of one scan node; the sub-select
    -- form adds a Result node and an InitPlan to set up per call.
    PERFORM FROM pgrelay.doorbell d WHERE d.armed;
    IF FOUND THEN
        PERFORM pgrelay._ring_doorbell(publish.topic);
    END IF;
    RETURN v_id;
END;
$$;
