-- pgrelay.retention_run(older_than, batch_size): delete log messages older than older_than
-- (default: setting pgrelay.retention, else 7 days) that every reader of their topic has passed:
-- for each subscription whose topics match, the partition the message hashes to; each matching
-- projection; each matching sync, through its checkpoint when it lives in this database and
-- through the progress it reports back to the source otherwise. A reader of other
-- topics never holds a message back, however far behind it is. Returns how many it deleted.
-- The log is examined in walk order, batch_size messages per statement, so each statement is
-- short and publishers never wait on it. Messages waiting in retries or dead letters are kept
-- there as copies, so they are not needed here. Event-store events (stream_version set) are
-- history, never deleted.
CREATE OR REPLACE FUNCTION pgrelay.retention_run(older_than interval DEFAULT NULL, batch_size integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn        constant text := 'pgrelay.retention_run';
    v_cutoff    timestamptz;
    v_horizon   xid8 := pg_snapshot_xmin(pg_current_snapshot());
    v_after_xid xid8 := '0';
    v_after_pos bigint := 0;
    v_xids      xid8[];
    v_positions bigint[];
    v_deleted   bigint := 0;
    v_batch     integer;
BEGIN
    IF retention_run.batch_size IS NULL OR retention_run.batch_size < 1 OR retention_run.batch_size > 1000000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'batch_size',
            format('must be between 1 and 1000000, got %s', coalesce(retention_run.batch_size::text, 'NULL')));
    END IF;
    IF retention_run.older_than IS NOT NULL AND retention_run.older_than < interval '0' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'older_than', format('must not be negative, got %s', retention_run.older_than));
    END IF;
    v_cutoff := now() - coalesce(retention_run.older_than,
                                 nullif(current_setting('pgrelay.retention', true), '')::interval,
                                 interval '7 days');
    LOOP
        -- The next slice of the log below the horizon (every transaction there has ended).
        SELECT coalesce(array_agg(o.xid ORDER BY o.xid, o.position), '{}'),
               coalesce(array_agg(o.position ORDER BY o.xid, o.position), '{}')
          INTO v_xids, v_positions
          FROM (SELECT m.xid, m.position FROM pgrelay.messages m
                WHERE (m.xid, m.position) > (v_after_xid, v_after_pos) AND m.xid < v_horizon
                ORDER BY m.xid, m.position
                LIMIT retention_run.batch_size) AS o;
        EXIT WHEN cardinality(v_xids) = 0;

        DELETE FROM pgrelay.messages m
        USING unnest(v_xids, v_positions) AS s(xid, position)
        WHERE m.xid = s.xid AND m.position = s.position
          AND m.created_at < v_cutoff
          AND m.stream_version IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM pgrelay.subscriptions sub
              JOIN pgrelay.subscription_partitions p
                ON p.subscription = sub.name
               AND p.partition_index = pgrelay._partition_of(m.key, m.id, sub.partitions)
              WHERE pgrelay._topic_matches(m.topic, sub.topics)
                AND (p.cursor_xid, p.cursor_position) < (m.xid, m.position))
          AND NOT EXISTS (
              SELECT 1 FROM pgrelay.projections j
              WHERE pgrelay._topic_matches(m.topic, j.topics)
                AND (j.cursor_xid, j.cursor_position) < (m.xid, m.position))
          AND NOT EXISTS (
              -- A sync has applied a message when its checkpoint (same database) or the
              -- source-side copy of its progress (any database, pgrelay.sync_progress) passed it.
              SELECT 1 FROM pgrelay.syncs y
              LEFT JOIN pgrelay.sync_checkpoints c ON c.name = y.name
              WHERE pgrelay._topic_matches(m.topic, y.topics)
                AND (y.applied_xid, y.applied_position) < (m.xid, m.position)
                AND (c.name IS NULL OR (c.cursor_xid, c.cursor_position) < (m.xid, m.position)));
        GET DIAGNOSTICS v_batch = ROW_COUNT;
        v_deleted := v_deleted + v_batch;
        EXIT WHEN cardinality(v_xids) < retention_run.batch_size;
        v_after_xid := v_xids[cardinality(v_xids)];
        v_after_pos := v_positions[cardinality(v_positions)];
    END LOOP;
    RETURN v_deleted;
END;
$$;
