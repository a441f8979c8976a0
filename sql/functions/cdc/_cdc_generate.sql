-- pgrelay._cdc_generate(relid): (re)write a captured table's trigger function and triggers from
-- its row in pgrelay.cdc_tables. The function holds static SQL (so its plans are cached), built
-- with format('%I'/%L) from catalog names, never from user text.
--
-- One message per changed row: topic from the config; key = the key column's value as text, or
-- for a composite key the JSON array of the values (jsonb text form, e.g. [1, "eu"]); type
-- insert | update | delete | truncate; data = {"before", "after", "changed"}; metadata = {"xid",
-- "user", "application_name", "schema", "table", "captured_at"}.
-- An UPDATE pairs old and new rows by key (one FULL JOIN): a row whose key changed becomes a
-- delete of the old key and an insert of the new one.
-- Partitions get the same INSERT/UPDATE/DELETE triggers (a statement fires only the triggers of
-- the table it names) and a BEFORE TRUNCATE trigger that emits one delete per row when a
-- partition alone is truncated (the parent's TRUNCATE emits one 'truncate' instead).
CREATE OR REPLACE FUNCTION pgrelay._cdc_generate(p_relid oid)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_cfg       pgrelay.cdc_tables;
    v_fn        text := format('pgrelay.%I', '_cdc_capture_' || p_relid);
    v_schema    text;
    v_table     text;
    v_cols      text[];
    v_exclude   text[];
    v_mask      text[];
    v_key_new   text;
    v_key_old   text;
    v_join      text;
    v_img_new   text;
    v_img_old   text;
    v_changed   text;
    v_insert    text;
    v_close     text;
    v_body      text;
    v_part      regclass;
    v_trig      record;
BEGIN
    SELECT * INTO v_cfg FROM pgrelay.cdc_tables c WHERE c.relid = p_relid;
    SELECT n.nspname, c.relname INTO v_schema, v_table
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_relid;
    SELECT array_agg(quote_ident(a.attname) ORDER BY k.n) INTO v_cols
    FROM unnest(v_cfg.key_attnums) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_attribute a ON a.attrelid = p_relid AND a.attnum = k.attnum AND NOT a.attisdropped;
    IF coalesce(cardinality(v_cols), 0) <> cardinality(v_cfg.key_attnums) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'PR007',
            MESSAGE = format('pgrelay: a key column of captured table %s is gone: run pgrelay.cdc_disable(%L) '
                             'or pgrelay.cdc_enable with other key_columns first', p_relid::regclass, p_relid::regclass::text),
            COLUMN = 'key_columns';
    END IF;
    v_exclude := ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = p_relid AND a.attnum = ANY (v_cfg.exclude_attnums) AND NOT a.attisdropped ORDER BY a.attnum);
    v_mask := ARRAY(SELECT a.attname::text FROM pg_attribute a
                    WHERE a.attrelid = p_relid AND a.attnum = ANY (v_cfg.mask_attnums) AND NOT a.attisdropped ORDER BY a.attnum);

    IF cardinality(v_cols) = 1 THEN
        v_key_new := format('(n.%s)::text', v_cols[1]);
        v_key_old := format('(o.%s)::text', v_cols[1]);
    ELSE
        v_key_new := format('jsonb_build_array(%s)::text', (SELECT string_agg('n.' || c, ', ') FROM unnest(v_cols) c));
        v_key_old := format('jsonb_build_array(%s)::text', (SELECT string_agg('o.' || c, ', ') FROM unnest(v_cols) c));
    END IF;
    -- Key columns are NOT NULL (cdc_enable checks): '=' lets bulk updates hash-join, and a NULL
    -- first key column marks the missing side of the FULL JOIN.
    v_join := (SELECT string_agg(format('o.%s = n.%s', c, c), ' AND ') FROM unnest(v_cols) c);
    -- changed: the names (sorted, as jsonb_each of the images used to be) of the captured columns
    -- whose values differ, compared column by column: no image diffing. Types whose equality is
    -- identity of the value (text compared bytewise) use IS DISTINCT FROM; any other type (numeric
    -- 1.0 = 1.00, json without '=', citext, domains...) compares its JSON form, as the images do.
    SELECT coalesce('array_remove(ARRAY[' || string_agg(
               format('CASE WHEN %s IS DISTINCT FROM %s THEN %L END',
                      CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'bool'::regtype, 'uuid'::regtype,
                                               'date'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype, 'bytea'::regtype,
                                               'oid'::regtype, 'jsonb'::regtype) THEN format('o.%I', a.attname)
                           WHEN a.atttypid IN ('text'::regtype, 'varchar'::regtype) THEN format('o.%I COLLATE "C"', a.attname)
                           ELSE format('to_jsonb(o.%I)', a.attname) END,
                      CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'bool'::regtype, 'uuid'::regtype,
                                               'date'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype, 'bytea'::regtype,
                                               'oid'::regtype, 'jsonb'::regtype) THEN format('n.%I', a.attname)
                           WHEN a.atttypid IN ('text'::regtype, 'varchar'::regtype) THEN format('n.%I COLLATE "C"', a.attname)
                           ELSE format('to_jsonb(n.%I)', a.attname) END,
                      a.attname),
               ', ' ORDER BY a.attname::text) || '], NULL)', 'ARRAY[]::text[]')
    INTO v_changed
    FROM pg_attribute a
    WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped AND NOT (a.attname::text = ANY (v_exclude));

    IF cardinality(v_exclude) = 0 AND cardinality(v_mask) = 0 THEN
        -- The row itself, not to_jsonb(row): jsonb_build_object converts it straight into the
        -- message (the same JSON), without building and re-reading an intermediate jsonb.
        v_img_new := 'n.*';
        v_img_old := 'o.*';
    ELSE
        v_img_new := format('pgrelay._cdc_image(to_jsonb(n.*), %L, %L)', v_exclude, v_mask);
        v_img_old := format('pgrelay._cdc_image(to_jsonb(o.*), %L, %L)', v_exclude, v_mask);
    END IF;
    -- Every message's id comes from its position (pgrelay._message_id, far cheaper than
    -- gen_random_uuid()): the SELECT that takes the positions (and draws the id's random bits) is
    -- wrapped in one that adds the ids. The id is computed by the immutable form of
    -- _message_id, so the wrapper holds no volatile function and the planner merges it into the
    -- INSERT (one subquery scan fewer to start per statement).
    v_insert := 'INSERT INTO pgrelay.messages (position, xid, next_xid, id, topic, key, type, data, metadata) '
                'SELECT m.p, m.x, m.nx, pgrelay._message_id(m.p, m.r1, m.r2), m.t, m.k, m.ty, m.d, m.md FROM (';
    v_close := ') AS m(p, r1, r2, x, nx, t, k, ty, d, md)';

    -- The source is passed as a literal (%L), so no column name can end a dollar quote.
    v_body := format($f$
-- Generated by pgrelay.cdc_enable for the table with oid %2$s: do not edit, run pgrelay.cdc_enable again.
DECLARE
    v_xid      xid8;
    v_next_xid xid8;
    v_meta     jsonb;
    v_armed    boolean;
BEGIN
    IF TG_WHEN = 'BEFORE' THEN
        -- TRUNCATE of a partition: skipped when an ancestor is truncated in the same statement
        -- (this backend holds its ACCESS EXCLUSIVE lock), which then emits one 'truncate'.
        IF EXISTS (SELECT 1 FROM pg_partition_ancestors(TG_RELID) AS a(relid)
                   JOIN pg_locks l ON l.relation = a.relid AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                   WHERE a.relid <> TG_RELID AND l.pid = pg_backend_pid() AND l.mode = 'AccessExclusiveLock' AND l.granted) THEN
            RETURN NULL;
        END IF;
    END IF;
    v_xid := pg_current_xact_id();
    -- pgrelay._next_xid() and the doorbell's armed check, inlined: a one-row statement pays
    -- for every function call here.
    v_next_xid := CASE WHEN current_setting('transaction_isolation') = 'read committed'
                       THEN pg_snapshot_xmax(pg_current_snapshot()) END;
    v_meta := jsonb_build_object('xid', v_xid::text, 'user', current_user, 'application_name', current_setting('application_name'),
                                 'schema', %3$L, 'table', %4$L, 'captured_at', now());
    IF TG_OP = 'INSERT' THEN
        %18$s
        SELECT nextval('pgrelay.message_position_seq'), random(), random(), v_xid, v_next_xid, %6$L,
               %7$s, 'insert', jsonb_build_object('before', NULL, 'after', %8$s, 'changed', NULL), v_meta
        FROM pgrelay_new AS n
        %19$s;
    ELSIF TG_OP = 'UPDATE' THEN
        -- changed compares the captured columns one by one (generated list, see _cdc_generate).
        %18$s
        SELECT nextval('pgrelay.message_position_seq'), random(), random(), v_xid, v_next_xid, %6$L,
               coalesce(r.n_key, r.o_key),
               CASE WHEN r.o_key IS NULL THEN 'insert' WHEN r.n_key IS NULL THEN 'delete' ELSE 'update' END,
               jsonb_build_object('before', r.o_img, 'after', r.n_img, 'changed', to_jsonb(r.changed)), v_meta
        FROM (SELECT CASE WHEN o.%9$s IS NOT NULL THEN %10$s END AS o_key,
                     CASE WHEN n.%9$s IS NOT NULL THEN %7$s END AS n_key,
                     CASE WHEN o.%9$s IS NOT NULL THEN %11$s END AS o_img,
                     CASE WHEN n.%9$s IS NOT NULL THEN %8$s END AS n_img,
                     CASE WHEN o.%9$s IS NOT NULL AND n.%9$s IS NOT NULL THEN %13$s END AS changed
              FROM pgrelay_old AS o FULL JOIN pgrelay_new AS n ON %12$s
              %14$s) AS r
        %16$s
        %19$s;
    ELSIF TG_OP = 'DELETE' THEN
        %18$s
        SELECT nextval('pgrelay.message_position_seq'), random(), random(), v_xid, v_next_xid, %6$L,
               %10$s, 'delete', jsonb_build_object('before', %11$s, 'after', NULL, 'changed', NULL), v_meta
        FROM pgrelay_old AS o
        %19$s;
    ELSIF TG_OP = 'TRUNCATE' AND TG_WHEN = 'BEFORE' THEN
        EXECUTE %15$L || TG_RELID::regclass::text || ' AS o' || %17$L
        USING v_xid, v_next_xid, v_meta || jsonb_build_object('partition_truncated', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
        v_armed := (SELECT d.armed FROM pgrelay.doorbell d);
    ELSIF TG_OP = 'TRUNCATE' THEN
        %18$s
        SELECT nextval('pgrelay.message_position_seq'), random(), random(), v_xid, v_next_xid, %6$L,
               NULL, 'truncate', jsonb_build_object('before', NULL, 'after', NULL, 'changed', NULL), v_meta
        %19$s;
    END IF;
    IF v_armed THEN
        PERFORM pgrelay._ring_doorbell(%6$L);
    END IF;
    RETURN NULL;
END;
$f$, v_fn, p_relid, v_schema, v_table, v_insert, v_cfg.topic, v_key_new, v_img_new, v_cols[1], v_key_old,
       v_img_old, v_join, v_changed,
       CASE WHEN v_cfg.skip_unchanged THEN 'OFFSET 0' ELSE '' END,
       format($q$%s SELECT nextval('pgrelay.message_position_seq'), random(), random(), $1, $2, %L, %s, 'delete',
                  jsonb_build_object('before', %s, 'after', NULL, 'changed', NULL), $3 FROM $q$,
              v_insert, v_cfg.topic, v_key_old, v_img_old),
       CASE WHEN v_cfg.skip_unchanged THEN 'WHERE r.changed IS NULL OR cardinality(r.changed) > 0' ELSE '' END,
       v_close,
       'WITH pgrelay_ins AS (' || v_insert,
       v_close || ') SELECT d.armed INTO v_armed FROM pgrelay.doorbell d');
    -- jit = off: a bulk statement's estimates (transition tables have no statistics) made JIT
    -- compile for longer than the capture itself took.
    EXECUTE format('CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SET jit = off AS %L', v_fn, v_body);

    -- Drop every capture trigger of this table's function (partitions that were detached
    -- included), then create them on the table and its current partitions.
    FOR v_trig IN
        SELECT g.tgname, g.tgrelid::regclass AS tbl FROM pg_trigger g WHERE g.tgfoid = to_regprocedure(v_fn || '()')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', v_trig.tgname, v_trig.tbl);
    END LOOP;
    -- pg_partition_tree() is empty for a table that is not partitioned.
    FOR v_part IN
        SELECT p_relid::regclass
        UNION ALL
        (SELECT t.relid FROM pg_partition_tree(p_relid) AS t(relid, parentrelid, isleaf, level) WHERE t.relid <> p_relid ORDER BY t.level)
    LOOP
        IF 'insert' = ANY (v_cfg.operations) THEN
            EXECUTE format('CREATE TRIGGER pgrelay_cdc_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS pgrelay_new '
                           'FOR EACH STATEMENT EXECUTE FUNCTION %s()', v_part, v_fn);
        END IF;
        IF 'update' = ANY (v_cfg.operations) THEN
            EXECUTE format('CREATE TRIGGER pgrelay_cdc_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS pgrelay_old '
                           'NEW TABLE AS pgrelay_new FOR EACH STATEMENT EXECUTE FUNCTION %s()', v_part, v_fn);
        END IF;
        IF 'delete' = ANY (v_cfg.operations) THEN
            EXECUTE format('CREATE TRIGGER pgrelay_cdc_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS pgrelay_old '
                           'FOR EACH STATEMENT EXECUTE FUNCTION %s()', v_part, v_fn);
        END IF;
        IF 'truncate' = ANY (v_cfg.operations) AND v_part = p_relid::regclass THEN
            EXECUTE format('CREATE TRIGGER pgrelay_cdc_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                           v_part, v_fn);
        ELSIF v_part <> p_relid::regclass AND ('delete' = ANY (v_cfg.operations) OR 'truncate' = ANY (v_cfg.operations)) THEN
            EXECUTE format('CREATE TRIGGER pgrelay_cdc_truncate BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                           v_part, v_fn);
        END IF;
    END LOOP;
END;
$$;
