-- pgrelay._check_message(...): validate one message's fields before it is appended.
-- Raises PR001 (invalid argument) or PR002 (payload too large) naming the argument; p_label
-- prefixes the argument name (e.g. 'messages[3].') for the batch form.
CREATE OR REPLACE FUNCTION pgrelay._check_message(
    p_function text,
    p_label    text,
    p_topic    text,
    p_key      text,
    p_type     text,
    p_data     jsonb,
    p_metadata jsonb
)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_limit integer;
BEGIN
    IF p_topic IS NULL THEN
        PERFORM pgrelay._raise('PR001', p_function, p_label || 'topic', 'must not be null');
    END IF;
    -- The length is checked apart from the character class: a bounded repetition ({1,200}) makes
    -- the regex engine build and free a DFA of hundreds of states on every match, which cost
    -- tens of microseconds per publish (more than the rest of the call).
    IF length(p_topic) NOT BETWEEN 1 AND 200 OR p_topic !~ '^[A-Za-z0-9._-]+$' THEN
        PERFORM pgrelay._raise('PR001', p_function, p_label || 'topic',
            format('must be 1-200 characters of [A-Za-z0-9._-], got %L', left(p_topic, 220)));
    END IF;
    IF p_key IS NOT NULL AND length(p_key) > 1000 THEN
        PERFORM pgrelay._raise('PR001', p_function, p_label || 'key',
            format('must be at most 1000 characters, got %s', length(p_key)));
    END IF;
    IF p_type IS NULL OR p_type = '' THEN
        PERFORM pgrelay._raise('PR001', p_function, p_label || 'type', 'must be a non-empty string');
    END IF;
    IF length(p_type) > 200 THEN
        PERFORM pgrelay._raise('PR001', p_function, p_label || 'type',
            format('must be at most 200 characters, got %s', length(p_type)));
    END IF;
    IF p_data IS NULL THEN
        PERFORM pgrelay._raise('PR001', p_function, p_label || 'data',
            'must not be SQL NULL (use ''null''::jsonb for a JSON null)');
    END IF;
    IF p_metadata IS NULL OR jsonb_typeof(p_metadata) <> 'object' THEN
        PERFORM pgrelay._raise('PR001', p_function, p_label || 'metadata',
            format('must be a JSON object, got %s', coalesce(jsonb_typeof(p_metadata), 'NULL')));
    END IF;
    v_limit := pgrelay._max_payload_bytes();
    IF pg_column_size(p_data) + pg_column_size(p_metadata) > v_limit THEN
        PERFORM pgrelay._raise('PR002', p_function, p_label || 'data',
            format('is too large: data and metadata take %s bytes, the limit is %s (setting pgrelay.max_payload_bytes)',
                   pg_column_size(p_data) + pg_column_size(p_metadata), v_limit));
    END IF;
END;
$$;
