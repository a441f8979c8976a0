-- pgrelay.complete_batch(subscription, partition_index, lease_token, acked, failed, errors): finish a
-- leased batch and release the lease.
--   acked  - positions delivered: done.
--   failed - positions whose delivery failed, with errors[i] the reason for failed[i]: each goes
--            to its retry chain with backoff, or to dead letters after max_attempts; messages of
--            the same key later in the batch that were not attempted are parked behind it.
-- Positions of the batch in neither list were not attempted: they come again. The cursor
-- moves over the longest fully handled prefix of the batch. A stale lease_token raises PR005.
CREATE OR REPLACE FUNCTION pgrelay.complete_batch(
    subscription    text,
    partition_index integer,
    lease_token     bigint,
    acked           bigint[],
    failed          bigint[] DEFAULT '{}',
    errors          text[]   DEFAULT '{}'
)
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn        constant text := 'pgrelay.complete_batch';
    v_sub       pgrelay.subscriptions;
    v_part      pgrelay.subscription_partitions;
    v_position  bigint;
    v_bad       bigint;
    v_retry     pgrelay.retries;
    v_message   pgrelay.message_record;
    v_error     text;
    v_i         integer;
    v_chains    text[] := '{}';
    v_cursor_xid xid8;
    v_cursor_pos bigint;
    v_stopped   boolean := false;
    v_acked_n   integer := 0;
    v_failed_n  integer := 0;
    v_dead_n    integer := 0;
BEGIN
    v_part := pgrelay._lease(v_fn, complete_batch.subscription, complete_batch.partition_index, complete_batch.lease_token);
    v_sub := pgrelay._subscription(v_fn, complete_batch.subscription);
    IF complete_batch.acked IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'acked', 'must not be null (pass ''{}'')');
    END IF;
    IF complete_batch.failed IS NULL THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'failed', 'must not be null (pass ''{}'')');
    END IF;
    IF complete_batch.errors IS NULL OR cardinality(complete_batch.failed) <> cardinality(complete_batch.errors) THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'errors', 'must hold one reason per failed position');
    END IF;
    SELECT p INTO v_bad FROM unnest(complete_batch.acked || complete_batch.failed) AS p
    WHERE p IS NULL OR p NOT IN (SELECT unnest(v_part.inflight_positions || v_part.inflight_retries || v_part.inflight_ahead_positions))
    LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', v_fn, CASE WHEN v_bad = ANY (complete_batch.failed) THEN 'failed' ELSE 'acked' END,
            format('holds position %s, which is not in the leased batch', coalesce(v_bad::text, 'NULL')));
    END IF;
    SELECT p INTO v_bad FROM unnest(complete_batch.acked) AS p WHERE p IN (SELECT unnest(complete_batch.failed)) LIMIT 1;
    IF FOUND THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'failed', format('holds position %s, which acked holds too', v_bad));
    END IF;

    -- The common case: no failure, no retry, every message of the batch acknowledged.
    IF cardinality(complete_batch.failed) = 0 AND cardinality(v_part.inflight_retries) = 0
       AND cardinality(complete_batch.acked) = cardinality(v_part.inflight_positions) + cardinality(v_part.inflight_ahead_positions)
       AND (SELECT count(DISTINCT p) FROM unnest(complete_batch.acked) AS p)
           = cardinality(v_part.inflight_positions) + cardinality(v_part.inflight_ahead_positions) THEN
        v_i := cardinality(v_part.inflight_positions);
        IF v_i > 0 THEN
            v_cursor_xid := v_part.inflight_xids[v_i];
            v_cursor_pos := v_part.inflight_positions[v_i];
            INSERT INTO pgrelay.delivered_ahead (subscription, partition_index, xid, position)
            SELECT v_sub.name, v_part.partition_index, a.xid, a.position
            FROM unnest(v_part.inflight_ahead_xids, v_part.inflight_ahead_positions) AS a(xid, position)
            WHERE (a.xid, a.position) > (v_cursor_xid, v_cursor_pos)
            ON CONFLICT DO NOTHING;
            DELETE FROM pgrelay.delivered_ahead d
             WHERE d.subscription = v_sub.name AND d.partition_index = v_part.partition_index
               AND (d.xid, d.position) <= (v_cursor_xid, v_cursor_pos);
        ELSE
            v_cursor_xid := v_part.cursor_xid;
            v_cursor_pos := v_part.cursor_position;
        END IF;
        UPDATE pgrelay.subscription_partitions p
           SET cursor_xid = v_cursor_xid, cursor_position = v_cursor_pos,
               lease_owner = NULL, lease_expires_at = NULL,
               inflight_xids = '{}', inflight_positions = '{}', inflight_retries = '{}',
               inflight_ahead_xids = '{}', inflight_ahead_positions = '{}',
               delivered_count = p.delivered_count + v_i + cardinality(v_part.inflight_ahead_positions),
               last_delivered_at = CASE WHEN v_i > 0 THEN clock_timestamp() ELSE p.last_delivered_at END
         WHERE p.subscription = v_sub.name AND p.partition_index = v_part.partition_index;
        RETURN;
    END IF;

    -- Retries handed out in this batch.
    FOR v_retry IN
        SELECT * FROM pgrelay.retries r
        WHERE r.subscription = v_sub.name AND r.position = ANY (v_part.inflight_retries)
          AND (r.position = ANY (complete_batch.acked) OR r.position = ANY (complete_batch.failed))
        FOR UPDATE
    LOOP
        v_chains := v_chains || v_retry.chain;
        IF v_retry.position = ANY (complete_batch.acked) THEN
            DELETE FROM pgrelay.retries r WHERE r.subscription = v_sub.name AND r.position = v_retry.position;
            v_acked_n := v_acked_n + 1;
            CONTINUE;
        END IF;
        v_error := complete_batch.errors[array_position(complete_batch.failed, v_retry.position)];
        v_failed_n := v_failed_n + 1;
        IF v_retry.attempts + 1 >= v_sub.max_attempts THEN
            INSERT INTO pgrelay.dead_letters (subscription, position, xid, message, attempts, last_error)
            VALUES (v_sub.name, v_retry.position, v_retry.xid, v_retry.message, v_retry.attempts + 1, v_error)
            ON CONFLICT (subscription, position) DO UPDATE
                SET attempts = excluded.attempts, last_error = excluded.last_error, dead_at = now();
            DELETE FROM pgrelay.retries r WHERE r.subscription = v_sub.name AND r.position = v_retry.position;
            v_dead_n := v_dead_n + 1;
        ELSE
            UPDATE pgrelay.retries r
               SET attempts = r.attempts + 1, last_error = v_error,
                   next_attempt_at = pgrelay._next_attempt_at(v_sub.backoff, r.attempts + 1)
             WHERE r.subscription = v_sub.name AND r.position = v_retry.position;
        END IF;
    END LOOP;

    -- Log messages of this batch, in walk order: failures start chains, the cursor moves.
    v_cursor_xid := v_part.cursor_xid;
    v_cursor_pos := v_part.cursor_position;
    FOR v_i IN 1 .. cardinality(v_part.inflight_positions) LOOP
        v_position := v_part.inflight_positions[v_i];
        IF v_position = ANY (complete_batch.failed) THEN
            SELECT m.position, m.xid, m.id, m.topic, m.key, m.type, m.data, m.metadata, m.created_at
              INTO v_message
              FROM pgrelay.messages m
             WHERE m.xid = v_part.inflight_xids[v_i] AND m.position = v_position;
            v_error := complete_batch.errors[array_position(complete_batch.failed, v_position)];
            v_failed_n := v_failed_n + 1;
            IF v_sub.max_attempts <= 1 THEN
                INSERT INTO pgrelay.dead_letters (subscription, position, xid, message, attempts, last_error)
                VALUES (v_sub.name, v_position, v_message.xid, v_message, 1, v_error)
                ON CONFLICT (subscription, position) DO NOTHING;
                v_dead_n := v_dead_n + 1;
            ELSE
                INSERT INTO pgrelay.retries (subscription, partition_index, chain, position, xid, message, attempts,
                                             next_attempt_at, last_error)
                VALUES (v_sub.name, v_part.partition_index, pgrelay._chain_of(v_message.topic, v_message.key, v_position), v_position,
                        v_message.xid, v_message, 1, pgrelay._next_attempt_at(v_sub.backoff, 1), v_error)
                ON CONFLICT (subscription, position) DO NOTHING;
                v_chains := v_chains || pgrelay._chain_of(v_message.topic, v_message.key, v_position);
            END IF;
        ELSIF v_position = ANY (complete_batch.acked) THEN
            v_acked_n := v_acked_n + 1;
        ELSIF NOT EXISTS (SELECT 1 FROM pgrelay.retries r WHERE r.subscription = v_sub.name AND r.position = v_position) THEN
            -- Not attempted. Behind a failure of its key it is parked; otherwise it comes again.
            SELECT m.position, m.xid, m.id, m.topic, m.key, m.type, m.data, m.metadata, m.created_at
              INTO v_message
              FROM pgrelay.messages m
             WHERE m.xid = v_part.inflight_xids[v_i] AND m.position = v_position;
            IF v_message.key IS NOT NULL AND EXISTS (
                SELECT 1 FROM pgrelay.retries r
                WHERE r.subscription = v_sub.name AND r.partition_index = v_part.partition_index
                  AND r.chain = pgrelay._chain_of(v_message.topic, v_message.key, v_position)) THEN
                INSERT INTO pgrelay.retries (subscription, partition_index, chain, position, xid, message)
                VALUES (v_sub.name, v_part.partition_index, pgrelay._chain_of(v_message.topic, v_message.key, v_position), v_position,
                        v_message.xid, v_message);
                v_chains := v_chains || pgrelay._chain_of(v_message.topic, v_message.key, v_position);
            ELSE
                v_stopped := true;
                CONTINUE;
            END IF;
        END IF;
        -- Handled: the cursor follows unless an unhandled message stopped it.
        IF v_stopped THEN
            INSERT INTO pgrelay.delivered_ahead (subscription, partition_index, xid, position)
            VALUES (v_sub.name, v_part.partition_index, v_part.inflight_xids[v_i], v_position)
            ON CONFLICT DO NOTHING;
        ELSE
            v_cursor_xid := v_part.inflight_xids[v_i];
            v_cursor_pos := v_position;
        END IF;
    END LOOP;

    -- Messages pulled ahead of the walk. Whatever is done with one (acknowledged, retrying,
    -- parked, dead) is remembered in delivered_ahead so the walk skips it when it gets there;
    -- one not attempted and not behind a failure comes again.
    FOR v_i IN 1 .. cardinality(v_part.inflight_ahead_positions) LOOP
        v_position := v_part.inflight_ahead_positions[v_i];
        SELECT m.position, m.xid, m.id, m.topic, m.key, m.type, m.data, m.metadata, m.created_at
          INTO v_message
          FROM pgrelay.messages m
         WHERE m.xid = v_part.inflight_ahead_xids[v_i] AND m.position = v_position;
        IF v_position = ANY (complete_batch.acked) THEN
            v_acked_n := v_acked_n + 1;
        ELSIF v_position = ANY (complete_batch.failed) THEN
            v_error := complete_batch.errors[array_position(complete_batch.failed, v_position)];
            v_failed_n := v_failed_n + 1;
            IF v_sub.max_attempts <= 1 THEN
                INSERT INTO pgrelay.dead_letters (subscription, position, xid, message, attempts, last_error)
                VALUES (v_sub.name, v_position, v_message.xid, v_message, 1, v_error)
                ON CONFLICT (subscription, position) DO NOTHING;
                v_dead_n := v_dead_n + 1;
            ELSE
                INSERT INTO pgrelay.retries (subscription, partition_index, chain, position, xid, message, attempts,
                                             next_attempt_at, last_error)
                VALUES (v_sub.name, v_part.partition_index, pgrelay._chain_of(v_message.topic, v_message.key, v_position), v_position,
                        v_message.xid, v_message, 1, pgrelay._next_attempt_at(v_sub.backoff, 1), v_error)
                ON CONFLICT (subscription, position) DO NOTHING;
                v_chains := v_chains || pgrelay._chain_of(v_message.topic, v_message.key, v_position);
            END IF;
        ELSIF NOT EXISTS (SELECT 1 FROM pgrelay.retries r WHERE r.subscription = v_sub.name AND r.position = v_position)
              AND EXISTS (SELECT 1 FROM pgrelay.retries r
                          WHERE r.subscription = v_sub.name AND r.partition_index = v_part.partition_index
                            AND r.chain = pgrelay._chain_of(v_message.topic, v_message.key, v_position)) THEN
            INSERT INTO pgrelay.retries (subscription, partition_index, chain, position, xid, message)
            VALUES (v_sub.name, v_part.partition_index, pgrelay._chain_of(v_message.topic, v_message.key, v_position), v_position,
                    v_message.xid, v_message);
        ELSIF NOT EXISTS (SELECT 1 FROM pgrelay.retries r WHERE r.subscription = v_sub.name AND r.position = v_position) THEN
            CONTINUE; -- not attempted: it comes again
        END IF;
        INSERT INTO pgrelay.delivered_ahead (subscription, partition_index, xid, position)
        VALUES (v_sub.name, v_part.partition_index, v_message.xid, v_position)
        ON CONFLICT DO NOTHING;
    END LOOP;

    PERFORM pgrelay._promote_chain(v_sub.name, v_part.partition_index, c)
    FROM (SELECT DISTINCT c FROM unnest(v_chains) AS c) AS chains;

    DELETE FROM pgrelay.delivered_ahead d
     WHERE d.subscription = v_sub.name AND d.partition_index = v_part.partition_index
       AND (d.xid, d.position) <= (v_cursor_xid, v_cursor_pos);

    UPDATE pgrelay.subscription_partitions p
       SET cursor_xid = v_cursor_xid, cursor_position = v_cursor_pos,
           lease_owner = NULL, lease_expires_at = NULL,
           inflight_xids = '{}', inflight_positions = '{}', inflight_retries = '{}',
           inflight_ahead_xids = '{}', inflight_ahead_positions = '{}',
           delivered_count = p.delivered_count + v_acked_n,
           failed_count = p.failed_count + v_failed_n,
           dead_count = p.dead_count + v_dead_n,
           last_delivered_at = CASE WHEN v_acked_n > 0 THEN clock_timestamp() ELSE p.last_delivered_at END
     WHERE p.subscription = v_sub.name AND p.partition_index = v_part.partition_index;
END;
$$;
