-- The relay side of the doorbell (see pgrelay._ring_doorbell).
-- pgrelay.doorbell_arm(): a relay with nothing to do asks the next publisher to NOTIFY channel
-- 'pgrelay'. Call it in its own transaction, then pgrelay.doorbell_watermark() in a later one:
-- a publisher that read the doorbell before the arming committed already had its xid, so it is
-- below the watermark. The relay keeps polling (with backoff) until
-- pgrelay.doorbell_settled(watermark) says every such publisher has ended, and only then sleeps
-- on NOTIFY alone (plus its slow safety poll).
CREATE OR REPLACE FUNCTION pgrelay.doorbell_arm()
RETURNS void
LANGUAGE sql
AS $$
    UPDATE pgrelay.doorbell SET armed = true, armed_at = now() WHERE NOT armed;
$$;

-- The watermark is a transaction id of its own, not pg_snapshot_xmax(pg_current_snapshot()):
-- a snapshot's xmax is the latest *completed* xid plus one, so a publisher that took its xid
-- just after the relay's arming transaction took its own, and read the doorbell before the arming
-- committed, can hold an xid at or above that xmax. doorbell_settled would then say true while
-- that publisher (which will not ring) is still running, and its message would wait for the safety
-- poll. A fresh xid is above every xid handed out before it. It writes no WAL of its own, so its
-- commit does not wait for a flush.
CREATE OR REPLACE FUNCTION pgrelay.doorbell_watermark()
RETURNS xid8
LANGUAGE sql
VOLATILE
AS $$
    SELECT pg_current_xact_id();
$$;

CREATE OR REPLACE FUNCTION pgrelay.doorbell_settled(watermark xid8)
RETURNS boolean
LANGUAGE sql
VOLATILE
AS $$
    SELECT pg_snapshot_xmin(pg_current_snapshot()) >= watermark;
$$;
