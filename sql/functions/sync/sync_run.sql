-- pgrelay.sync_run(name, max_messages): for a sync whose target is in this database, read the
-- next gapless batch after its checkpoint and apply it, all in this transaction. Returns how
-- many row changes it applied (0: nothing new). Cross-database syncs are run by the daemon.
-- It reads what pgrelay.sync_read gives the daemon, so a short batch moves the checkpoint to the
-- read horizon, and an empty one once the horizon is 1,000 transactions ahead.
CREATE OR REPLACE FUNCTION pgrelay.sync_run(name text, max_messages integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn    constant text := 'pgrelay.sync_run';
    v_sync  pgrelay.syncs;
    v_cp    pgrelay.sync_checkpoints;
    v_messages    jsonb;
    v_to_xid      xid8;
    v_to_position bigint;
    v_key_fields  text[];
    v_applied integer;
BEGIN
    PERFORM pgrelay._check_name(v_fn, 'name', sync_run.name);
    IF sync_run.max_messages IS NULL OR sync_run.max_messages NOT BETWEEN 1 AND 100000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'max_messages', 'must be between 1 and 100000');
    END IF;
    v_sync := pgrelay._sync_local(v_fn, sync_run.name, 'the daemon runs it');
    INSERT INTO pgrelay.sync_checkpoints AS c (name) VALUES (sync_run.name) ON CONFLICT ON CONSTRAINT sync_checkpoints_pkey DO NOTHING;
    SELECT * INTO v_cp FROM pgrelay.sync_checkpoints c WHERE c.name = sync_run.name FOR UPDATE;
    -- As the daemon does: when every key column comes from a source field,
    -- an update that changes none of them goes without its before image (sync_apply reads it only
    -- to delete the old key of a key change).
    IF v_sync.source_format = 'cdc' AND NOT EXISTS (
           SELECT 1 FROM jsonb_array_elements_text(v_sync.target -> 'key_columns') AS k
           WHERE jsonb_typeof(coalesce(v_sync.target -> 'columns' -> k, to_jsonb(k))) <> 'string') THEN
        v_key_fields := ARRAY(SELECT coalesce(v_sync.target -> 'columns' ->> k, k)
                              FROM jsonb_array_elements_text(v_sync.target -> 'key_columns') AS k);
    END IF;
    -- The batch pgrelay.sync_read gives the daemon (its cursor moved to the read horizon when the
    -- batch is short, or when empty and 1,000 transactions behind; NULL: nothing to do).
    SELECT r.messages::jsonb, r.to_xid, r.to_position INTO v_messages, v_to_xid, v_to_position
      FROM pgrelay.sync_read(v_sync.topics, v_cp.cursor_xid, v_cp.cursor_position, sync_run.max_messages, v_key_fields) AS r;
    IF v_to_xid IS NULL THEN
        RETURN 0;
    END IF;
    v_applied := pgrelay.sync_apply(sync_run.name, v_sync.target, coalesce(v_messages, '[]'),
                                    v_cp.cursor_xid, v_cp.cursor_position, v_to_xid, v_to_position, v_sync.source_format);
    PERFORM pgrelay.sync_progress(sync_run.name, v_to_xid, v_to_position);
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
