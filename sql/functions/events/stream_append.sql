-- pgrelay.stream_append(topic, key, events, expected_version): append events to the (topic, key)
-- stream and return its new version. events is a JSON array of {"type", "data", "metadata"?}.
-- expected_version: NULL = any version, 0 = the stream must not exist yet, n = the stream must be
-- exactly at version n. A mismatch raises PR004 (concurrency conflict) and writes nothing.
-- Appends to one stream are serialised (transaction-scoped advisory lock), so versions have no
-- gaps and position order is commit order; the events are ordinary log messages, delivered by
-- subscriptions like any other.
CREATE OR REPLACE FUNCTION pgrelay.stream_append(
    topic            text,
    key              text,
    events           jsonb,
    expected_version bigint DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn      constant text := 'pgrelay.stream_append';
    v_current bigint;
    v_count   integer;
    v_index   integer := 0;
    v_event   jsonb;
    v_next_xid xid8;
BEGIN
    -- Length apart from the character class: a bounded repetition ({1,200}) costs the regex
    -- engine a DFA of hundreds of states per match (see pgrelay._check_message).
    IF stream_append.topic IS NULL OR length(stream_append.topic) NOT BETWEEN 1 AND 200
       OR stream_append.topic !~ '^[A-Za-z0-9._-]+$' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'topic',
            format('must be 1-200 characters of [A-Za-z0-9._-], got %s', coalesce(quote_literal(left(stream_append.topic, 220)), 'NULL')));
    END IF;
    IF stream_append.key IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'key', 'must not be null: a stream is a (topic, key) pair');
    END IF;
    IF length(stream_append.key) > 1000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'key', format('must be at most 1000 characters, got %s', length(stream_append.key)));
    END IF;
    IF stream_append.events IS NULL OR jsonb_typeof(stream_append.events) <> 'array' OR jsonb_array_length(stream_append.events) = 0 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'events', 'must be a non-empty JSON array of {"type", "data", "metadata"?}');
    END IF;
    IF stream_append.expected_version IS NOT NULL AND stream_append.expected_version < 0 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'expected_version',
            format('must be NULL (any), 0 (no stream) or a version >= 1, got %s', stream_append.expected_version));
    END IF;
    v_count := jsonb_array_length(stream_append.events);
    IF v_count > 10000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'events', format('must hold at most 10000 events, got %s', v_count));
    END IF;
    FOR v_event IN SELECT e FROM jsonb_array_elements(stream_append.events) AS e LOOP
        IF jsonb_typeof(v_event) <> 'object' OR jsonb_typeof(v_event -> 'type') IS DISTINCT FROM 'string' OR NOT (v_event ? 'data') THEN
            PERFORM pgrelay._raise('PR001', v_fn, format('events[%s]', v_index), 'must be an object with a string "type" and a "data"');
        END IF;
        PERFORM pgrelay._check_message(v_fn, format('events[%s].', v_index), stream_append.topic, stream_append.key,
                                       v_event ->> 'type', v_event -> 'data', coalesce(v_event -> 'metadata', '{}'));
        v_index := v_index + 1;
    END LOOP;

    PERFORM pgrelay._lock_key(stream_append.topic, stream_append.key);
    SELECT coalesce(max(m.stream_version), 0) INTO v_current
    FROM pgrelay.messages m
    WHERE m.topic = stream_append.topic AND m.key = stream_append.key AND m.stream_version IS NOT NULL;
    IF stream_append.expected_version IS NOT NULL AND stream_append.expected_version <> v_current THEN
        RAISE EXCEPTION USING
            ERRCODE = 'PR004',
            MESSAGE = format('%s: argument expected_version %s does not match stream %s/%s at version %s',
                             v_fn, stream_append.expected_version, stream_append.topic, stream_append.key, v_current),
            COLUMN = 'expected_version';
    END IF;

    v_next_xid := pgrelay._next_xid();
    INSERT INTO pgrelay.messages (position, xid, next_xid, id, topic, key, type, data, metadata, stream_version)
    SELECT p.position, pg_current_xact_id(), v_next_xid, pgrelay._message_id(p.position),
           stream_append.topic, stream_append.key, p.e ->> 'type', p.e -> 'data', coalesce(p.e -> 'metadata', '{}'),
           v_current + p.n
    FROM (SELECT nextval('pgrelay.message_position_seq') AS position, t.e, t.n
          FROM jsonb_array_elements(stream_append.events) WITH ORDINALITY AS t(e, n)
          ORDER BY t.n) AS p
    ORDER BY p.n;

    PERFORM pgrelay._ring_doorbell(stream_append.topic);
    RETURN v_current + v_count;
EXCEPTION
    WHEN unique_violation THEN
        -- Only reachable when the lock could not serialise (REPEATABLE READ snapshots): the same
        -- conflict, reported the same way.
        RAISE EXCEPTION USING
            ERRCODE = 'PR004',
            MESSAGE = format('%s: argument expected_version: stream %s/%s was appended to concurrently', v_fn,
                             stream_append.topic, stream_append.key),
            COLUMN = 'expected_version';
END;
$$;
