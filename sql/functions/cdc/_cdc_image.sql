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
