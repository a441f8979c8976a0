-- pgrelay.subscribe(name, topics, sink, options): create or update a subscription.
-- topics: exact topics or prefixes ending in '*'. options (all optional):
--   partitions (1-256, default 1; fixed once created), start ('earliest' | 'latest', default
--   'latest'; only on creation), max_attempts (1-1000, default 10), backoff {initial_ms, max_ms,
--   multiplier, jitter}, batch_size (1-10000, default 100), lease_seconds (1-3600, default 30).
-- Updating keeps every cursor: a changed topic list applies from the cursor on.
CREATE OR REPLACE FUNCTION pgrelay.subscribe(
    name    text,
    topics  text[],
    sink    jsonb,
    options jsonb DEFAULT '{}'
)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn           constant text := 'pgrelay.subscribe';
    v_key          text;
    v_partitions   integer;
    v_start        text;
    v_max_attempts integer;
    v_batch_size   integer;
    v_lease_seconds numeric;
    v_backoff      jsonb;
    v_existing     pgrelay.subscriptions;
    v_cursor_xid   xid8;
    v_cursor_pos   bigint;
BEGIN
    PERFORM pgrelay._check_name(v_fn, 'name', subscribe.name);
    PERFORM pgrelay._check_topic_patterns(v_fn, 'topics', subscribe.topics);
    PERFORM pgrelay._check_sink(v_fn, subscribe.sink);
    IF subscribe.options IS NULL OR jsonb_typeof(subscribe.options) <> 'object' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options', 'must be a JSON object');
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(subscribe.options) AS k
    WHERE k NOT IN ('partitions', 'start', 'max_attempts', 'backoff', 'batch_size', 'lease_seconds') LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options',
            format('has an unknown option %L (known: partitions, start, max_attempts, backoff, batch_size, lease_seconds)', v_key));
    END IF;
    v_partitions := pgrelay._whole_option(v_fn, subscribe.options, 'partitions', 1, 1, 256);
    v_max_attempts := pgrelay._whole_option(v_fn, subscribe.options, 'max_attempts', 10, 1, 1000);
    v_batch_size := pgrelay._whole_option(v_fn, subscribe.options, 'batch_size', 100, 1, 10000);
    v_lease_seconds := pgrelay._int_option(v_fn, subscribe.options, 'lease_seconds', 30, 1, 3600);
    v_backoff := pgrelay._check_backoff(v_fn, subscribe.options -> 'backoff');
    IF coalesce(subscribe.options -> 'start', 'null') NOT IN ('null', '"earliest"', '"latest"') THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'options',
            format('"start" must be "earliest" or "latest", got %s', subscribe.options -> 'start'));
    END IF;
    v_start := coalesce(subscribe.options ->> 'start', 'latest');

    -- Serialise concurrent subscribes of one name.
    PERFORM pg_advisory_xact_lock(hashtextextended('pgrelay.subscription:' || subscribe.name, 0));
    SELECT * INTO v_existing FROM pgrelay.subscriptions s WHERE s.name = subscribe.name FOR UPDATE;
    IF FOUND AND v_existing.partitions <> v_partitions AND (subscribe.options -> 'partitions') IS NOT NULL THEN
        PERFORM pgrelay._raise('PR007', v_fn, 'options',
            format('"partitions" cannot change from %s to %s on an existing subscription: unsubscribe and subscribe again',
                   v_existing.partitions, v_partitions));
    END IF;

    INSERT INTO pgrelay.subscriptions AS s (name, topics, sink, partitions, max_attempts, backoff, batch_size,
                                            lease_seconds, options)
    VALUES (subscribe.name, subscribe.topics, subscribe.sink, v_partitions,
            v_max_attempts, v_backoff, v_batch_size, v_lease_seconds, subscribe.options)
    ON CONFLICT ON CONSTRAINT subscriptions_pkey DO UPDATE
        SET topics = excluded.topics, sink = excluded.sink, max_attempts = excluded.max_attempts,
            backoff = excluded.backoff, batch_size = excluded.batch_size, lease_seconds = excluded.lease_seconds,
            options = excluded.options, updated_at = now();

    IF v_existing.name IS NULL THEN
        IF v_start = 'earliest' THEN
            v_cursor_xid := '0';
            v_cursor_pos := 0;
        ELSE
            -- Everything below the horizon is skipped; every transaction still open, and so every
            -- message that commits from now on, is delivered.
            v_cursor_xid := (pg_snapshot_xmin(pg_current_snapshot())::text::numeric - 1)::text::xid8;
            v_cursor_pos := 9223372036854775807;
        END IF;
        INSERT INTO pgrelay.subscription_partitions (subscription, partition_index, cursor_xid, cursor_position)
        SELECT subscribe.name, p, v_cursor_xid, v_cursor_pos FROM generate_series(0, v_partitions - 1) AS p;
        IF v_start = 'latest' THEN
            -- Transactions above the horizon that have already committed are history too.
            PERFORM pgrelay._skip_committed(subscribe.name, NULL, NULL);
        END IF;
    END IF;
END;
$$;
