-- pgrelay._check_sink(sink): validate a subscription's sink description.
-- Sinks: webhook {url, secret_env?, timeout_ms?, concurrency?}, stdout {}, consumer {} (pulled
-- in process, never by the daemon), nats {...}, amqp {...} (see _check_broker_sink.sql).
-- Secrets are never stored here: a sink names the environment variable or file that holds them.
CREATE OR REPLACE FUNCTION pgrelay._check_sink(p_function text, p_sink jsonb)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_type text;
BEGIN
    IF p_sink IS NULL OR jsonb_typeof(p_sink) <> 'object' THEN
        PERFORM pgrelay._raise('PR001', p_function, 'sink',
            format('must be a JSON object like {"type":"webhook","url":"http://..."}, got %s', coalesce(jsonb_typeof(p_sink), 'NULL')));
    END IF;
    v_type := p_sink ->> 'type';
    IF v_type IS NULL OR v_type NOT IN ('webhook', 'stdout', 'consumer', 'nats', 'amqp') THEN
        PERFORM pgrelay._raise('PR001', p_function, 'sink',
            format('must have "type" one of webhook, stdout, consumer, nats, amqp; got %s', coalesce(quote_literal(v_type), 'none')));
    END IF;
    IF v_type = 'webhook' AND coalesce(p_sink ->> 'url', '') !~ '^https?://[^\s/$.?#][^\s]*$' THEN
        PERFORM pgrelay._raise('PR001', p_function, 'sink',
            format('of type webhook must have "url" starting with http:// or https://, got %s', coalesce(quote_literal(p_sink ->> 'url'), 'none')));
    END IF;
    IF p_sink ? 'secret' THEN
        PERFORM pgrelay._raise('PR001', p_function, 'sink',
            'must not hold a secret itself: name its environment variable in "secret_env" or its file in "secret_file"');
    END IF;
    IF (p_sink ? 'timeout_ms') AND (jsonb_typeof(p_sink -> 'timeout_ms') <> 'number' OR (p_sink ->> 'timeout_ms')::numeric NOT BETWEEN 1 AND 600000) THEN
        PERFORM pgrelay._raise('PR001', p_function, 'sink', '"timeout_ms" must be a number between 1 and 600000');
    END IF;
    IF (p_sink ? 'concurrency') AND (jsonb_typeof(p_sink -> 'concurrency') <> 'number' OR (p_sink ->> 'concurrency')::numeric NOT BETWEEN 1 AND 1000) THEN
        PERFORM pgrelay._raise('PR001', p_function, 'sink', '"concurrency" must be a number between 1 and 1000');
    END IF;
    IF v_type IN ('nats', 'amqp') THEN
        PERFORM pgrelay._check_broker_sink(p_function, p_sink);
    END IF;
END;
$$;
