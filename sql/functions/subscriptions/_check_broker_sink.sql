-- pgrelay._check_broker_sink(fn, sink): validate a nats or amqp sink description (called by
-- _check_sink). Shapes:
--   nats {servers, subject, stream?, create_stream?, stream_subjects?, duplicate_window_ms?, user?,
--         pass_env|pass_file?, token_env|token_file?, creds_file?, ...common}
--   amqp {url | url_env | url_file, exchange, routing_key, exchange_type?, mandatory?, user?,
--         pass_env|pass_file?, ...common}
--   common: timeout_ms?, concurrency?, content_mode? ('structured' | 'binary'), source?, batch_publish?
-- Credentials are never stored: inline ones (a password in a URL, "password", "token", ...) are refused.
-- Templates ({topic} {type} {key} {subscription}) are checked for unknown placeholders here; the
-- daemon checks the rendered subject or routing key again for every message.
CREATE OR REPLACE FUNCTION pgrelay._check_broker_sink(p_function text, p_sink jsonb)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_type      text := p_sink ->> 'type';
    v_key       text;
    v_value     text;
    v_template  text;
    v_count     integer;
BEGIN
    -- Inline credentials.
    SELECT k INTO v_key FROM jsonb_object_keys(p_sink) AS k
    WHERE k IN ('password', 'pass', 'token', 'creds', 'nkey', 'url_password') LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', p_function, 'sink',
            format('of type %s must not hold a credential itself ("%s"): name an environment variable (%s_env) or a file (%s_file)',
                   v_type, v_key, CASE WHEN v_key = 'token' THEN 'token' ELSE 'pass' END, CASE WHEN v_key = 'token' THEN 'token' ELSE 'pass' END));
    END IF;
    FOR v_key IN SELECT k FROM jsonb_object_keys(p_sink) AS k WHERE k ~ '_(env|file)$' LOOP
        IF jsonb_typeof(p_sink -> v_key) <> 'string' OR p_sink ->> v_key = '' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink', format('"%s" must be a non-empty string (an environment variable name or a file path)', v_key));
        END IF;
    END LOOP;
    FOREACH v_key IN ARRAY ARRAY['user', 'source', 'stream', 'exchange_type'] LOOP
        IF (p_sink ? v_key) AND (jsonb_typeof(p_sink -> v_key) <> 'string' OR p_sink ->> v_key = '') THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink', format('"%s" must be a non-empty string', v_key));
        END IF;
    END LOOP;
    FOREACH v_key IN ARRAY ARRAY['batch_publish', 'create_stream', 'mandatory'] LOOP
        IF (p_sink ? v_key) AND jsonb_typeof(p_sink -> v_key) <> 'boolean' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink', format('"%s" must be true or false', v_key));
        END IF;
    END LOOP;
    IF (p_sink ? 'content_mode') AND coalesce(p_sink ->> 'content_mode', '') NOT IN ('structured', 'binary') THEN
        PERFORM pgrelay._raise('PR001', p_function, 'sink', '"content_mode" must be "structured" or "binary"');
    END IF;

    IF v_type = 'nats' THEN
        IF jsonb_typeof(p_sink -> 'servers') = 'string' THEN
            v_count := 1;
        ELSIF jsonb_typeof(p_sink -> 'servers') = 'array' THEN
            v_count := jsonb_array_length(p_sink -> 'servers');
        ELSE
            v_count := 0;
        END IF;
        IF v_count = 0 THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink',
                'of type nats must have "servers": a server URL like "nats://host:4222" or a non-empty list of them');
        END IF;
        FOR v_value IN
            SELECT CASE WHEN jsonb_typeof(s) = 'string' THEN s #>> '{}' END
            FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_sink -> 'servers') = 'array' THEN p_sink -> 'servers'
                                           ELSE jsonb_build_array(p_sink -> 'servers') END) AS s
        LOOP
            IF coalesce(v_value, '') = '' OR v_value ~ '\s' THEN
                PERFORM pgrelay._raise('PR001', p_function, 'sink', '"servers" must hold non-empty server URLs without spaces');
            END IF;
            IF v_value ~ '//[^/@]*:[^/@]*@' THEN
                PERFORM pgrelay._raise('PR001', p_function, 'sink',
                    '"servers" must not hold a password: use "user" with "pass_env" or "pass_file"');
            END IF;
        END LOOP;
        IF jsonb_typeof(p_sink -> 'subject') IS DISTINCT FROM 'string' OR p_sink ->> 'subject' = '' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink',
                'of type nats must have "subject": a template like "pgrelay.{topic}.{type}"');
        END IF;
        v_template := p_sink ->> 'subject';
        IF v_template ~ '[\s*>]' OR replace(v_template, '.', '') = '' OR v_template ~ '(^\.|\.\.|\.$)' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink',
                format('"subject" %L is not a valid NATS subject template (no spaces, wildcards or empty tokens)', v_template));
        END IF;
        IF (p_sink ? 'stream') AND p_sink ->> 'stream' !~ '^[A-Za-z0-9_-]{1,255}$' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink', '"stream" must be a stream name of letters, digits, "_" and "-"');
        END IF;
        IF (p_sink ? 'create_stream') AND NOT (p_sink ? 'stream') AND (p_sink -> 'create_stream') = 'true' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink', '"create_stream" needs "stream" (the name of the stream to create)');
        END IF;
        IF (p_sink ? 'stream_subjects') AND (jsonb_typeof(p_sink -> 'stream_subjects') <> 'array'
            OR jsonb_array_length(p_sink -> 'stream_subjects') = 0
            OR EXISTS (SELECT 1 FROM jsonb_array_elements(p_sink -> 'stream_subjects') AS s
                       WHERE jsonb_typeof(s) <> 'string' OR s #>> '{}' = '')) THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink', '"stream_subjects" must be a non-empty list of subjects');
        END IF;
        IF (p_sink ? 'duplicate_window_ms') AND (jsonb_typeof(p_sink -> 'duplicate_window_ms') <> 'number'
            OR (p_sink ->> 'duplicate_window_ms')::numeric NOT BETWEEN 1 AND 604800000) THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink', '"duplicate_window_ms" must be a number between 1 and 604800000 (7 days)');
        END IF;
    ELSE
        SELECT count(*)::integer INTO v_count FROM jsonb_object_keys(p_sink) AS k WHERE k IN ('url', 'url_env', 'url_file');
        IF v_count <> 1 THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink',
                'of type amqp must have exactly one of "url" (like "amqp://host:5672/vhost", without a password), "url_env" or "url_file"');
        END IF;
        IF (p_sink ? 'url') AND coalesce(p_sink ->> 'url', '') !~ '^amqps?://[^\s]+$' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink',
                format('"url" must start with amqp:// or amqps://, got %s', coalesce(quote_literal(p_sink ->> 'url'), 'none')));
        END IF;
        IF (p_sink ? 'url') AND p_sink ->> 'url' ~ '//[^/@]*:[^/@]*@' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink',
                '"url" must not hold a password: use "user" with "pass_env"/"pass_file", or put the whole URL in "url_env"/"url_file"');
        END IF;
        IF (p_sink ? 'user') <> ((p_sink ? 'pass_env') OR (p_sink ? 'pass_file')) THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink', '"user" and "pass_env"/"pass_file" go together');
        END IF;
        IF jsonb_typeof(p_sink -> 'exchange') IS DISTINCT FROM 'string' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink', 'of type amqp must have "exchange": a name, or "" for the default exchange');
        END IF;
        IF (p_sink ? 'exchange_type') AND p_sink ->> 'exchange_type' NOT IN ('direct', 'topic', 'fanout', 'headers') THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink',
                format('"exchange_type" must be one of direct, topic, fanout, headers; got %L', p_sink ->> 'exchange_type'));
        END IF;
        IF (p_sink ? 'exchange_type') AND p_sink ->> 'exchange' = '' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink', '"exchange_type" cannot be given for the default exchange ""');
        END IF;
        IF jsonb_typeof(p_sink -> 'routing_key') IS DISTINCT FROM 'string' THEN
            PERFORM pgrelay._raise('PR001', p_function, 'sink', 'of type amqp must have "routing_key": a template like "{topic}.{type}"');
        END IF;
        v_template := p_sink ->> 'routing_key';
    END IF;

    SELECT m[1] INTO v_value FROM regexp_matches(v_template, '\{([^{}]*)\}', 'g') AS m
    WHERE m[1] NOT IN ('topic', 'type', 'key', 'subscription') LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', p_function, 'sink',
            format('%s template %L has an unknown placeholder {%s}; known: {topic} {type} {key} {subscription}',
                   CASE WHEN v_type = 'nats' THEN '"subject"' ELSE '"routing_key"' END, v_template, v_value));
    END IF;
    IF regexp_replace(v_template, '\{[^{}]*\}', '', 'g') ~ '[{}]' THEN
        PERFORM pgrelay._raise('PR001', p_function, 'sink',
            format('%s template %L has an unmatched brace', CASE WHEN v_type = 'nats' THEN '"subject"' ELSE '"routing_key"' END, v_template));
    END IF;
END;
$$;
