-- pgrelay.stream_read(topic, key, from_version, max_count): a stream's events from from_version
-- on, in version order. pgrelay.stream_version(topic, key): its version (0: no such stream).
-- pgrelay.stream_last(topic, key): its last event (no row: no such stream).
CREATE OR REPLACE FUNCTION pgrelay.stream_read(
    topic        text,
    key          text,
    from_version bigint  DEFAULT 1,
    max_count    integer DEFAULT 1000
)
RETURNS SETOF pgrelay.stream_event
LANGUAGE plpgsql
STABLE
AS $$
#variable_conflict use_column
BEGIN
    IF stream_read.topic IS NULL OR stream_read.key IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.stream_read', CASE WHEN stream_read.topic IS NULL THEN 'topic' ELSE 'key' END, 'must not be null');
    END IF;
    IF stream_read.from_version IS NULL OR stream_read.from_version < 1 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.stream_read', 'from_version', format('must be >= 1, got %s', coalesce(stream_read.from_version::text, 'NULL')));
    END IF;
    IF stream_read.max_count IS NULL OR stream_read.max_count NOT BETWEEN 1 AND 100000 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.stream_read', 'max_count', 'must be between 1 and 100000');
    END IF;
    RETURN QUERY
        SELECT m.stream_version, m.position, m.id, m.type, m.data, m.metadata, m.created_at
        FROM pgrelay.messages m
        WHERE m.topic = stream_read.topic AND m.key = stream_read.key
          AND m.stream_version >= stream_read.from_version
        ORDER BY m.stream_version
        LIMIT stream_read.max_count;
END;
$$;

CREATE OR REPLACE FUNCTION pgrelay.stream_version(topic text, key text)
RETURNS bigint
LANGUAGE plpgsql
STABLE
AS $$
#variable_conflict use_column
BEGIN
    IF stream_version.topic IS NULL OR stream_version.key IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.stream_version', CASE WHEN stream_version.topic IS NULL THEN 'topic' ELSE 'key' END, 'must not be null');
    END IF;
    RETURN (SELECT coalesce(max(m.stream_version), 0)
            FROM pgrelay.messages m
            WHERE m.topic = stream_version.topic AND m.key = stream_version.key AND m.stream_version IS NOT NULL);
END;
$$;

CREATE OR REPLACE FUNCTION pgrelay.stream_last(topic text, key text)
RETURNS SETOF pgrelay.stream_event
LANGUAGE plpgsql
STABLE
AS $$
#variable_conflict use_column
BEGIN
    IF stream_last.topic IS NULL OR stream_last.key IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.stream_last', CASE WHEN stream_last.topic IS NULL THEN 'topic' ELSE 'key' END, 'must not be null');
    END IF;
    RETURN QUERY
        SELECT m.stream_version, m.position, m.id, m.type, m.data, m.metadata, m.created_at
        FROM pgrelay.messages m
        WHERE m.topic = stream_last.topic AND m.key = stream_last.key AND m.stream_version IS NOT NULL
        ORDER BY m.stream_version DESC
        LIMIT 1;
END;
$$;
