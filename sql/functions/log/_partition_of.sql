-- pgrelay._partition_of(key, id, partitions): the partition a message belongs to.
-- Messages of one key always land in the same partition; keyless messages spread by id.
CREATE OR REPLACE FUNCTION pgrelay._partition_of(p_key text, p_id uuid, p_partitions integer)
RETURNS integer
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $$
    SELECT CASE WHEN p_partitions <= 1 THEN 0
                ELSE abs(hashtextextended(coalesce(p_key, p_id::text), 0) % p_partitions)::integer END
$$;
