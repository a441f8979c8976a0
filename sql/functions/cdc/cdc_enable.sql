-- pgrelay.cdc_enable(tbl, options): capture INSERT/UPDATE/DELETE/TRUNCATE of a table into the
-- log. options (all optional):
--   topic          - default 'cdc.<schema>.<table>'
--   exclude        - columns left out of the images
--   mask           - columns replaced by the hex SHA-256 of their value
--   key_columns    - the message key, required for a table without a primary key (non-null columns)
--   operations     - subset of ["insert", "update", "delete", "truncate"] (default all)
--   skip_unchanged - skip UPDATEs that change no captured column (default false)
-- Enabling again replaces the options. Works for partitioned tables (capture on the parent).
CREATE OR REPLACE FUNCTION pgrelay.cdc_enable(tbl regclass, options jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn       constant text := 'pgrelay.cdc_enable';
    v_kind     "char";
    v_schema   text;
    v_table    text;
    v_key      text;
    v_bad      text;
    v_attnums  smallint[];
    v_exclude  text[];
    v_mask     text[];
    v_ops      text[];
    v_topic    text;
BEGIN
    IF cdc_enable.tbl IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'tbl', 'must name a table');
    END IF;
    SELECT c.relkind, n.nspname, c.relname INTO v_kind, v_schema, v_table
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = cdc_enable.tbl;
    IF v_kind NOT IN ('r', 'p') THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'tbl', format('must be a table, %s is not', cdc_enable.tbl));
    END IF;
    IF v_schema = 'pgrelay' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'tbl', 'must not be one of pgrelay''s own tables');
    END IF;
    IF cdc_enable.options IS NULL OR jsonb_typeof(cdc_enable.options) <> 'object' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', 'must be a JSON object');
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(cdc_enable.options) AS k
    WHERE k NOT IN ('topic', 'exclude', 'mask', 'key_columns', 'operations', 'skip_unchanged') LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options',
            format('has an unknown option %L (known: topic, exclude, mask, key_columns, operations, skip_unchanged)', v_key));
    END IF;
    FOREACH v_key IN ARRAY ARRAY['exclude', 'mask', 'key_columns', 'operations'] LOOP
        IF cdc_enable.options ? v_key AND (jsonb_typeof(cdc_enable.options -> v_key) <> 'array'
            OR EXISTS (SELECT 1 FROM jsonb_array_elements(cdc_enable.options -> v_key) AS e WHERE jsonb_typeof(e) <> 'string')) THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'options', format('"%s" must be an array of strings', v_key));
        END IF;
    END LOOP;

    v_topic := coalesce(cdc_enable.options ->> 'topic', left(format('cdc.%s.%s', v_schema, v_table), 200));
    IF v_topic !~ '^[A-Za-z0-9._-]{1,200}$' THEN
        IF cdc_enable.options ? 'topic' THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'options', format('"topic" must be 1-200 characters of [A-Za-z0-9._-], got %L', v_topic));
        END IF;
        -- Names with other characters: keep the allowed ones.
        v_topic := left(regexp_replace(format('cdc.%s.%s', v_schema, v_table), '[^A-Za-z0-9._-]', '_', 'g'), 200);
    END IF;

    v_exclude := ARRAY(SELECT jsonb_array_elements_text(coalesce(cdc_enable.options -> 'exclude', '[]')));
    v_mask := ARRAY(SELECT jsonb_array_elements_text(coalesce(cdc_enable.options -> 'mask', '[]')));
    SELECT c INTO v_bad FROM unnest(v_exclude || v_mask || ARRAY(SELECT jsonb_array_elements_text(coalesce(cdc_enable.options -> 'key_columns', '[]')))) AS c
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = cdc_enable.tbl AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped)
    LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', format('names a column %L that %s does not have', v_bad, cdc_enable.tbl));
    END IF;

    v_ops := ARRAY(SELECT jsonb_array_elements_text(coalesce(cdc_enable.options -> 'operations', '["insert","update","delete","truncate"]')));
    SELECT o INTO v_bad FROM unnest(v_ops) AS o WHERE o NOT IN ('insert', 'update', 'delete', 'truncate') LIMIT 1;
    IF FOUND OR cardinality(v_ops) = 0 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', '"operations" must be a non-empty subset of insert, update, delete, truncate');
    END IF;
    IF cdc_enable.options ? 'skip_unchanged' AND jsonb_typeof(cdc_enable.options -> 'skip_unchanged') <> 'boolean' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', '"skip_unchanged" must be true or false');
    END IF;

    IF cdc_enable.options ? 'key_columns' THEN
        SELECT array_agg(a.attnum ORDER BY k.n) INTO v_attnums
        FROM jsonb_array_elements_text(cdc_enable.options -> 'key_columns') WITH ORDINALITY AS k(name, n)
        JOIN pg_attribute a ON a.attrelid = cdc_enable.tbl AND a.attname = k.name;
        IF v_attnums IS NULL THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'options', '"key_columns" must name at least one column');
        END IF;
    ELSE
        SELECT array_agg(k.attnum ORDER BY k.n) INTO v_attnums
        FROM pg_index i, unnest(i.indkey::smallint[]) WITH ORDINALITY AS k(attnum, n)
        WHERE i.indrelid = cdc_enable.tbl AND i.indisprimary;
        IF v_attnums IS NULL THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'tbl',
                format('%s has no primary key: pass options.key_columns (non-null columns that identify a row)', cdc_enable.tbl));
        END IF;
    END IF;

    INSERT INTO pgrelay.cdc_tables AS c (relid, topic, key_attnums, exclude, mask, operations, skip_unchanged, options)
    VALUES (cdc_enable.tbl, v_topic, v_attnums, v_exclude, v_mask, v_ops,
            coalesce((cdc_enable.options ->> 'skip_unchanged')::boolean, false), cdc_enable.options)
    ON CONFLICT ON CONSTRAINT cdc_tables_pkey DO UPDATE
        SET topic = excluded.topic, key_attnums = excluded.key_attnums, exclude = excluded.exclude, mask = excluded.mask,
            operations = excluded.operations, skip_unchanged = excluded.skip_unchanged, options = excluded.options;
    PERFORM pgrelay._cdc_generate(cdc_enable.tbl);
END;
$$;
