-- pgrelay 004: change data capture.
--
-- Each captured table gets one generated trigger function pgrelay."_cdc_<oid>"() and statement
-- triggers with transition tables, so a statement writes all its changes to the log with one
-- INSERT ... SELECT. Key columns are kept by attribute number, so renaming a column (even a key
-- column) keeps capture working; images come from to_jsonb(row), so they follow ADD/DROP COLUMN.
-- An event trigger forgets captures of dropped tables (created only where the installing role
-- may create event triggers; elsewhere pgrelay.cdc_list() hides dropped tables).

-- Up Migration

CREATE TABLE pgrelay.cdc_tables (
    relid          oid         PRIMARY KEY,
    topic          text        NOT NULL,
    key_attnums    smallint[]  NOT NULL,
    exclude        text[]      NOT NULL DEFAULT '{}',
    mask           text[]      NOT NULL DEFAULT '{}',
    operations     text[]      NOT NULL,
    skip_unchanged boolean     NOT NULL DEFAULT false,
    options        jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Resumable backfills: where each table's snapshot got to, in key order.
CREATE TABLE pgrelay.cdc_snapshots (
    relid       oid         PRIMARY KEY,
    last_key    jsonb,
    emitted     bigint      NOT NULL DEFAULT 0,
    total       bigint,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE FUNCTION pgrelay.tg_cdc_forget_dropped()
RETURNS event_trigger
LANGUAGE plpgsql
AS $$
BEGIN
    DELETE FROM pgrelay.cdc_tables c
    WHERE c.relid IN (SELECT o.objid FROM pg_event_trigger_dropped_objects() o WHERE o.object_type = 'table');
    DELETE FROM pgrelay.cdc_snapshots s
    WHERE s.relid IN (SELECT o.objid FROM pg_event_trigger_dropped_objects() o WHERE o.object_type = 'table');
END;
$$;

-- After ALTER TABLE on a captured table, rewrite its capture function (column names changed).
CREATE FUNCTION pgrelay.tg_cdc_regenerate()
RETURNS event_trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_relid oid;
BEGIN
    FOR v_relid IN
        SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
        WHERE c.command_tag = 'ALTER TABLE' AND c.objid IN (SELECT t.relid FROM pgrelay.cdc_tables t)
    LOOP
        PERFORM pgrelay._cdc_generate(v_relid);
    END LOOP;
END;
$$;

DO $$
BEGIN
    CREATE EVENT TRIGGER pgrelay_cdc_forget_dropped ON sql_drop EXECUTE FUNCTION pgrelay.tg_cdc_forget_dropped();
    CREATE EVENT TRIGGER pgrelay_cdc_regenerate ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
        EXECUTE FUNCTION pgrelay.tg_cdc_regenerate();
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pgrelay: no event triggers for captured tables (needs superuser): after renaming a captured '
                 'table''s key column run pgrelay.cdc_enable again; cdc_list() hides dropped tables';
END;
$$;

-- Down Migration

DROP EVENT TRIGGER IF EXISTS pgrelay_cdc_forget_dropped;
DROP EVENT TRIGGER IF EXISTS pgrelay_cdc_regenerate;
DO $$
DECLARE
    v_relid oid;
BEGIN
    -- Remove every capture trigger from user tables before the functions they call go.
    FOR v_relid IN SELECT c.relid FROM pgrelay.cdc_tables c WHERE EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = c.relid) LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_cdc_change ON %s', v_relid::regclass);
        EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_cdc_insert ON %s', v_relid::regclass);
        EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_cdc_update ON %s', v_relid::regclass);
        EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_cdc_delete ON %s', v_relid::regclass);
        EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_cdc_truncate ON %s', v_relid::regclass);
    END LOOP;
END;
$$;
DROP FUNCTION pgrelay.tg_cdc_forget_dropped();
DROP FUNCTION IF EXISTS pgrelay.tg_cdc_regenerate();
DROP TABLE pgrelay.cdc_snapshots;
DROP TABLE pgrelay.cdc_tables;
