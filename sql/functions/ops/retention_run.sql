-- pgrelay.retention_run(older_than, batch_size): delete log messages that every subscription's
-- every partition and every projection has passed and that are older than older_than (default: setting
-- pgrelay.retention, else 7 days). Deletes in batches of batch_size, each its own short
-- statement, so publishers never wait on it. Returns how many messages it deleted. Messages
-- waiting in retries or dead letters are kept there as copies, so they are not needed here.
-- Event-store events (stream_version set) are history, never deleted.
CREATE OR REPLACE FUNCTION pgrelay.retention_run(older_than interval DEFAULT NULL, batch_size integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_cutoff  timestamptz;
    v_min_xid xid8;
    v_min_pos bigint;
    v_deleted bigint := 0;
    v_batch   integer;
BEGIN
    IF retention_run.batch_size IS NULL OR retention_run.batch_size < 1 OR retention_run.batch_size > 1000000 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.retention_run', 'batch_size', format('must be between 1 and 1000000, got %s', retention_run.batch_size));
    END IF;
    IF retention_run.older_than IS NOT NULL AND retention_run.older_than < interval '0' THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.retention_run', 'older_than', 'must not be negative');
    END IF;
    v_cutoff := now() - coalesce(retention_run.older_than,
                                 nullif(current_setting('pgrelay.retention', true), '')::interval,
                                 interval '7 days');
    SELECT c.x, c.p INTO v_min_xid, v_min_pos
    FROM (SELECT p.cursor_xid AS x, p.cursor_position AS p FROM pgrelay.subscription_partitions p
          UNION ALL
          SELECT j.cursor_xid, j.cursor_position FROM pgrelay.projections j) AS c
    ORDER BY c.x, c.p
    LIMIT 1;
    IF NOT FOUND THEN
        v_min_xid := pg_snapshot_xmin(pg_current_snapshot());
        v_min_pos := 0;
    END IF;
    LOOP
        DELETE FROM pgrelay.messages m
        WHERE (m.xid, m.position) IN (
            SELECT o.xid, o.position FROM pgrelay.messages o
            WHERE (o.xid, o.position) <= (v_min_xid, v_min_pos)
              AND o.xid < pg_snapshot_xmin(pg_current_snapshot())
              AND o.created_at < v_cutoff
              AND o.stream_version IS NULL
            ORDER BY o.xid, o.position
            LIMIT retention_run.batch_size);
        GET DIAGNOSTICS v_batch = ROW_COUNT;
        v_deleted := v_deleted + v_batch;
        EXIT WHEN v_batch < retention_run.batch_size;
    END LOOP;
    RETURN v_deleted;
END;
$$;
