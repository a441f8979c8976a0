-- pgrelay._max_payload_bytes(): the largest data + metadata a message may carry.
-- Read from the custom setting pgrelay.max_payload_bytes (ALTER DATABASE ... SET), default 1 MiB.
CREATE OR REPLACE FUNCTION pgrelay._max_payload_bytes()
RETURNS integer
LANGUAGE sql
STABLE
AS $$
    SELECT coalesce(nullif(current_setting('pgrelay.max_payload_bytes', true), '')::integer, 1048576)
$$;
