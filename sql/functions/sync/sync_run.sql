-- pgrelay.sync_run(name, max_messages): for a sync whose target is in this database, read the
-- next gapless batch after its checkpoint and apply it, all in this transaction. Returns how
-- many row changes it applied (0: nothing new). Cross-database syncs are run by the daemon.
CREATE OR REPLACE FUNCTION pgrelay.sync_run(name text, max_messages integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn    constant text := 'pgrelay.sync_run';
    v_sync  pgrelay.syncs;
    v_cp    pgrelay.sync_checkpoints;
    v_batch pgrelay.message_record[];
    v_last  pgrelay.message_record;
    v_applied integer;
BEGIN
    PERFORM pgrelay._check_name(v_fn, 'name', sync_run.name);
    IF sync_run.max_messages IS NULL OR sync_run.max_messages NOT BETWEEN 1 AND 100000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'max_messages', 'must be between 1 and 100000');
    END IF;
    v_sync := pgrelay._sync_local(v_fn, sync_run.name, 'the daemon runs it');
    INSERT INTO pgrelay.sync_checkpoints AS c (name) VALUES (sync_run.name) ON CONFLICT ON CONSTRAINT sync_checkpoints_pkey DO NOTHING;
    SELECT * INTO v_cp FROM pgrelay.sync_checkpoints c WHERE c.name = sync_run.name FOR UPDATE;
    v_batch := pgrelay._read_walk(v_cp.cursor_xid, v_cp.cursor_position, sync_run.max_messages, v_sync.topics, 0, 1, '{}');
    IF cardinality(v_batch) = 0 THEN
        RETURN 0;
    END IF;
    v_last := v_batch[cardinality(v_batch)];
    v_applied := pgrelay.sync_apply(
        sync_run.name, v_sync.target,
        (SELECT jsonb_agg(jsonb_build_object('position', m.position, 'type', m.type, 'data', m.data, 'created_at', m.created_at)
                          ORDER BY m.position)
         FROM unnest(v_batch) AS m),
        v_cp.cursor_xid, v_cp.cursor_position, v_last.xid, v_last.position, v_sync.source_format);
    PERFORM pgrelay.sync_progress(sync_run.name, v_last.xid, v_last.position);
    RETURN v_applied;
END;
$$;

-- pgrelay.log_lag(topics, after_xid, after_position): how far a reader at that cursor is behind:
-- pending messages (counted up to 1,000,000) and the age in seconds of the oldest.
CREATE OR REPLACE FUNCTION pgrelay.log_lag(topics text[], after_xid xid8, after_position bigint,
                                           OUT pending bigint, OUT lag_seconds double precision)
LANGUAGE sql
STABLE
AS $$
    SELECT (SELECT count(*) FROM (SELECT 1 FROM pgrelay.messages m
                                  WHERE (m.xid, m.position) > (log_lag.after_xid, log_lag.after_position)
                                    AND pgrelay._topic_matches(m.topic, log_lag.topics) LIMIT 1000000) q),
           coalesce((SELECT extract(epoch FROM clock_timestamp() - min(m.created_at))::double precision
                     FROM (SELECT m.created_at FROM pgrelay.messages m
                           WHERE (m.xid, m.position) > (log_lag.after_xid, log_lag.after_position)
                             AND pgrelay._topic_matches(m.topic, log_lag.topics)
                           ORDER BY m.xid, m.position LIMIT 1000) m), 0)
$$;
