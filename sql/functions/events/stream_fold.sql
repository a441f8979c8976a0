-- pgrelay._check_reducer(fn, reducer): a reducer is a function (state jsonb, event jsonb) RETURNS jsonb.
CREATE OR REPLACE FUNCTION pgrelay._check_reducer(p_function text, p_reducer regprocedure)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_reducer IS NULL OR NOT EXISTS (
        SELECT 1 FROM pg_proc p
        WHERE p.oid = p_reducer AND p.prorettype = 'jsonb'::regtype
          AND p.pronargs = 2 AND p.proargtypes[0] = 'jsonb'::regtype AND p.proargtypes[1] = 'jsonb'::regtype) THEN
        PERFORM pgrelay._raise('PR001', p_function, 'reducer', 'must be a function (state jsonb, event jsonb) RETURNS jsonb');
    END IF;
END;
$$;

-- pgrelay._reducer_key(reducer): the reducer's schema-qualified signature, the same whatever the
-- search_path (snapshots are kept per reducer under this name).
CREATE OR REPLACE FUNCTION pgrelay._reducer_key(p_reducer regprocedure)
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE p.oid = p_reducer
$$;

-- pgrelay.stream_fold(topic, key, reducer, initial, use_snapshot): fold a stream into a state
-- with reducer(state, event), where event is {"version", "type", "data", "metadata", "id",
-- "position"}. With use_snapshot (default) folding starts from the latest snapshot for this
-- reducer. Returns {"version": v, "state": ...}.
-- pgrelay.stream_snapshot(topic, key, reducer, initial): fold and store the state as a snapshot.
CREATE OR REPLACE FUNCTION pgrelay.stream_fold(
    topic        text,
    key          text,
    reducer      regprocedure,
    initial      jsonb   DEFAULT '{}',
    use_snapshot boolean DEFAULT true
)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_state   jsonb := stream_fold.initial;
    v_version bigint := 0;
    v_event   pgrelay.stream_event;
    v_call    text;
BEGIN
    PERFORM pgrelay._check_reducer('pgrelay.stream_fold', stream_fold.reducer);
    IF stream_fold.topic IS NULL OR stream_fold.key IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.stream_fold', CASE WHEN stream_fold.topic IS NULL THEN 'topic' ELSE 'key' END, 'must not be null');
    END IF;
    IF stream_fold.initial IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.stream_fold', 'initial', 'must not be null');
    END IF;
    IF coalesce(stream_fold.use_snapshot, true) THEN
        SELECT s.state, s.version INTO v_state, v_version FROM pgrelay.snapshots s
        WHERE s.topic = stream_fold.topic AND s.key = stream_fold.key AND s.reducer = pgrelay._reducer_key(stream_fold.reducer);
        IF NOT FOUND THEN
            v_state := stream_fold.initial;
            v_version := 0;
        END IF;
    END IF;
    v_call := format('SELECT %s($1, $2)', stream_fold.reducer::oid::regproc);
    FOR v_event IN
        SELECT m.stream_version, m.position, m.id, m.type, m.data, m.metadata, m.created_at
        FROM pgrelay.messages m
        WHERE m.topic = stream_fold.topic AND m.key = stream_fold.key AND m.stream_version > v_version
        ORDER BY m.stream_version
    LOOP
        EXECUTE v_call INTO v_state USING v_state,
            jsonb_build_object('version', v_event.version, 'type', v_event.type, 'data', v_event.data,
                               'metadata', v_event.metadata, 'id', v_event.id, 'position', v_event.position::text);
        v_version := v_event.version;
    END LOOP;
    RETURN jsonb_build_object('version', v_version, 'state', v_state);
END;
$$;

CREATE OR REPLACE FUNCTION pgrelay.stream_snapshot(
    topic   text,
    key     text,
    reducer regprocedure,
    initial jsonb DEFAULT '{}'
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_folded jsonb;
BEGIN
    PERFORM pgrelay._check_reducer('pgrelay.stream_snapshot', stream_snapshot.reducer);
    IF stream_snapshot.topic IS NULL OR stream_snapshot.key IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.stream_snapshot', CASE WHEN stream_snapshot.topic IS NULL THEN 'topic' ELSE 'key' END, 'must not be null');
    END IF;
    IF stream_snapshot.initial IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.stream_snapshot', 'initial', 'must not be null');
    END IF;
    v_folded := pgrelay.stream_fold(stream_snapshot.topic, stream_snapshot.key, stream_snapshot.reducer, stream_snapshot.initial, true);
    INSERT INTO pgrelay.snapshots (topic, key, reducer, version, state)
    VALUES (stream_snapshot.topic, stream_snapshot.key, pgrelay._reducer_key(stream_snapshot.reducer),
            (v_folded ->> 'version')::bigint, v_folded -> 'state')
    ON CONFLICT ON CONSTRAINT snapshots_pkey DO UPDATE
        SET version = excluded.version, state = excluded.state, created_at = now()
        WHERE pgrelay.snapshots.version <= excluded.version;
    RETURN (v_folded ->> 'version')::bigint;
END;
$$;
