-- pgrelay.sync_define(name, topics, target, options): declare a sync in the source database.
-- target: {"table": "schema.table", "key_columns": [...], "columns"?: {"target_col": "source_field" |
--          {"function": "schema.fn"} | {"expr": "SQL over img"}}, "delete"?: "delete" | "ignore" | {"soft": "column"},
--          "database_env"?: "ENV_VAR_WITH_TARGET_URL"} (no database_env: the same database)
-- options: {"source_format"?: "cdc" (default; data is {before, after}) | "event" (data is the row),
--           "delete_types"?: [...] (event format: message types that delete), "source_table"?:
--           "schema.table" (for reconcile)}
-- Credentials never live here: a cross-database target names the environment variable that holds
-- its URL. pgrelay.sync_drop(name) removes the definition.
CREATE OR REPLACE FUNCTION pgrelay.sync_define(name text, topics text[], target jsonb, options jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn  constant text := 'pgrelay.sync_define';
    v_key text;
BEGIN
    PERFORM pgrelay._check_name(v_fn, 'name', sync_define.name);
    PERFORM pgrelay._check_topic_patterns(v_fn, 'topics', sync_define.topics);
    PERFORM pgrelay._sync_check_target(v_fn, sync_define.target, NOT (sync_define.target ? 'database_env'));
    IF sync_define.options IS NULL OR jsonb_typeof(sync_define.options) <> 'object' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', 'must be a JSON object');
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(sync_define.options) AS k
    WHERE k NOT IN ('source_format', 'delete_types', 'source_table') LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', format('has an unknown option %L (known: source_format, delete_types, source_table)', v_key));
    END IF;
    IF coalesce(sync_define.options ->> 'source_format', 'cdc') NOT IN ('cdc', 'event') THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', '"source_format" must be "cdc" or "event"');
    END IF;
    IF sync_define.options ? 'delete_types' AND (jsonb_typeof(sync_define.options -> 'delete_types') <> 'array'
        OR EXISTS (SELECT 1 FROM jsonb_array_elements(sync_define.options -> 'delete_types') e WHERE jsonb_typeof(e) <> 'string')) THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', '"delete_types" must be an array of strings');
    END IF;
    IF sync_define.options ? 'source_table' AND (jsonb_typeof(sync_define.options -> 'source_table') IS DISTINCT FROM 'string'
        OR (sync_define.options ->> 'source_table') !~ '^("?[A-Za-z_][A-Za-z0-9_$ -]*"?\.)?"?[A-Za-z_][A-Za-z0-9_$ -]*"?$'
        OR pgrelay._sync_regclass(sync_define.options ->> 'source_table') IS NULL) THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', format('"source_table" names no table: %L', sync_define.options ->> 'source_table'));
    END IF;
    INSERT INTO pgrelay.syncs AS s (name, topics, source_format, target, source_table)
    VALUES (sync_define.name, sync_define.topics, coalesce(sync_define.options ->> 'source_format', 'cdc'), sync_define.target,
            to_regclass(sync_define.options ->> 'source_table')::text)
    ON CONFLICT ON CONSTRAINT syncs_pkey DO UPDATE
        SET topics = excluded.topics, source_format = excluded.source_format, target = excluded.target,
            source_table = excluded.source_table, updated_at = now();
    UPDATE pgrelay.syncs s SET target = s.target || jsonb_build_object('delete_types', coalesce(sync_define.options -> 'delete_types', '[]'))
    WHERE s.name = sync_define.name;
END;
$$;

CREATE OR REPLACE FUNCTION pgrelay.sync_drop(name text)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM pgrelay.syncs s WHERE s.name = sync_drop.name;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', 'pgrelay.sync_drop', 'name', format('names no sync: %L', sync_drop.name));
    END IF;
    DELETE FROM pgrelay.sync_checkpoints c WHERE c.name = sync_drop.name;
    DELETE FROM pgrelay.sync_row_versions v WHERE v.name = sync_drop.name;
END;
$$;
