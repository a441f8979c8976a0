-- pgrelay._publish_many(fn, topic, key, types, data): append several messages of one (topic, key)
-- stream in one statement, for pgrelay's own producers (saga lifecycle events) that build many
-- messages in one transaction. The same path as publish: every message is validated by
-- _check_message (errors name fn), positions come from the sequence in array order, next_xid is
-- taken once after every lock the caller holds (a later bound than per-message publish calls
-- would take, which only widens readers' same-key search), and the doorbell is rung once.
-- The caller serialises publishers of the key (sagas: the saga row lock), as publish's callers do.
CREATE OR REPLACE FUNCTION pgrelay._publish_many(p_function text, p_topic text, p_key text, p_types text[], p_data jsonb[])
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_next_xid xid8;
BEGIN
    IF cardinality(p_types) IS DISTINCT FROM cardinality(p_data) THEN
        RAISE EXCEPTION 'pgrelay._publish_many: % types for % data', cardinality(p_types), cardinality(p_data);
    END IF;
    IF coalesce(cardinality(p_types), 0) = 0 THEN
        RETURN;
    END IF;
    FOR i IN 1 .. cardinality(p_types) LOOP
        PERFORM pgrelay._check_message(p_function, '', p_topic, p_key, p_types[i], p_data[i], '{}');
    END LOOP;
    v_next_xid := pgrelay._next_xid();
    INSERT INTO pgrelay.messages (position, xid, next_xid, id, topic, key, type, data, metadata)
    SELECT nextval('pgrelay.message_position_seq'), pg_current_xact_id(), v_next_xid, gen_random_uuid(),
           p_topic, p_key, m.type, m.data, '{}'
    FROM unnest(p_types, p_data) WITH ORDINALITY AS m(type, data, n)
    ORDER BY m.n;
    PERFORM pgrelay._ring_doorbell(p_topic);
END;
$$;
