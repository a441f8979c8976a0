-- pgrelay.publish(topic, key, type, data, metadata, lock_key): append one message to the log
-- in the caller's transaction and return its id. The message exists if and only if the
-- caller's transaction commits. key may be NULL (no ordering promise); lock_key => true takes
-- a transaction-scoped advisory lock on (topic, key) first, so concurrent publishers of that
-- key commit in position order (needed for per-key order when no row lock serialises them).
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
    v_id uuid := gen_random_uuid();
BEGIN
    PERFORM pgrelay._check_message('pgrelay.publish', '', publish.topic, publish.key, publish.type,
                                   publish.data, publish.metadata);
    IF publish.lock_key IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.publish', 'lock_key', 'must not be null');
    END IF;
    IF publish.lock_key AND publish.key IS NOT NULL THEN
        PERFORM pgrelay._lock_key(publish.topic, publish.key);
    END IF;

    INSERT INTO pgrelay.messages (position, xid, next_xid, id, topic, key, type, data, metadata)
    VALUES (nextval('pgrelay.message_position_seq'), pg_current_xact_id(), pgrelay._next_xid(), v_id,
            publish.topic, publish.key, publish.type, publish.data, publish.metadata);

    PERFORM pgrelay._ring_doorbell(publish.topic);
    RETURN v_id;
END;
$$;
