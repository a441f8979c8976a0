-- pgrelay._publish_many(fn, topic, key, types, data): append several messages of one (topic, key)
-- stream in one statement, for pgrelay's own producers (saga lifecycle events) that build many
-- messages in one transaction. The same path as publish: every message is validated as
-- _check_message does (errors name fn), positions come from the sequence in array order, next_xid is
-- taken once after every lock the caller holds (a later bound than per-message publish calls
-- would take, which only widens readers' same-key search), and the doorbell is rung once.
-- The caller serialises publishers of the key (sagas: the saga row lock), as publish's callers do.
CREATE OR REPLACE FUNCTION pgrelay._publish_many(p_function text, p_topic text, p_key text, p_types text[], p_data jsonb[])
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_next_xid xid8;
    v_limit    integer;
BEGIN
    IF cardinality(p_types) IS DISTINCT FROM cardinality(p_data) THEN
        RAISE EXCEPTION 'pgrelay._publish_many: % types for % data', cardinality(p_types), cardinality(p_data);
    END IF;
    IF coalesce(cardinality(p_types), 0) = 0 THEN
        RETURN;
    END IF;
    -- Topic and key are shared: checked once, with the first message. The others need only what
    -- differs (type and data); one that fails gets _check_message's own error.
    PERFORM pgrelay._check_message(p_function, '', p_topic, p_key, p_types[1], p_data[1], '{}');
    v_limit := pgrelay._max_payload_bytes() - pg_column_size('{}'::jsonb);
    FOR i IN 2 .. cardinality(p_types) LOOP
        IF p_types[i] IS NULL OR p_types[i] = '' OR length(p_types[i]) > 200 OR p_data[i] IS NULL
           OR pg_column_size(p_data[i]) > v_limit THEN
            PERFORM pgrelay._check_message(p_function, '', p_topic, p_key, p_types[i], p_data[i], '{}');
        END IF;
    END LOOP;
    v_next_xid := pgrelay._next_xid();
    -- Ids from positions (pgrelay._message_id), as publish makes them.
    INSERT INTO pgrelay.messages (position, xid, next_xid, id, topic, key, type, data, metadata)
    SELECT p.position, pg_current_xact_id(), v_next_xid, pgrelay._message_id(p.position),
           p_topic, p_key, p.type, p.data, '{}'
    FROM (SELECT nextval('pgrelay.message_position_seq') AS position, m.type, m.data, m.n
          FROM unnest(p_types, p_data) WITH ORDINALITY AS m(type, data, n)
          ORDER BY m.n) AS p
    ORDER BY p.n;
    IF (SELECT d.armed FROM pgrelay.doorbell d) THEN
        PERFORM pgrelay._ring_doorbell(p_topic);
    END IF;
END;
$$;
