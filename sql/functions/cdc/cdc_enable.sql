-- pgrelay.cdc_enable(tbl, options): capture INSERT/UPDATE/DELETE/TRUNCATE of a table into the
-- log. options (all optional):
--   topic          - default 'cdc.<schema>.<table>'
--   exclude        - columns left out of the images
--   mask           - columns replaced by the hex SHA-256 of their value
--   key_columns    - the message key, required for a table without a primary key: NOT NULL
--                    columns with a unique index over them (or over some of them)
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
    v_exclude  smallint[];
    v_mask     smallint[];
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

    IF cdc_enable.options ? 'topic' AND jsonb_typeof(cdc_enable.options -> 'topic') <> 'string' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', '"topic" must be a string');
    END IF;
    v_topic := coalesce(cdc_enable.options ->> 'topic', left(format('cdc.%s.%s', v_schema, v_table), 200));
    IF v_topic !~ '^[A-Za-z0-9._-]{1,200}$' THEN
        IF cdc_enable.options ? 'topic' THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'options', format('"topic" must be 1-200 characters of [A-Za-z0-9._-], got %L', v_topic));
        END IF;
        -- Names with other characters: keep the allowed ones.
        v_topic := left(regexp_replace(format('cdc.%s.%s', v_schema, v_table), '[^A-Za-z0-9._-]', '_', 'g'), 200);
    END IF;

    SELECT c INTO v_bad FROM jsonb_array_elements_text(coalesce(cdc_enable.options -> 'exclude', '[]') || coalesce(cdc_enable.options -> 'mask', '[]')
                                                       || coalesce(cdc_enable.options -> 'key_columns', '[]')) AS c
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = cdc_enable.tbl AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped)
    LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', format('names a column %L that %s does not have', v_bad, cdc_enable.tbl));
    END IF;
    v_exclude := ARRAY(SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = cdc_enable.tbl AND a.attnum > 0 AND NOT a.attisdropped
                         AND a.attname IN (SELECT jsonb_array_elements_text(coalesce(cdc_enable.options -> 'exclude', '[]'))) ORDER BY a.attnum);
    v_mask := ARRAY(SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = cdc_enable.tbl AND a.attnum > 0 AND NOT a.attisdropped
                      AND a.attname IN (SELECT jsonb_array_elements_text(coalesce(cdc_enable.options -> 'mask', '[]'))) ORDER BY a.attnum);

    v_ops := ARRAY(SELECT DISTINCT jsonb_array_elements_text(coalesce(cdc_enable.options -> 'operations', '["insert","update","delete","truncate"]')));
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
        IF cardinality(v_attnums) <> (SELECT count(DISTINCT x) FROM unnest(v_attnums) x) THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'options', '"key_columns" names a column twice');
        END IF;
        SELECT a.attname INTO v_bad FROM pg_attribute a
        WHERE a.attrelid = cdc_enable.tbl AND a.attnum = ANY (v_attnums) AND NOT a.attnotnull LIMIT 1;
        IF FOUND THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'options',
                format('"key_columns": column %I of %s must be NOT NULL', v_bad, cdc_enable.tbl));
        END IF;
        -- The key must identify a row: a unique index (no predicate, no expressions) over a
        -- subset of the key columns, or the primary key.
        IF NOT EXISTS (SELECT 1 FROM pg_index i
                       WHERE i.indrelid = cdc_enable.tbl AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                         AND i.indkey::smallint[] <@ v_attnums AND NOT (0 = ANY (i.indkey::smallint[]))) THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'options',
                format('"key_columns" must identify a row of %s: create a unique index or constraint over them', cdc_enable.tbl));
        END IF;
    ELSE
        SELECT array_agg(k.attnum ORDER BY k.n) INTO v_attnums
        FROM pg_index i, unnest(i.indkey::smallint[]) WITH ORDINALITY AS k(attnum, n)
        WHERE i.indrelid = cdc_enable.tbl AND i.indisprimary;
        IF v_attnums IS NULL THEN
            PERFORM pgrelay._raise('PR001', v_fn, 'tbl',
                format('%s has no primary key: pass options.key_columns (NOT NULL columns with a unique index)', cdc_enable.tbl));
        END IF;
    END IF;

    IF v_attnums && (v_exclude || v_mask) THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', '"exclude" and "mask" must not name a key column (the key is in every message)');
    END IF;

    -- One capture per partition tree: a partition is captured through its captured ancestor.
    SELECT a.relid::regclass::text INTO v_bad FROM pg_partition_ancestors(cdc_enable.tbl) AS a(relid)
    JOIN pgrelay.cdc_tables c ON c.relid = a.relid WHERE a.relid <> cdc_enable.tbl::oid LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'tbl', format('is a partition of %s, which is captured already', v_bad));
    END IF;
    SELECT p.relid::regclass::text INTO v_bad FROM pg_partition_tree(cdc_enable.tbl) AS p(relid, parentrelid, isleaf, level)
    JOIN pgrelay.cdc_tables c ON c.relid = p.relid WHERE p.relid <> cdc_enable.tbl::oid LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'tbl', format('has a partition %s that is captured already: cdc_disable it first', v_bad));
    END IF;

    INSERT INTO pgrelay.cdc_tables AS c (relid, topic, key_attnums, exclude_attnums, mask_attnums, operations, skip_unchanged, options)
    VALUES (cdc_enable.tbl, v_topic, v_attnums, v_exclude, v_mask, v_ops,
            coalesce((cdc_enable.options ->> 'skip_unchanged')::boolean, false), cdc_enable.options)
    ON CONFLICT ON CONSTRAINT cdc_tables_pkey DO UPDATE
        SET topic = excluded.topic, key_attnums = excluded.key_attnums, exclude_attnums = excluded.exclude_attnums,
            mask_attnums = excluded.mask_attnums, operations = excluded.operations, skip_unchanged = excluded.skip_unchanged,
            options = excluded.options;
    PERFORM pgrelay._cdc_generate(cdc_enable.tbl);
END;
$$;
