-- pgrelay._sync_check_target(fn, target, local): validate a sync target description. With local
-- (the target table is in this database) the table, its key and mapped columns are checked too;
-- the key columns need a unique index (upserts use ON CONFLICT on them), and a column computed by
-- a SQL expression ({"expr": "..."}) must parse as one value of that column's type: a bad one is
-- PR001 naming the column before anything is written. A cross-database target is checked this way
-- in the target, by pgrelay.sync_apply, before its first write.
CREATE OR REPLACE FUNCTION pgrelay._sync_check_target(p_function text, p_target jsonb, p_local boolean)
RETURNS regclass
LANGUAGE plpgsql
AS $$
DECLARE
    v_key   text;
    v_tbl   regclass;
    v_bad   text;
    v_value jsonb;
BEGIN
    IF p_target IS NULL OR jsonb_typeof(p_target) <> 'object' THEN
        PERFORM pgrelay._raise('PR001', p_function, 'target', 'must be a JSON object {"table", "key_columns", ...}');
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(p_target) AS k
    WHERE k NOT IN ('table', 'key_columns', 'columns', 'delete', 'database_env', 'delete_types') LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', p_function, 'target',
            format('has an unknown field %L (known: table, key_columns, columns, delete, database_env)', v_key));
    END IF;
    IF jsonb_typeof(p_target -> 'table') IS DISTINCT FROM 'string' OR (p_target ->> 'table') !~ '^("?[A-Za-z_][A-Za-z0-9_$ -]*"?\.)?"?[A-Za-z_][A-Za-z0-9_$ -]*"?$' THEN
        PERFORM pgrelay._raise('PR001', p_function, 'target', '"table" must be a table name like schema.table');
    END IF;
    IF jsonb_typeof(p_target -> 'key_columns') IS DISTINCT FROM 'array' OR jsonb_array_length(p_target -> 'key_columns') = 0
       OR EXISTS (SELECT 1 FROM jsonb_array_elements(p_target -> 'key_columns') e WHERE jsonb_typeof(e) <> 'string') THEN
        PERFORM pgrelay._raise('PR001', p_function, 'target', '"key_columns" must be a non-empty array of column names');
    END IF;
    IF p_target ? 'columns' THEN
        IF jsonb_typeof(p_target -> 'columns') <> 'object' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'target', '"columns" must be an object {"target_column": "source_field" | {"function": "schema.fn"} | {"expr": "SQL over img"}}');
        END IF;
        FOR v_key, v_value IN SELECT * FROM jsonb_each(p_target -> 'columns') LOOP
            IF jsonb_typeof(v_value) = 'string' THEN
                CONTINUE;
            END IF;
            IF jsonb_typeof(v_value) = 'object' AND v_value ? 'expr' THEN
                IF jsonb_typeof(v_value -> 'expr') IS DISTINCT FROM 'string' OR btrim(v_value ->> 'expr') = ''
                   OR (SELECT count(*) FROM jsonb_object_keys(v_value)) <> 1 THEN
                    PERFORM pgrelay._raise('PR001', p_function, 'target',
                        format('"columns".%s must be {"expr": "a SQL expression over img (the source row jsonb)"} and nothing else', v_key));
                END IF;
                CONTINUE;
            END IF;
            IF jsonb_typeof(v_value) <> 'object' OR jsonb_typeof(v_value -> 'function') IS DISTINCT FROM 'string'
               OR (v_value ->> 'function') !~ '^("?[A-Za-z_][A-Za-z0-9_$]*"?\.)?"?[A-Za-z_][A-Za-z0-9_$]*"?$'
               OR to_regprocedure((v_value ->> 'function') || '(jsonb)') IS NULL THEN
                PERFORM pgrelay._raise('PR001', p_function, 'target',
                    format('"columns".%s must be a source field name, {"function": "schema.fn"} naming a function (row jsonb), or {"expr": "..."}', v_key));
            END IF;
        END LOOP;
    END IF;
    IF p_target ? 'delete' AND NOT (p_target -> 'delete' IN ('"delete"', '"ignore"')
        OR (jsonb_typeof(p_target -> 'delete') = 'object' AND jsonb_typeof(p_target -> 'delete' -> 'soft') = 'string')) THEN
        PERFORM pgrelay._raise('PR001', p_function, 'target', '"delete" must be "delete", "ignore" or {"soft": "column"}');
    END IF;
    IF p_target ? 'database_env' AND (jsonb_typeof(p_target -> 'database_env') <> 'string' OR (p_target ->> 'database_env') !~ '^[A-Za-z_][A-Za-z0-9_]*$') THEN
        PERFORM pgrelay._raise('PR001', p_function, 'target', '"database_env" must name an environment variable');
    END IF;
    IF NOT p_local THEN
        RETURN NULL;
    END IF;

    v_tbl := pgrelay._sync_regclass(p_target ->> 'table');
    IF v_tbl IS NULL THEN
        PERFORM pgrelay._raise('PR001', p_function, 'target', format('"table" names no table here: %L', p_target ->> 'table'));
    END IF;
    SELECT c INTO v_bad FROM (
        SELECT jsonb_array_elements_text(p_target -> 'key_columns') AS c
        UNION ALL SELECT jsonb_object_keys(coalesce(p_target -> 'columns', '{}'))
        UNION ALL SELECT p_target -> 'delete' ->> 'soft' WHERE jsonb_typeof(p_target -> 'delete') = 'object') AS cols
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = v_tbl AND a.attname = cols.c AND a.attnum > 0 AND NOT a.attisdropped)
    LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', p_function, 'target', format('names a column %L that %s does not have', v_bad, v_tbl));
    END IF;
    FOR v_key, v_value IN SELECT * FROM jsonb_each(p_target -> 'columns') e WHERE jsonb_typeof(e.value) = 'object' AND e.value ? 'expr' LOOP
        BEGIN
            PERFORM count(*) FROM pgrelay._sync_check_expression(v_value ->> 'expr',
                (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = v_tbl AND a.attname = v_key));
        EXCEPTION WHEN OTHERS THEN
            PERFORM pgrelay._raise('PR001', p_function, 'target',
                format('"columns".%s: the expression is not one value of the column''s type: %s', v_key, SQLERRM));
        END;
    END LOOP;
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i
        WHERE i.indrelid = v_tbl AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
          AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
               WHERE a.attrelid = v_tbl AND a.attnum = ANY (i.indkey::smallint[]))
            = (SELECT array_agg(c ORDER BY c) FROM jsonb_array_elements_text(p_target -> 'key_columns') AS c)) THEN
        PERFORM pgrelay._raise('PR001', p_function, 'target',
            format('"key_columns" of %s need a unique index or primary key on exactly those columns', v_tbl));
    END IF;
    RETURN v_tbl;
END;
$$;
