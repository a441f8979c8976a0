-- pgrelay 004: change data capture.
--
-- Each captured table gets one generated trigger function pgrelay."_cdc_capture_<oid>"() and
-- statement triggers with transition tables, so a statement writes all its changes to the log
-- with one INSERT ... SELECT. Key, excluded and masked columns are kept by attribute number, so
-- renaming a column keeps capture (and exclusion) working; images come from to_jsonb(row), so
-- they follow ADD/DROP COLUMN. Partitions of a captured partitioned table get the same triggers,
-- so writes aimed at a partition directly are captured too.
-- Event triggers rewrite the capture after ALTER TABLE and CREATE TABLE ... PARTITION OF, and
-- forget captures of dropped tables (created only where the installing role may create event
-- triggers; elsewhere pgrelay.cdc_list() hides dropped tables and cdc_enable must be run again
-- after renaming a captured column or adding a partition).

-- Up Migration

CREATE TABLE pgrelay.cdc_tables (
    relid           oid         PRIMARY KEY,
    topic           text        NOT NULL,
    key_attnums     smallint[]  NOT NULL,
    exclude_attnums smallint[]  NOT NULL DEFAULT '{}',
    mask_attnums    smallint[]  NOT NULL DEFAULT '{}',
    operations      text[]      NOT NULL,
    skip_unchanged  boolean     NOT NULL DEFAULT false,
    options         jsonb       NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Resumable backfills: where each table's snapshot got to, in key order. last_key is the JSON
-- array of the last emitted row's key values in their text form (cast back to the column types).
CREATE TABLE pgrelay.cdc_snapshots (
    relid       oid         PRIMARY KEY,
    last_key    jsonb,
    emitted     bigint      NOT NULL DEFAULT 0,
    total       bigint,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- A dropped captured table: forget its capture and drop its generated function (its triggers
-- went with the table).
CREATE FUNCTION pgrelay.tg_cdc_forget_dropped()
RETURNS event_trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_relid oid;
BEGIN
    FOR v_relid IN
        DELETE FROM pgrelay.cdc_tables c
        WHERE c.relid IN (SELECT o.objid FROM pg_event_trigger_dropped_objects() o WHERE o.object_type = 'table')
        RETURNING c.relid
    LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS pgrelay.%I()', '_cdc_capture_' || v_relid);
    END LOOP;
    DELETE FROM pgrelay.cdc_snapshots s
    WHERE s.relid IN (SELECT o.objid FROM pg_event_trigger_dropped_objects() o WHERE o.object_type = 'table');
END;
$$;

-- After ALTER TABLE on a captured table (column names may have changed) or CREATE TABLE of a
-- partition of one (it needs the triggers), rewrite the capture.
CREATE FUNCTION pgrelay.tg_cdc_regenerate()
RETURNS event_trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_relid oid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgrelay.cdc_tables) THEN
        RETURN;
    END IF;
    FOR v_relid IN
        SELECT DISTINCT t.relid
        FROM pg_event_trigger_ddl_commands() c
        -- pg_partition_ancestors() is empty for a table that is not a partition.
        CROSS JOIN LATERAL (SELECT c.objid UNION SELECT p.relid FROM pg_partition_ancestors(c.objid) AS p(relid)) AS a(relid)
        JOIN pgrelay.cdc_tables t ON t.relid = a.relid
        WHERE c.command_tag IN ('ALTER TABLE', 'CREATE TABLE') AND c.classid = 'pg_class'::regclass
          AND EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = c.objid AND r.relkind IN ('r', 'p'))
    LOOP
        PERFORM pgrelay._cdc_generate(v_relid);
    END LOOP;
END;
$$;

DO $$
BEGIN
    CREATE EVENT TRIGGER pgrelay_cdc_forget_dropped ON sql_drop EXECUTE FUNCTION pgrelay.tg_cdc_forget_dropped();
    CREATE EVENT TRIGGER pgrelay_cdc_regenerate ON ddl_command_end WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE')
        EXECUTE FUNCTION pgrelay.tg_cdc_regenerate();
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pgrelay: no event triggers for captured tables (needs superuser): after renaming a captured '
                 'table''s column or adding a partition run pgrelay.cdc_enable again; cdc_list() hides dropped tables';
END;
$$;

-- Down Migration

DROP EVENT TRIGGER IF EXISTS pgrelay_cdc_forget_dropped;
DROP EVENT TRIGGER IF EXISTS pgrelay_cdc_regenerate;
DO $$
DECLARE
    v_row record;
BEGIN
    -- Every capture trigger on user tables (partitions included, whatever cdc_tables says),
    -- then the generated functions they call.
    FOR v_row IN
        SELECT g.tgname, g.tgrelid::regclass AS tbl
        FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid
        WHERE p.pronamespace = 'pgrelay'::regnamespace AND p.proname LIKE '\_cdc\_capture\_%'
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', v_row.tgname, v_row.tbl);
    END LOOP;
    FOR v_row IN
        SELECT p.oid::regprocedure AS fn FROM pg_proc p
        WHERE p.pronamespace = 'pgrelay'::regnamespace AND p.proname LIKE '\_cdc\_capture\_%'
    LOOP
        EXECUTE format('DROP FUNCTION %s', v_row.fn);
    END LOOP;
END;
$$;
DROP FUNCTION pgrelay.tg_cdc_forget_dropped();
DROP FUNCTION IF EXISTS pgrelay.tg_cdc_regenerate();
DROP TABLE pgrelay.cdc_snapshots;
DROP TABLE pgrelay.cdc_tables;
