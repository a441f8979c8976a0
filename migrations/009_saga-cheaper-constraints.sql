-- pgrelay 009: the saga tables' constraints cost saga_start less (PostgreSQL 15 measured with
-- callgrind: saga_start of 3 SQL steps from 1,595k to 1,443k instructions for the keys, to 1,371k
-- for the status check).
--
-- 1. The references between saga tables are kept by triggers that fire on deletes, instead of
-- foreign keys that are checked on every insert.
--
-- saga_steps.saga_id -> sagas.id and sagas (saga_type, version) -> saga_definitions were foreign
-- keys, so every saga_start ran 4 referential checks (one per step row and one for the saga row:
-- a query each, with a FOR KEY SHARE lock, the one on the definition row shared by every start of
-- the type, which makes it a multixact under concurrency): about 10 % of saga_start's CPU. Only
-- pgrelay's own functions write these tables (producers cannot), and they write a step row only
-- for the saga row they have just written or locked, and a saga row only for a definition they
-- have just read, so the checks on insert never found anything. What the keys did on the other
-- side stays, by trigger, at no cost to inserts:
--   - deleting (or truncating) sagas deletes their steps (was ON DELETE CASCADE);
--   - deleting a definition version that a saga uses, or changing its type or version, is refused
--     with SQLSTATE 23503 (foreign_key_violation), as the key did; truncating saga_definitions
--     while sagas exist too. The check first locks pgrelay.sagas in SHARE mode, so a start that
--     read the version and has not committed yet is waited for, not missed (READ COMMITTED).
--
-- 2. sagas.status is checked by a domain (pgrelay.saga_state) instead of a CHECK constraint: the
-- same values are allowed, but PostgreSQL reads and plans a table's CHECK expressions again for
-- every statement that writes the table (about 4 % of saga_start), while a domain's check is
-- planned once per session (type cache).

-- Up Migration

ALTER TABLE pgrelay.saga_steps DROP CONSTRAINT saga_steps_saga_id_fkey;
ALTER TABLE pgrelay.sagas DROP CONSTRAINT sagas_saga_type_version_fkey;

CREATE FUNCTION pgrelay.tg_saga_steps_cascade() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pgrelay
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE pgrelay.saga_steps;
    ELSE
        DELETE FROM pgrelay.saga_steps st WHERE st.saga_id IN (SELECT g.id FROM gone g);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER saga_steps_cascade AFTER DELETE ON pgrelay.sagas
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION pgrelay.tg_saga_steps_cascade();
CREATE TRIGGER saga_steps_cascade_truncate AFTER TRUNCATE ON pgrelay.sagas
    FOR EACH STATEMENT EXECUTE FUNCTION pgrelay.tg_saga_steps_cascade();

CREATE FUNCTION pgrelay.tg_saga_definitions_in_use() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pgrelay
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM pgrelay.sagas) THEN
            RAISE EXCEPTION 'cannot truncate pgrelay.saga_definitions: sagas use its definitions'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.saga_type, NEW.version) IS NOT DISTINCT FROM (OLD.saga_type, OLD.version) THEN
        RETURN NEW;
    END IF;
    -- A saga_start that has read this version and not committed its saga yet would be missed by
    -- the check below (the foreign key's FOR KEY SHARE lock used to stop that). SHARE mode waits
    -- for every transaction that wrote pgrelay.sagas and holds new writers off until this one
    -- ends; the check then runs on a new snapshot (READ COMMITTED) and sees their sagas.
    -- Deleting a definition is a rare admin act; starts do not pay for it.
    LOCK TABLE pgrelay.sagas IN SHARE MODE;
    IF EXISTS (SELECT 1 FROM pgrelay.sagas s WHERE s.saga_type = OLD.saga_type AND s.version = OLD.version) THEN
        RAISE EXCEPTION 'saga definition % version % is used by sagas', OLD.saga_type, OLD.version
            USING ERRCODE = 'foreign_key_violation', TABLE = 'saga_definitions', SCHEMA = 'pgrelay';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END;
$$;

CREATE TRIGGER saga_definitions_in_use BEFORE DELETE OR UPDATE OF saga_type, version ON pgrelay.saga_definitions
    FOR EACH ROW EXECUTE FUNCTION pgrelay.tg_saga_definitions_in_use();
CREATE TRIGGER saga_definitions_in_use_truncate BEFORE TRUNCATE ON pgrelay.saga_definitions
    FOR EACH STATEMENT EXECUTE FUNCTION pgrelay.tg_saga_definitions_in_use();

CREATE DOMAIN pgrelay.saga_state AS text
    CHECK (VALUE IN ('running', 'completed', 'compensating', 'compensated', 'failed', 'cancelled'));
ALTER TABLE pgrelay.sagas DROP CONSTRAINT sagas_status_check;
ALTER TABLE pgrelay.sagas ALTER COLUMN status TYPE pgrelay.saga_state;

-- Down Migration

ALTER TABLE pgrelay.sagas ALTER COLUMN status TYPE text;
ALTER TABLE pgrelay.sagas ADD CONSTRAINT sagas_status_check
    CHECK (status IN ('running', 'completed', 'compensating', 'compensated', 'failed', 'cancelled'));
DROP DOMAIN pgrelay.saga_state;

DROP TRIGGER saga_definitions_in_use_truncate ON pgrelay.saga_definitions;
DROP TRIGGER saga_definitions_in_use ON pgrelay.saga_definitions;
DROP FUNCTION pgrelay.tg_saga_definitions_in_use();
DROP TRIGGER saga_steps_cascade_truncate ON pgrelay.sagas;
DROP TRIGGER saga_steps_cascade ON pgrelay.sagas;
DROP FUNCTION pgrelay.tg_saga_steps_cascade();
ALTER TABLE pgrelay.sagas ADD CONSTRAINT sagas_saga_type_version_fkey
    FOREIGN KEY (saga_type, version) REFERENCES pgrelay.saga_definitions (saga_type, version);
ALTER TABLE pgrelay.saga_steps ADD CONSTRAINT saga_steps_saga_id_fkey
    FOREIGN KEY (saga_id) REFERENCES pgrelay.sagas (id) ON DELETE CASCADE;
