-- pgrelay._topic_matches(topic, patterns): does topic match any pattern?
-- A pattern is an exact topic or a prefix ending in '*' ('cdc.public.*'); NULL matches all.
CREATE OR REPLACE FUNCTION pgrelay._topic_matches(p_topic text, p_patterns text[])
RETURNS boolean
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $$
    SELECT p_patterns IS NULL
        OR p_topic = ANY (p_patterns)
        OR EXISTS (SELECT 1 FROM unnest(p_patterns) AS p
                   WHERE right(p, 1) = '*' AND starts_with(p_topic, left(p, -1)))
$$;
