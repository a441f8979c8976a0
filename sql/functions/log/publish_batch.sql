-- pgrelay.publish_batch(messages, lock_keys): append many messages in one call and return
-- their ids in input order. messages is a JSON array of objects
--   {"topic": text, "key": text|null, "type": text, "data": any, "metadata": object}
-- (key and metadata optional). Positions follow array order. Every element is validated
-- before anything is written; a bad element names its index, e.g. messages[2].topic.
CREATE OR REPLACE FUNCTION pgrelay.publish_batch(
    messages  jsonb,
    lock_keys boolean DEFAULT false
)
RETURNS uuid[]
LANGUAGE plpgsql
AS $$
DECLARE
    v_element  jsonb;
    v_index    integer := 0;
    v_ids      uuid[];
    v_next_xid xid8;
BEGIN
    IF publish_batch.messages IS NULL OR jsonb_typeof(publish_batch.messages) <> 'array' THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.publish_batch', 'messages',
            format('must be a JSON array of message objects, got %s',
                   coalesce(jsonb_typeof(publish_batch.messages), 'NULL')));
    END IF;
    IF jsonb_array_length(publish_batch.messages) > 10000 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.publish_batch', 'messages',
            format('must hold at most 10000 messages, got %s', jsonb_array_length(publish_batch.messages)));
    END IF;
    IF publish_batch.lock_keys IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.publish_batch', 'lock_keys', 'must not be null');
    END IF;

    FOR v_element IN SELECT e FROM jsonb_array_elements(publish_batch.messages) AS e LOOP
        IF jsonb_typeof(v_element) <> 'object' THEN
            PERFORM pgrelay._raise('PR001', 'pgrelay.publish_batch', format('messages[%s]', v_index),
                format('must be a JSON object, got %s', jsonb_typeof(v_element)));
        END IF;
        IF (v_element ? 'key') AND jsonb_typeof(v_element -> 'key') NOT IN ('string', 'null') THEN
            PERFORM pgrelay._raise('PR001', 'pgrelay.publish_batch', format('messages[%s].key', v_index),
                'must be a string or null');
        END IF;
        IF jsonb_typeof(v_element -> 'topic') IS DISTINCT FROM 'string' THEN
            PERFORM pgrelay._raise('PR001', 'pgrelay.publish_batch', format('messages[%s].topic', v_index),
                'must be a string');
        END IF;
        IF jsonb_typeof(v_element -> 'type') IS DISTINCT FROM 'string' THEN
            PERFORM pgrelay._raise('PR001', 'pgrelay.publish_batch', format('messages[%s].type', v_index),
                'must be a string');
        END IF;
        IF NOT (v_element ? 'data') THEN
            PERFORM pgrelay._raise('PR001', 'pgrelay.publish_batch', format('messages[%s].data', v_index),
                'is missing');
        END IF;
        PERFORM pgrelay._check_message('pgrelay.publish_batch', format('messages[%s].', v_index),
            v_element ->> 'topic', v_element ->> 'key', v_element ->> 'type', v_element -> 'data',
            coalesce(v_element -> 'metadata', '{}'));
        v_index := v_index + 1;
    END LOOP;

    IF publish_batch.lock_keys THEN
        -- Lock in a fixed order so that two batches never deadlock on each other's keys.
        PERFORM pgrelay._lock_key(k.topic, k.key)
        FROM (SELECT DISTINCT e ->> 'topic' AS topic, e ->> 'key' AS key
              FROM jsonb_array_elements(publish_batch.messages) AS e
              WHERE e ->> 'key' IS NOT NULL
              ORDER BY 1, 2) AS k;
    END IF;

    v_next_xid := pgrelay._next_xid();
    -- Positions in array order (a volatile output column is computed after the sort), and each
    -- id from its position (pgrelay._message_id).
    WITH input AS (
        SELECT p.e, p.n, p.position, pgrelay._message_id(p.position) AS id
        FROM (SELECT e, n, nextval('pgrelay.message_position_seq') AS position
              FROM jsonb_array_elements(publish_batch.messages) WITH ORDINALITY AS t(e, n)
              ORDER BY n) AS p
    ), inserted AS (
        INSERT INTO pgrelay.messages (position, xid, next_xid, id, topic, key, type, data, metadata)
        SELECT i.position, pg_current_xact_id(), v_next_xid, i.id,
               i.e ->> 'topic', i.e ->> 'key', i.e ->> 'type', i.e -> 'data', coalesce(i.e -> 'metadata', '{}')
        FROM input i
        ORDER BY i.n
        RETURNING id
    )
    SELECT array_agg(i.id ORDER BY i.n) INTO v_ids FROM input i;

    IF v_index > 0 THEN
        PERFORM pgrelay._ring_doorbell(publish_batch.messages -> 0 ->> 'topic');
    END IF;
    RETURN coalesce(v_ids, '{}');
END;
$$;
