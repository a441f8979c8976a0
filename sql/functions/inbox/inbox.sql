-- pgrelay.inbox_receive(consumer, message_id): call inside the transaction that applies a
-- message's side effects. Returns true the first time (go ahead), false for a redelivery (skip):
-- the record commits or rolls back with the side effects, so processing is effectively once.
-- A concurrent duplicate waits on the first one's row and then gets false.
CREATE OR REPLACE FUNCTION pgrelay.inbox_receive(consumer text, message_id uuid)
RETURNS boolean
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_new boolean;
BEGIN
    PERFORM pgrelay._check_name('pgrelay.inbox_receive', 'consumer', inbox_receive.consumer);
    IF inbox_receive.message_id IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.inbox_receive', 'message_id', 'must not be null');
    END IF;
    INSERT INTO pgrelay.inbox (consumer, message_id)
    VALUES (inbox_receive.consumer, inbox_receive.message_id)
    ON CONFLICT ON CONSTRAINT inbox_pkey DO NOTHING
    RETURNING true INTO v_new;
    RETURN coalesce(v_new, false);
END;
$$;

-- pgrelay.inbox_expire(older_than, batch_size): forget inbox records older than older_than
-- (default: setting pgrelay.inbox_retention, else 7 days), in batches. Keep it longer than any
-- redelivery can take. Returns how many it removed.
CREATE OR REPLACE FUNCTION pgrelay.inbox_expire(older_than interval DEFAULT NULL, batch_size integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_cutoff  timestamptz;
    v_total   bigint := 0;
    v_batch   integer;
BEGIN
    IF inbox_expire.batch_size IS NULL OR inbox_expire.batch_size < 1 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.inbox_expire', 'batch_size', 'must be at least 1');
    END IF;
    IF inbox_expire.older_than IS NOT NULL AND inbox_expire.older_than < interval '0' THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.inbox_expire', 'older_than', 'must not be negative');
    END IF;
    v_cutoff := now() - coalesce(inbox_expire.older_than,
                                 nullif(current_setting('pgrelay.inbox_retention', true), '')::interval,
                                 interval '7 days');
    LOOP
        DELETE FROM pgrelay.inbox i
        WHERE (i.consumer, i.message_id) IN (
            SELECT o.consumer, o.message_id FROM pgrelay.inbox o
            WHERE o.processed_at < v_cutoff LIMIT inbox_expire.batch_size);
        GET DIAGNOSTICS v_batch = ROW_COUNT;
        v_total := v_total + v_batch;
        EXIT WHEN v_batch < inbox_expire.batch_size;
    END LOOP;
    RETURN v_total;
END;
$$;
