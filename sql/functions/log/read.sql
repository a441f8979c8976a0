-- pgrelay.read(after_xid, after_position, max_messages, topics, partition_index, partition_count):
-- the public read primitive. Returns the next batch after the cursor (after_xid,
-- after_position), gapless and in per-key commit order, sorted by position. Advance the
-- cursor to the greatest (xid, position) of the rows returned; an empty result means nothing
-- is safe to read yet. Start from ('0', 0). See pgrelay._read_batch for the algorithm.
CREATE OR REPLACE FUNCTION pgrelay.read(
    after_xid       xid8    DEFAULT '0',
    after_position  bigint  DEFAULT 0,
    max_messages    integer DEFAULT 100,
    topics          text[]  DEFAULT NULL,
    partition_index integer DEFAULT 0,
    partition_count integer DEFAULT 1
)
RETURNS SETOF pgrelay.message_record
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
    IF read.after_xid IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.read', 'after_xid', 'must not be null (start from ''0'')');
    END IF;
    IF read.after_position IS NULL OR read.after_position < 0 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.read', 'after_position',
            format('must be a position >= 0, got %s', coalesce(read.after_position::text, 'NULL')));
    END IF;
    IF read.max_messages IS NULL OR read.max_messages < 1 OR read.max_messages > 10000 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.read', 'max_messages',
            format('must be between 1 and 10000, got %s', coalesce(read.max_messages::text, 'NULL')));
    END IF;
    IF read.topics IS NOT NULL THEN
        PERFORM pgrelay._check_topic_patterns('pgrelay.read', 'topics', read.topics);
    END IF;
    IF read.partition_count IS NULL OR read.partition_count < 1 OR read.partition_count > 1024 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.read', 'partition_count',
            format('must be between 1 and 1024, got %s', coalesce(read.partition_count::text, 'NULL')));
    END IF;
    IF read.partition_index IS NULL OR read.partition_index < 0 OR read.partition_index >= read.partition_count THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.read', 'partition_index',
            format('must be between 0 and partition_count - 1 (%s), got %s', read.partition_count - 1,
                   coalesce(read.partition_index::text, 'NULL')));
    END IF;
    RETURN QUERY SELECT * FROM pgrelay._read_batch(read.after_xid, read.after_position, read.max_messages,
                                                   read.topics, read.partition_index, read.partition_count);
END;
$$;
