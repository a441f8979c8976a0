-- Source-side view of a sync's progress. pgrelay.syncs keeps a copy of where the sync's target
-- checkpoint is (applied_xid, applied_position): sync_run moves it for same-database syncs in the
-- same transaction as the apply; the daemon reports it with sync_progress after each cross-database
-- batch (a copy that lags the real checkpoint is harmless: it only keeps more of the log).
-- pgrelay.sync_lag(name) reads pending messages and seconds behind per sync from it, and
-- pgrelay.sync_lock(name), in the target database, holds a sync's applier off until the caller's
-- transaction ends (reconcile compares and repairs under it).

CREATE OR REPLACE FUNCTION pgrelay.sync_progress(name text, cursor_xid xid8, cursor_position bigint)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn constant text := 'pgrelay.sync_progress';
BEGIN
    PERFORM pgrelay._check_name(v_fn, 'name', sync_progress.name);
    IF sync_progress.cursor_xid IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'cursor_xid', 'must not be null');
    END IF;
    IF sync_progress.cursor_position IS NULL OR sync_progress.cursor_position < 0 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'cursor_position', 'must be a position >= 0');
    END IF;
    UPDATE pgrelay.syncs s
       SET applied_xid = sync_progress.cursor_xid, applied_position = sync_progress.cursor_position, applied_at = clock_timestamp()
     WHERE s.name = sync_progress.name
       AND (s.applied_xid, s.applied_position) < (sync_progress.cursor_xid, sync_progress.cursor_position);
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM pgrelay.syncs s WHERE s.name = sync_progress.name) THEN
        PERFORM pgrelay._raise('PR003', v_fn, 'name', format('names no sync: %L', sync_progress.name));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION pgrelay.sync_lag(name text DEFAULT NULL)
RETURNS TABLE (sync_name text, cursor_xid xid8, cursor_position bigint, pending bigint, lag_seconds double precision, applied_at timestamptz)
LANGUAGE sql
STABLE
AS $$
    SELECT s.name, s.applied_xid, s.applied_position, l.pending, l.lag_seconds, s.applied_at
    FROM pgrelay.syncs s, pgrelay.log_lag(s.topics, s.applied_xid, s.applied_position) AS l
    WHERE sync_lag.name IS NULL OR s.name = sync_lag.name
    ORDER BY s.name
$$;

CREATE OR REPLACE FUNCTION pgrelay.sync_lock(name text)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    PERFORM pgrelay._check_name('pgrelay.sync_lock', 'name', sync_lock.name);
    INSERT INTO pgrelay.sync_checkpoints AS c (name) VALUES (sync_lock.name) ON CONFLICT ON CONSTRAINT sync_checkpoints_pkey DO NOTHING;
    PERFORM 1 FROM pgrelay.sync_checkpoints c WHERE c.name = sync_lock.name FOR UPDATE;
END;
$$;
