-- pgrelay._next_xid(): the bound stored in messages.next_xid (see migrations/001).
-- Under READ COMMITTED every statement of a volatile function takes a fresh snapshot, so its
-- xmax is above the xid of every transaction that completed before this message was written,
-- which includes every earlier publisher of the same key when publishers are serialised.
-- Under REPEATABLE READ or SERIALIZABLE the snapshot is the transaction's first one, so no
-- bound is known: NULL, and readers search all younger transactions for that key.
CREATE OR REPLACE FUNCTION pgrelay._next_xid()
RETURNS xid8
LANGUAGE sql
VOLATILE
AS $$
    SELECT CASE WHEN current_setting('transaction_isolation') = 'read committed'
                THEN pg_snapshot_xmax(pg_current_snapshot()) END
$$;
