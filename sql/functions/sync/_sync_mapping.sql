-- pgrelay._sync_mapping(target, tbl): how a sync turns a source row image (img) into a target
-- row: the target columns it writes and a SQL expression over img building them as jsonb.
-- Function names are rendered through regproc and columns through %I/%L, never pasted; an
-- expression column ({"expr"}) is trusted admin input, pasted on lines of its own and cast to the
-- column's type, after pgrelay._sync_check_target parsed it as exactly one value.
CREATE OR REPLACE FUNCTION pgrelay._sync_mapping(p_target jsonb, p_tbl regclass, OUT columns text[], OUT expression text)
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v_keys text[] := ARRAY(SELECT jsonb_array_elements_text(p_target -> 'key_columns'));
BEGIN
    IF p_target ? 'columns' THEN
        columns := ARRAY(SELECT jsonb_object_keys(p_target -> 'columns'));
        columns := columns || ARRAY(SELECT k FROM unnest(v_keys) AS k WHERE NOT k = ANY (columns));
        expression := 'jsonb_build_object(' || (
            SELECT string_agg(format('%L, %s', c,
                       CASE WHEN p_target -> 'columns' -> c IS NULL THEN format('img -> %L', c)
                            WHEN jsonb_typeof(p_target -> 'columns' -> c) = 'string' THEN format('img -> %L', p_target -> 'columns' ->> c)
                            WHEN p_target -> 'columns' -> c ? 'expr' THEN format(E'to_jsonb((\n%s\n)::%s)', p_target -> 'columns' -> c ->> 'expr',
                                (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = p_tbl AND a.attname = c))
                            ELSE format('to_jsonb(%s(img))', to_regprocedure((p_target -> 'columns' -> c ->> 'function') || '(jsonb)')::oid::regproc) END), ', ')
            FROM unnest(columns) AS c) || ')';
    ELSE
        columns := ARRAY(SELECT a.attname::text FROM pg_attribute a
                         WHERE a.attrelid = p_tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                         ORDER BY a.attnum);
        expression := 'img';
    END IF;
    IF jsonb_typeof(p_target -> 'delete') = 'object' THEN
        columns := array_remove(columns, p_target -> 'delete' ->> 'soft');
    END IF;
END;
$$;

