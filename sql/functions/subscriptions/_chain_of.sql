-- pgrelay._chain_of(topic, key, position): the retry chain a message belongs to: its
-- (topic, key) stream, or for a keyless message (no order promise) a chain of its own.
CREATE OR REPLACE FUNCTION pgrelay._chain_of(p_topic text, p_key text, p_position bigint)
RETURNS text
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT coalesce('k:' || p_topic || chr(31) || p_key, 'p:' || p_position::text)
$$;
