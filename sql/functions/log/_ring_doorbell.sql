-- pgrelay._ring_doorbell(topic): wake an idle relay, at most once per arming.
-- A relay with nothing to do arms the doorbell; the first publisher to commit after that
-- disarms it and NOTIFYs channel 'pgrelay' with the topic only (never the body). While the
-- doorbell is disarmed (a busy relay) publishers do nothing here but read one row, so their
-- commits never take NOTIFY's cluster-wide lock. A publisher that rolls back also rolls back
-- its disarming and its NOTIFY, so the next publisher rings instead.
--
-- The doorbell row is taken with SKIP LOCKED: publishers must never wait on each other here.
-- Waiting would order them by who rang first, and two publishers that also lock business rows
-- (or keys, lock_key) in opposite orders would deadlock through this row. A publisher that finds
-- the row locked leaves the ringing to its holder; if that one rolls back, the relay's doorbell
-- protocol (doorbell_settled) and its safety poll still find the message.
CREATE OR REPLACE FUNCTION pgrelay._ring_doorbell(p_topic text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF (SELECT d.armed FROM pgrelay.doorbell d) THEN
        UPDATE pgrelay.doorbell d SET armed = false, armed_at = NULL
         WHERE d.id IN (SELECT l.id FROM pgrelay.doorbell l WHERE l.armed FOR UPDATE SKIP LOCKED);
        IF FOUND THEN
            PERFORM pg_notify('pgrelay', p_topic);
        END IF;
    END IF;
END;
$$;
