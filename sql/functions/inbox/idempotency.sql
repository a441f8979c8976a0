-- Idempotency keys for requests (the HTTP Idempotency-Key pattern).
--
-- pgrelay.idempotency_begin(key, fingerprint, scope, lock_seconds, ttl) — call in its own
-- transaction before doing the work. fingerprint identifies the request (e.g. a hash of method,
-- path and body). Returns (status, response):
--   'new'         - you own the key: do the work, then idempotency_complete (or _abandon on failure)
--   'in_progress' - another caller owns it and is working: retry later
--   'completed'   - done before: response is the stored response
-- The same key with a different fingerprint raises PR006. An owner that does not complete within
-- lock_seconds loses the key to the next caller. Keys live for ttl after their creation.
CREATE OR REPLACE FUNCTION pgrelay.idempotency_begin(
    key          text,
    fingerprint  text,
    scope        text     DEFAULT 'default',
    lock_seconds integer  DEFAULT 60,
    ttl          interval DEFAULT '24 hours',
    OUT status   text,
    OUT response jsonb
)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_fn  constant text := 'pgrelay.idempotency_begin';
    v_row pgrelay.idempotency_keys;
BEGIN
    IF idempotency_begin.key IS NULL OR length(idempotency_begin.key) NOT BETWEEN 1 AND 255 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'key', 'must be 1-255 characters');
    END IF;
    IF idempotency_begin.fingerprint IS NULL OR length(idempotency_begin.fingerprint) NOT BETWEEN 1 AND 1000 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'fingerprint', 'must be 1-1000 characters');
    END IF;
    PERFORM pgrelay._check_name(v_fn, 'scope', idempotency_begin.scope);
    IF idempotency_begin.lock_seconds IS NULL OR idempotency_begin.lock_seconds NOT BETWEEN 1 AND 86400 THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'lock_seconds', 'must be between 1 and 86400');
    END IF;
    IF idempotency_begin.ttl IS NULL OR idempotency_begin.ttl <= interval '0' THEN
        PERFORM pgrelay._raise('PR001', v_fn, 'ttl', 'must be a positive interval');
    END IF;

    -- An expired key is forgotten.
    DELETE FROM pgrelay.idempotency_keys k
    WHERE k.scope = idempotency_begin.scope AND k.key = idempotency_begin.key AND k.expires_at < now();

    INSERT INTO pgrelay.idempotency_keys (scope, key, fingerprint, status, locked_until, expires_at)
    VALUES (idempotency_begin.scope, idempotency_begin.key, idempotency_begin.fingerprint, 'in_progress',
            clock_timestamp() + make_interval(secs => idempotency_begin.lock_seconds), now() + idempotency_begin.ttl)
    ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING;
    IF FOUND THEN
        status := 'new';
        RETURN;
    END IF;

    SELECT * INTO v_row FROM pgrelay.idempotency_keys k
    WHERE k.scope = idempotency_begin.scope AND k.key = idempotency_begin.key
    FOR UPDATE;
    IF v_row.fingerprint <> idempotency_begin.fingerprint THEN
        RAISE EXCEPTION USING
            ERRCODE = 'PR006',
            MESSAGE = format('%s: argument key %L was already used for a different request (fingerprint differs)', v_fn, idempotency_begin.key),
            COLUMN = 'key';
    END IF;
    IF v_row.status = 'completed' THEN
        status := 'completed';
        response := v_row.response;
        RETURN;
    END IF;
    IF v_row.locked_until < clock_timestamp() THEN
        -- The owner went away without completing: the key passes to this caller.
        UPDATE pgrelay.idempotency_keys k
           SET locked_until = clock_timestamp() + make_interval(secs => idempotency_begin.lock_seconds)
         WHERE k.scope = idempotency_begin.scope AND k.key = idempotency_begin.key;
        status := 'new';
        RETURN;
    END IF;
    status := 'in_progress';
END;
$$;

-- pgrelay.idempotency_complete(key, response, scope): store the response of the work; later
-- callers with the same key and fingerprint get it. Raises PR003 for an unknown key and PR007
-- for one already completed.
CREATE OR REPLACE FUNCTION pgrelay.idempotency_complete(key text, response jsonb, scope text DEFAULT 'default')
RETURNS void
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_status text;
BEGIN
    IF idempotency_complete.key IS NULL OR length(idempotency_complete.key) NOT BETWEEN 1 AND 255 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.idempotency_complete', 'key', 'must be 1-255 characters');
    END IF;
    PERFORM pgrelay._check_name('pgrelay.idempotency_complete', 'scope', idempotency_complete.scope);
    IF idempotency_complete.response IS NULL THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.idempotency_complete', 'response', 'must not be null (use ''null''::jsonb)');
    END IF;
    SELECT k.status INTO v_status FROM pgrelay.idempotency_keys k
    WHERE k.scope = idempotency_complete.scope AND k.key = idempotency_complete.key FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pgrelay._raise('PR003', 'pgrelay.idempotency_complete', 'key', format('names no idempotency key in scope %L', idempotency_complete.scope));
    END IF;
    IF v_status = 'completed' THEN
        PERFORM pgrelay._raise('PR007', 'pgrelay.idempotency_complete', 'key', 'is already completed');
    END IF;
    UPDATE pgrelay.idempotency_keys k
       SET status = 'completed', response = idempotency_complete.response, completed_at = now(), locked_until = NULL
     WHERE k.scope = idempotency_complete.scope AND k.key = idempotency_complete.key;
END;
$$;

-- pgrelay.idempotency_abandon(key, scope): the work failed; forget the in-progress key so the
-- request can be retried. A completed key is kept.
CREATE OR REPLACE FUNCTION pgrelay.idempotency_abandon(key text, scope text DEFAULT 'default')
RETURNS boolean
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    IF idempotency_abandon.key IS NULL OR length(idempotency_abandon.key) NOT BETWEEN 1 AND 255 THEN
        PERFORM pgrelay._raise('PR001', 'pgrelay.idempotency_abandon', 'key', 'must be 1-255 characters');
    END IF;
    PERFORM pgrelay._check_name('pgrelay.idempotency_abandon', 'scope', idempotency_abandon.scope);
    DELETE FROM pgrelay.idempotency_keys k
    WHERE k.scope = idempotency_abandon.scope AND k.key = idempotency_abandon.key AND k.status = 'in_progress';
    RETURN FOUND;
END;
$$;

-- pgrelay.idempotency_expire(): delete expired keys. Returns how many.
CREATE OR REPLACE FUNCTION pgrelay.idempotency_expire()
RETURNS bigint
LANGUAGE sql
AS $$
    WITH gone AS (DELETE FROM pgrelay.idempotency_keys k WHERE k.expires_at < now() RETURNING 1)
    SELECT count(*) FROM gone
$$;
