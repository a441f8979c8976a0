-- pgrelay.log_stall(): what holds the read horizon back. Readers deliver nothing younger than
-- the oldest open transaction that has an xid; this names it (backend pid, or the prepared
-- transaction's gid) and how many seconds it has been open. No row: nothing is open.
CREATE OR REPLACE FUNCTION pgrelay.log_stall(
    OUT horizon_xid xid8, OUT seconds double precision, OUT pid integer, OUT application_name text,
    OUT state text, OUT prepared_gid text)
RETURNS SETOF record
LANGUAGE sql
STABLE
AS $$
    WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x)
    SELECT h.x, extract(epoch FROM clock_timestamp() - a.xact_start)::double precision, a.pid, a.application_name,
           a.state, NULL::text
    FROM h JOIN pg_stat_activity a ON a.backend_xid IS NOT NULL
        AND a.backend_xid::text = (h.x::text::numeric % 4294967296)::text
    WHERE a.pid <> pg_backend_pid()
    UNION ALL
    SELECT h.x, extract(epoch FROM clock_timestamp() - p.prepared)::double precision, NULL, NULL, 'prepared', p.gid
    FROM h JOIN pg_prepared_xacts p ON p.transaction::text = (h.x::text::numeric % 4294967296)::text
$$;
