-- pgrelay._cdc_image(row, exclude, mask): a row image as captured: excluded columns removed,
-- masked columns replaced by the hex SHA-256 of their text (NULL stays NULL).
CREATE OR REPLACE FUNCTION pgrelay._cdc_image(p_row jsonb, p_exclude text[], p_mask text[])
RETURNS jsonb
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT (p_row - p_exclude)
        || coalesce((SELECT jsonb_object_agg(c, CASE WHEN p_row -> c = 'null' THEN 'null'::jsonb
                                                    ELSE to_jsonb(encode(sha256(convert_to(p_row ->> c, 'UTF8')), 'hex')) END)
                     FROM unnest(p_mask) AS c WHERE p_row ? c), '{}')
$$;

-- pgrelay._cdc_changed(before, after, exclude): names of the columns an UPDATE changed.
CREATE OR REPLACE FUNCTION pgrelay._cdc_changed(p_before jsonb, p_after jsonb, p_exclude text[])
RETURNS jsonb
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT coalesce(jsonb_agg(e.key ORDER BY e.key), '[]')
    FROM jsonb_each(p_after) AS e
    WHERE p_before -> e.key IS DISTINCT FROM e.value AND NOT e.key = ANY (p_exclude)
$$;
