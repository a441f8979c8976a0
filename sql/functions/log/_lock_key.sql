-- pgrelay._lock_key(topic, key): serialise publishers of one (topic, key) stream until commit.
-- publish(..., lock_key => true) calls it before writing, so that position order is commit
-- order for that key even when the application holds no row lock of its own.
CREATE OR REPLACE FUNCTION pgrelay._lock_key(p_topic text, p_key text)
RETURNS void
LANGUAGE sql
VOLATILE
AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(p_topic || chr(31) || p_key, 7301))
$$;
