// CDC capture: pgrelay.cdc_enable puts statement-level triggers (transition tables) on a table,
// and every INSERT/UPDATE/DELETE/TRUNCATE that commits becomes messages in the log: one per
// row, key = the primary key (composite keys as a JSON array), data = {before, after, changed},
// metadata = who/when/which transaction. Rolled-back changes leave nothing.
import t from 'tap';
import { createHash } from 'node:crypto';
import { createClient } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';
import { captured, captureFunctions, captureTriggers, changes, connect } from './helpers/cdc.ts';

const sha256 = (text: string): string => createHash('sha256').update(text, 'utf8').digest('hex');

t.test('insert, update, delete, truncate of a table with a primary key', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString, 'billing-service');
  await c.query(`CREATE TABLE public.users (id bigint PRIMARY KEY, name text, born date)`);
  await c.query(`SELECT pgrelay.cdc_enable('public.users')`);

  await c.query(`INSERT INTO public.users VALUES (1, 'ada', '1815-12-10'), (2, 'alan', '1912-06-23')`);
  await c.query(`UPDATE public.users SET name = 'Ada' WHERE id = 1`);
  await c.query(`DELETE FROM public.users WHERE id = 2`);
  await c.query('BEGIN');
  await c.query(`INSERT INTO public.users VALUES (3, 'rolled back', NULL)`);
  await c.query('ROLLBACK');
  await c.query(`TRUNCATE public.users`);
  const [{ xid }] = (await c.query<{ xid: string }>(`INSERT INTO public.users VALUES (4, 'grace', NULL) RETURNING pg_current_xact_id()::text AS xid`)).rows as [{ xid: string }];

  const rows = await captured(db.connectionString, 'cdc.public.users');
  t.same(
    changes(rows),
    [
      { type: 'insert', key: '1', before: null, after: { id: 1, name: 'ada', born: '1815-12-10' } },
      { type: 'insert', key: '2', before: null, after: { id: 2, name: 'alan', born: '1912-06-23' } },
      { type: 'update', key: '1', before: { id: 1, name: 'ada', born: '1815-12-10' }, after: { id: 1, name: 'Ada', born: '1815-12-10' } },
      { type: 'delete', key: '2', before: { id: 2, name: 'alan', born: '1912-06-23' }, after: null },
      { type: 'truncate', key: null, before: null, after: null },
      { type: 'insert', key: '4', before: null, after: { id: 4, name: 'grace', born: null } },
    ],
    'one message per changed row, in commit order; the rolled-back insert left nothing',
  );
  t.same(rows[2]!.data.changed, ['name'], 'update: changed lists the changed columns');
  t.equal(rows[0]!.data.changed, null, 'insert: changed is null');
  const last = rows[5]!;
  t.equal(last.xid, xid, 'the message carries the writing transaction id');
  t.equal(last.metadata.xid, xid, 'metadata.xid too');
  t.equal(last.metadata.user, 'postgres', 'metadata.user: the database user');
  t.equal(last.metadata.application_name, 'billing-service', 'metadata.application_name');
  t.equal(last.metadata.schema, 'public', 'metadata.schema');
  t.equal(last.metadata.table, 'users', 'metadata.table');
  t.ok(!Number.isNaN(Date.parse(String(last.metadata.captured_at))), 'metadata.captured_at is a timestamp');
  const positions = rows.map((r) => BigInt(r.position));
  t.ok(positions.every((p, i) => i === 0 || p > positions[i - 1]!), 'positions increase in commit order');
});

t.test('multi-row statements: one message per row, written by one statement', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`CREATE TABLE public.items (id int PRIMARY KEY, qty int NOT NULL)`);
  await c.query(`SELECT pgrelay.cdc_enable('public.items')`);
  await c.query(`INSERT INTO public.items SELECT g, 0 FROM generate_series(1, 500) g`);
  await c.query(`UPDATE public.items SET qty = qty + 1 WHERE id % 2 = 0`);
  await c.query(`DELETE FROM public.items WHERE id > 400`);
  const rows = await captured(db.connectionString, 'cdc.public.items');
  const count = (type: string) => rows.filter((r) => r.type === type).length;
  t.equal(count('insert'), 500, '500 inserts');
  t.equal(count('update'), 250, '250 updates');
  t.equal(count('delete'), 100, '100 deletes');
  t.same(new Set(rows.filter((r) => r.type === 'update').map((r) => r.key)).size, 250, 'each updated row once');
  t.ok(rows.filter((r) => r.type === 'update').every((r) => r.data.after!.qty === 1 && r.data.before!.qty === 0), 'before/after pair the same row');
});

t.test('composite primary key: key is the JSON array of the values; a key change is delete + insert', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`CREATE TABLE public.stock (region text, sku int, qty int, PRIMARY KEY (region, sku))`);
  await c.query(`SELECT pgrelay.cdc_enable('public.stock')`);
  await c.query(`INSERT INTO public.stock VALUES ('eu', 1, 5), ('us', 1, 7)`);
  await c.query(`UPDATE public.stock SET qty = 6 WHERE region = 'eu'`);
  await c.query(`UPDATE public.stock SET sku = 2 WHERE region = 'us'`);
  await c.query(`DELETE FROM public.stock WHERE region = 'eu'`);
  const rows = await captured(db.connectionString, 'cdc.public.stock');
  t.same(
    rows.map((r) => [r.type, r.key]),
    [
      ['insert', '["eu", 1]'],
      ['insert', '["us", 1]'],
      ['update', '["eu", 1]'],
      ['delete', '["us", 1]'],
      ['insert', '["us", 2]'],
      ['delete', '["eu", 1]'],
    ],
    'keys in primary-key column order, jsonb text form',
  );
  t.same(JSON.parse(rows[4]!.key!), ['us', 2], 'the key parses as JSON');
  t.same(rows[3]!.data.before, { region: 'us', sku: 1, qty: 7 }, 'the old key is deleted with its before image');

  // Shifting keys within one statement: every key ends with the right state.
  await c.query(`CREATE TABLE public.seats (n int PRIMARY KEY DEFERRABLE, who text)`);
  await c.query(`SELECT pgrelay.cdc_enable('public.seats')`);
  await c.query(`INSERT INTO public.seats VALUES (1, 'a'), (2, 'b'), (3, 'c')`);
  await c.query(`UPDATE public.seats SET n = n + 1`);
  const state = new Map<string, unknown>();
  for (const r of await captured(db.connectionString, 'cdc.public.seats')) {
    if (r.data.after === null) state.delete(r.key!);
    else state.set(r.key!, r.data.after);
  }
  t.same(Object.fromEntries(state), { '2': { n: 2, who: 'a' }, '3': { n: 3, who: 'b' }, '4': { n: 4, who: 'c' } }, 'replaying by key gives the table');
});

t.test('a table without a primary key: clear error, or explicit key_columns', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`CREATE TABLE public.events (code text NOT NULL, seq int NOT NULL, body text)`);
  const error = await c.query(`SELECT pgrelay.cdc_enable('public.events')`).then(
    () => undefined,
    (e: Error & { code?: string; column?: string }) => e,
  );
  t.equal(error?.code, 'PR001', 'no primary key and no key_columns: PR001');
  t.equal(error?.column, 'tbl', 'naming the table argument');
  t.match(error?.message, /no primary key: pass options\.key_columns/, 'saying what to do');

  await c.query(`CREATE UNIQUE INDEX events_code_seq ON public.events (code, seq)`);
  await c.query(`SELECT pgrelay.cdc_enable('public.events', '{"key_columns": ["seq", "code"]}')`);
  await c.query(`INSERT INTO public.events VALUES ('a', 1, 'x')`);
  await c.query(`UPDATE public.events SET body = 'y'`);
  await c.query(`DELETE FROM public.events`);
  const rows = await captured(db.connectionString, 'cdc.public.events');
  t.same(
    rows.map((r) => [r.type, r.key]),
    [['insert', '[1, "a"]'], ['update', '[1, "a"]'], ['delete', '[1, "a"]']],
    'key_columns in the given order make the key',
  );
  t.same(rows[1]!.data.changed, ['body'], 'updates pair rows by key_columns');
  const [listed] = await query<{ key_columns: string[] }>(db.connectionString, `SELECT key_columns FROM pgrelay.cdc_list()`);
  t.same(listed!.key_columns, ['seq', 'code'], 'cdc_list shows the key columns');
});

t.test('quoted, mixed-case schema, table and column names', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`CREATE SCHEMA "Sales Dept"`);
  await c.query(`CREATE TABLE "Sales Dept"."Order Lines" ("Order ID" int, "lineNo" int, "Amount €" numeric, PRIMARY KEY ("Order ID", "lineNo"))`);
  await c.query(`SELECT pgrelay.cdc_enable('"Sales Dept"."Order Lines"', '{"mask": ["Amount €"]}')`);
  await c.query(`INSERT INTO "Sales Dept"."Order Lines" VALUES (7, 1, 9.50)`);
  await c.query(`UPDATE "Sales Dept"."Order Lines" SET "Amount €" = 10`);
  const rows = await captured(db.connectionString, 'cdc.Sales_Dept.Order_Lines');
  t.equal(rows.length, 2, "the default topic keeps only [A-Za-z0-9._-] ('cdc.Sales_Dept.Order_Lines')");
  t.same(rows[0]!.data.after, { 'Order ID': 7, lineNo: 1, 'Amount €': sha256('9.50') }, 'column names as they are; masked value hashed');
  t.equal(rows[0]!.key, '[7, 1]', 'composite key of quoted columns');
  t.same(rows[1]!.data.changed, ['Amount €'], 'changed names the quoted column');
  t.equal(rows[0]!.metadata.schema, 'Sales Dept', 'metadata.schema unquoted');
  t.equal(rows[0]!.metadata.table, 'Order Lines', 'metadata.table unquoted');

  await c.query(`CREATE TABLE public."CamelCase" (id int PRIMARY KEY)`);
  await c.query(`SELECT pgrelay.cdc_enable('public."CamelCase"', '{"topic": "crm.camel"}')`);
  await c.query(`INSERT INTO public."CamelCase" VALUES (1)`);
  t.equal((await captured(db.connectionString, 'crm.camel')).length, 1, 'an explicit topic');
  const listed = await query<{ table_name: string }>(db.connectionString, `SELECT table_name FROM pgrelay.cdc_list() ORDER BY 1`);
  t.same(listed.map((r) => r.table_name), ['"Sales Dept"."Order Lines"', 'public."CamelCase"'], 'cdc_list quotes names as SQL does');
});

t.test('partitioned table: writes through the parent or straight to a partition, new partitions, truncates', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`CREATE TABLE public.orders (id int, region text, total int, PRIMARY KEY (id, region)) PARTITION BY LIST (region)`);
  await c.query(`CREATE TABLE public.orders_eu PARTITION OF public.orders FOR VALUES IN ('eu')`);
  await c.query(`SELECT pgrelay.cdc_enable('public.orders')`);
  await c.query(`CREATE TABLE public.orders_us PARTITION OF public.orders FOR VALUES IN ('us')`);

  await c.query(`INSERT INTO public.orders VALUES (1, 'eu', 10), (2, 'us', 20)`);
  await c.query(`INSERT INTO public.orders_us VALUES (3, 'us', 30)`);
  await c.query(`UPDATE public.orders_eu SET total = 11`);
  await c.query(`UPDATE public.orders SET region = 'us' WHERE id = 1`);
  await c.query(`DELETE FROM public.orders_us WHERE id = 3`);
  let rows = await captured(db.connectionString, 'cdc.public.orders');
  t.same(
    rows.map((r) => [r.type, r.key, r.data.after?.total ?? r.data.before?.total]),
    [
      ['insert', '[1, "eu"]', 10],
      ['insert', '[2, "us"]', 20],
      ['insert', '[3, "us"]', 30],
      ['update', '[1, "eu"]', 11],
      ['delete', '[1, "eu"]', 11],
      ['insert', '[1, "us"]', 11],
      ['delete', '[3, "us"]', 30],
    ],
    'direct writes to partitions (one created after cdc_enable) are captured, a row moving partitions is delete + insert',
  );
  t.ok(rows.every((r) => r.metadata.table === 'orders'), 'metadata names the captured table, not the partition');

  const before = rows.length;
  await c.query(`TRUNCATE public.orders_us`);
  rows = (await captured(db.connectionString, 'cdc.public.orders')).slice(before);
  t.same(
    rows.map((r) => [r.type, r.key]).sort(),
    [['delete', '[1, "us"]'], ['delete', '[2, "us"]']],
    'truncating one partition deletes its rows, one message each',
  );
  await c.query(`INSERT INTO public.orders VALUES (5, 'eu', 50)`);
  const mark = (await captured(db.connectionString, 'cdc.public.orders')).length;
  await c.query(`TRUNCATE public.orders`);
  rows = (await captured(db.connectionString, 'cdc.public.orders')).slice(mark);
  t.same(rows.map((r) => [r.type, r.key]), [['truncate', null]], 'truncating the parent is one truncate message, no per-row deletes');

  await c.query(`ALTER TABLE public.orders DETACH PARTITION public.orders_us`);
  await c.query(`INSERT INTO public.orders_us VALUES (9, 'us', 90)`);
  t.equal((await captured(db.connectionString, 'cdc.public.orders')).length, mark + 1, 'a detached partition is no longer captured');
  t.same(
    await captureTriggers(db.connectionString),
    ['orders', 'orders_eu'].flatMap((tbl) => ['delete', 'insert', 'truncate', 'update'].map((op) => `pgrelay_cdc_${op} on ${tbl}`)).sort(),
    'triggers on the parent and its current partition only',
  );
  const partitionError = await c.query(`SELECT pgrelay.cdc_enable('public.orders_eu')`).then(
    () => undefined,
    (e: Error & { code?: string }) => e,
  );
  t.equal(partitionError?.code, 'PR001', 'a partition of a captured table cannot be captured twice');
});

t.test('exclude, mask, skip_unchanged and operations', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`CREATE TABLE public.people (id int PRIMARY KEY, name text, email text, ssn text, seen timestamptz)`);
  await c.query(
    `SELECT pgrelay.cdc_enable('public.people', '{"exclude": ["ssn", "seen"], "mask": ["email"], "skip_unchanged": true}')`,
  );
  await c.query(`INSERT INTO public.people VALUES (1, 'ada', 'ada@example.com', '078-05-1120', now()), (2, 'bob', NULL, NULL, NULL)`);
  await c.query(`UPDATE public.people SET seen = now(), ssn = '219-09-9999'`);
  await c.query(`UPDATE public.people SET name = name`);
  await c.query(`UPDATE public.people SET email = 'ada@example.org' WHERE id = 1`);
  const rows = await captured(db.connectionString, 'cdc.public.people');
  t.same(
    rows.map((r) => [r.type, r.key]),
    [['insert', '1'], ['insert', '2'], ['update', '1']],
    'updates that change only excluded columns, or nothing, are skipped',
  );
  t.same(rows[0]!.data.after, { id: 1, name: 'ada', email: sha256('ada@example.com') }, 'excluded columns absent, masked one hashed');
  t.same(rows[1]!.data.after, { id: 2, name: 'bob', email: null }, 'a NULL masked value stays NULL');
  t.same(rows[2]!.data.before!.email, sha256('ada@example.com'), 'before images are masked too');
  t.same(rows[2]!.data.after!.email, sha256('ada@example.org'), 'after images are masked too');
  t.same(rows[2]!.data.changed, ['email'], 'a masked column is named as changed, its value never appears');
  const text = JSON.stringify(rows);
  t.notOk(text.includes('078-05-1120') || text.includes('219-09-9999') || text.includes('ada@example'), 'no excluded or masked value anywhere in the log');

  await c.query(`CREATE TABLE public.audit (id int PRIMARY KEY, v int)`);
  await c.query(`SELECT pgrelay.cdc_enable('public.audit', '{"operations": ["insert", "delete"]}')`);
  await c.query(`INSERT INTO public.audit VALUES (1, 1)`);
  await c.query(`UPDATE public.audit SET v = 2`);
  await c.query(`DELETE FROM public.audit`);
  await c.query(`TRUNCATE public.audit`);
  t.same(
    (await captured(db.connectionString, 'cdc.public.audit')).map((r) => r.type),
    ['insert', 'delete'],
    'only the chosen operations are captured',
  );
  t.same(await captureTriggers(db.connectionString).then((l) => l.filter((x) => x.endsWith(' on audit'))), [
    'pgrelay_cdc_delete on audit',
    'pgrelay_cdc_insert on audit',
  ], 'and only their triggers exist');

  await c.query(`CREATE TABLE public.noskip (id int PRIMARY KEY, v int)`);
  await c.query(`SELECT pgrelay.cdc_enable('public.noskip')`);
  await c.query(`INSERT INTO public.noskip VALUES (1, 1)`);
  await c.query(`UPDATE public.noskip SET v = v`);
  const noskip = await captured(db.connectionString, 'cdc.public.noskip');
  t.same(noskip.map((r) => [r.type, r.data.changed]), [['insert', null], ['update', []]], 'without skip_unchanged a no-op UPDATE is captured with changed = []');
});

t.test('enable again replaces options; disable removes triggers and function and stops capture', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`CREATE TABLE public.notes (id int PRIMARY KEY, body text, secret text)`);
  await c.query(`SELECT pgrelay.cdc_enable('public.notes')`);
  await c.query(`INSERT INTO public.notes VALUES (1, 'a', 's')`);
  await c.query(`SELECT pgrelay.cdc_enable('public.notes', '{"exclude": ["secret"], "topic": "notes.v2"}')`);
  await c.query(`INSERT INTO public.notes VALUES (2, 'b', 's')`);
  t.same((await captured(db.connectionString, 'cdc.public.notes')).map((r) => r.key), ['1'], 'first options: default topic');
  t.same((await captured(db.connectionString, 'notes.v2')).map((r) => r.data.after), [{ id: 2, body: 'b' }], 'then the new topic and exclusion');
  t.equal((await captureTriggers(db.connectionString)).length, 4, 'still four triggers, not eight');

  await c.query(`SELECT pgrelay.cdc_disable('public.notes')`);
  await c.query(`INSERT INTO public.notes VALUES (3, 'c', 's')`);
  t.equal((await captured(db.connectionString, 'notes.v2')).length, 1, 'nothing captured after disable');
  t.same(await captureTriggers(db.connectionString), [], 'no capture trigger left');
  t.same(await captureFunctions(db.connectionString), [], 'no generated function left');
  t.same(await query(db.connectionString, 'SELECT * FROM pgrelay.cdc_list()'), [], 'cdc_list is empty');
});

t.test('client.cdc: enable, list, snapshot, disable, typed', async (t) => {
  const db = await freshDatabase(t);
  const client = await createClient({ connectionString: db.connectionString, maximumPoolSize: 2 });
  t.teardown(() => client.end());
  await query(db.connectionString, `CREATE TABLE public.accounts (id int PRIMARY KEY, owner text, pin text)`);
  await query(db.connectionString, `INSERT INTO public.accounts SELECT g, 'o' || g, '1234' FROM generate_series(1, 25) g`);
  await client.cdc.enable('public.accounts', { mask: ['pin'], skip_unchanged: true, operations: ['insert', 'update', 'delete'] });
  const [listed] = await client.cdc.list();
  t.same(
    listed,
    {
      table_name: 'public.accounts',
      topic: 'cdc.public.accounts',
      key_columns: ['id'],
      exclude: [],
      mask: ['pin'],
      operations: listed!.operations,
      skip_unchanged: true,
      snapshot_emitted: null,
      snapshot_total: null,
      snapshot_done: false,
    },
    'list returns the options',
  );
  t.same([...listed!.operations].sort(), ['delete', 'insert', 'update'], 'operations as given');
  const seen: number[] = [];
  const result = await client.cdc.snapshot('public.accounts', { chunkSize: 10, onProgress: (p) => seen.push(p.emitted) });
  t.same(result, { emitted: 25, total: 25, done: true }, 'snapshot runs to the end');
  t.same(seen, [10, 20, 25], 'progress after every chunk, as numbers');
  const [after] = await client.cdc.list();
  t.equal(after!.snapshot_done, true, 'list shows the backfill done');
  await client.cdc.disable('public.accounts');
  t.same(await client.cdc.list(), [], 'disabled');
});

t.test('changed compares each column as its image shows it, whatever its type', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  // json has no '=', numeric 1.0 = 1.00 with the same JSON value, text compares bytewise even
  // under a case-insensitive collation, arrays and timestamps by value.
  await c.query(`CREATE COLLATION IF NOT EXISTS public.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)`);
  await c.query(`CREATE TABLE public.kinds (id int PRIMARY KEY, doc json, amount numeric, label text COLLATE public.ci,
                                            tags int[], at timestamptz, flag boolean, note varchar(20))`);
  await c.query(`SELECT pgrelay.cdc_enable('public.kinds', '{"skip_unchanged": true}')`);
  await c.query(`INSERT INTO public.kinds VALUES (1, '{"a": 1}', 1.0, 'abc', '{1,2}', '2026-01-01T00:00:00Z', true, NULL)`);
  await c.query(`UPDATE public.kinds SET doc = '{"a": 2}', amount = 1.00 WHERE id = 1`);
  await c.query(`UPDATE public.kinds SET label = 'ABC', tags = '{1,2}', at = '2026-01-01T01:00:00+01:00' WHERE id = 1`);
  await c.query(`UPDATE public.kinds SET tags = '{2,1}', flag = NULL, note = 'n' WHERE id = 1`);
  await c.query(`UPDATE public.kinds SET doc = '{"a": 2}', amount = 1, label = 'ABC' WHERE id = 1`);
  const rows = await captured(db.connectionString, 'cdc.public.kinds');
  t.same(
    rows.map((r) => [r.type, r.data.changed]),
    [['insert', null], ['update', ['doc']], ['update', ['label']], ['update', ['flag', 'note', 'tags']]],
    'json compared by value, numeric scale and equal instants are no change, a case-only text change is one; the no-op UPDATE skipped',
  );
});

t.test('the doorbell: captured statements ring it once per arming, on commit only, and honour the watermark protocol', async (t) => {
  const db = await freshDatabase(t);
  const listener = await connect(t, db.connectionString, 'doorbell-listener');
  const writer = await connect(t, db.connectionString, 'doorbell-writer');
  const relay = await connect(t, db.connectionString, 'doorbell-relay');
  const notes: Array<string | undefined> = [];
  listener.on('notification', (note) => notes.push(note.payload));
  await listener.query('LISTEN pgrelay');
  const quiet = (ms = 300): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
  const armed = async (): Promise<boolean> => (await relay.query<{ armed: boolean }>('SELECT armed FROM pgrelay.doorbell')).rows[0]!.armed;
  await writer.query(`CREATE TABLE public.bells (id int PRIMARY KEY, v int NOT NULL)`);
  await writer.query(`INSERT INTO public.bells SELECT g, 0 FROM generate_series(1, 10) g`);
  await writer.query(`CREATE TABLE public.parts (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)`);
  await writer.query(`CREATE TABLE public.parts_eu PARTITION OF public.parts FOR VALUES IN ('eu')`);
  await writer.query(`CREATE TABLE public.parts_us PARTITION OF public.parts FOR VALUES IN ('us')`);
  await writer.query(`INSERT INTO public.parts VALUES (1, 'eu'), (2, 'us')`);
  await writer.query(`SELECT pgrelay.cdc_enable('public.bells'), pgrelay.cdc_enable('public.parts')`);

  for (const [label, sql] of [
    ['insert', `INSERT INTO public.bells VALUES (100, 1)`],
    ['update', `UPDATE public.bells SET v = v + 1 WHERE id = 1`],
    ['delete', `DELETE FROM public.bells WHERE id = 2`],
    ['update changing the key', `UPDATE public.bells SET id = 200 WHERE id = 3`],
  ] as const) {
    notes.length = 0;
    await relay.query('SELECT pgrelay.doorbell_arm()');
    await writer.query('BEGIN');
    await writer.query(sql);
    await quiet(100);
    t.same(notes, [], `${label}: no NOTIFY before the commit`);
    await writer.query('ROLLBACK');
    await quiet(150);
    t.same(notes, [], `${label}: a rolled-back capture sends nothing`);
    t.equal(await armed(), true, `${label}: and leaves the doorbell armed`);
    await writer.query(sql);
    await writer.query(`UPDATE public.bells SET v = v + 1 WHERE id = 4`);
    await quiet();
    t.same(notes, ['cdc.public.bells'], `${label}: the committed capture rings once, with the topic only`);
    t.equal(await armed(), false, `${label}: and disarms it`);
  }

  notes.length = 0;
  await writer.query(`UPDATE public.bells SET v = v + 1 WHERE id = 5`);
  await quiet();
  t.same(notes, [], 'disarmed: a capture sends no NOTIFY');

  for (const [label, sql] of [
    ['TRUNCATE of one partition (BEFORE TRUNCATE, dynamic INSERT)', `TRUNCATE public.parts_eu`],
    ['TRUNCATE of the partitioned table', `TRUNCATE public.parts`],
  ] as const) {
    notes.length = 0;
    await writer.query(`INSERT INTO public.parts VALUES (10, 'eu'), (11, 'us') ON CONFLICT DO NOTHING`);
    await quiet(100);
    notes.length = 0;
    await relay.query('SELECT pgrelay.doorbell_arm()');
    await writer.query(sql);
    await quiet();
    t.same(notes, ['cdc.public.parts'], `${label}: rings once`);
  }

  // The watermark protocol: a capturing transaction that read the doorbell while it was disarmed
  // already had its xid, so it is below a watermark taken after the arming, and the relay keeps
  // polling until it ends (doorbell_settled) instead of sleeping on a NOTIFY that will not come.
  notes.length = 0;
  await writer.query('BEGIN');
  await writer.query(`UPDATE public.bells SET v = v + 1 WHERE id = 6`);
  await relay.query('SELECT pgrelay.doorbell_arm()');
  const [{ w }] = (await relay.query<{ w: string }>('SELECT pgrelay.doorbell_watermark()::text AS w')).rows as [{ w: string }];
  const settled = async (): Promise<boolean> =>
    (await relay.query<{ s: boolean }>('SELECT pgrelay.doorbell_settled($1::xid8) AS s', [w])).rows[0]!.s;
  t.equal(await settled(), false, 'a capture that read the doorbell before the arming holds doorbell_settled at false');
  await writer.query('COMMIT');
  await quiet();
  t.equal(await settled(), true, 'and releases it when it commits');
  t.same(notes, [], 'it does not ring: it read the doorbell disarmed (the relay finds its messages by polling)');
  t.equal(await armed(), true, 'the doorbell stays armed for the next publisher');

  // A writer never waits on the doorbell row: while another transaction holds it (it rang and
  // has not committed), a capture skips the ring and commits at once.
  await relay.query('BEGIN');
  await relay.query(`SELECT pgrelay.publish('other', 'k', 'e', '{}'::jsonb)`);
  t.equal((await relay.query<{ armed: boolean }>('SELECT armed FROM pgrelay.doorbell')).rows[0]!.armed, false, 'the holder disarmed it');
  await writer.query(`SET lock_timeout = '2s'`);
  await writer.query(`UPDATE public.bells SET v = v + 1 WHERE id = 8`);
  t.pass('a capture commits while another transaction holds the doorbell row');
  await writer.query('RESET lock_timeout');
  await relay.query('COMMIT');
  await quiet();
  t.same(notes, ['other'], 'only the holder rang');
});
