// CDC and schema changes: images follow ADD/DROP COLUMN (even while writers run), renames keep
// capture (and exclusion) working, dropping a key column is refused, DROP TABLE forgets the
// capture, and `migrate down` removes every capture trigger from user tables.
import t from 'tap';
import { migrate } from '../client/migrate.ts';
import { freshDatabase, query } from './helpers/db.ts';
import { captured, captureFunctions, captureTriggers, connect, expectError } from './helpers/cdc.ts';

t.test('ADD and DROP COLUMN mid-stream, with a writer running: every change captured, images follow the columns', async (t) => {
  const db = await freshDatabase(t);
  const setup = await connect(t, db.connectionString);
  await setup.query(`CREATE TABLE public.ledger (id int PRIMARY KEY, amount int NOT NULL, note text)`);
  await setup.query(`SELECT pgrelay.cdc_enable('public.ledger')`);

  const writer = await connect(t, db.connectionString, 'writer');
  let stop = false;
  let writes = 0;
  const writing = (async () => {
    for (let i = 1; !stop || i <= 60; i += 1) {
      await writer.query(`INSERT INTO public.ledger (id, amount) VALUES ($1, $1)`, [i]);
      await writer.query(`UPDATE public.ledger SET amount = amount + 1 WHERE id = $1`, [i]);
      writes += 2;
    }
  })();
  const ddl = await connect(t, db.connectionString, 'ddl');
  const waitWrites = async (n: number) => {
    const deadline = Date.now() + 30_000;
    while (writes < n) {
      if (Date.now() > deadline) throw new Error('writer stalled');
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  await waitWrites(20);
  await ddl.query(`ALTER TABLE public.ledger ADD COLUMN currency text NOT NULL DEFAULT 'EUR'`);
  const afterAdd = writes;
  await waitWrites(afterAdd + 20);
  await ddl.query(`ALTER TABLE public.ledger DROP COLUMN note`);
  const afterDrop = writes;
  await waitWrites(afterDrop + 20);
  stop = true;
  await writing;

  const rows = await captured(db.connectionString, 'cdc.public.ledger');
  t.equal(rows.length, writes, `every committed write captured once (${writes})`);
  const shapes = rows.map((r) => Object.keys(r.data.after!).sort().join(','));
  const first = shapes.indexOf('amount,currency,id,note');
  const last = shapes.lastIndexOf('amount,currency,id,note');
  t.ok(shapes[0] === 'amount,id,note', 'the first images have the original columns');
  t.ok(first > 0, 'images gain the added column');
  t.ok(shapes.includes('amount,currency,id'), 'and lose the dropped one');
  t.ok(
    shapes.every((s, i) => (i < first ? s === 'amount,id,note' : i <= last ? s === 'amount,currency,id,note' : s === 'amount,currency,id')),
    'each image has exactly the columns of its moment, in order: before ADD, between, after DROP',
  );
  t.ok(rows.slice(first).every((r) => r.data.after!.currency === 'EUR'), 'the new column is in the images with its value');

  const state = new Map<string, Record<string, unknown>>();
  for (const r of rows) state.set(r.key!, r.data.after!);
  const table = await query<{ id: number; amount: number; currency: string }>(db.connectionString, 'SELECT id, amount, currency FROM public.ledger');
  t.equal(state.size, table.length, 'one key per row');
  t.ok(
    table.every((row) => state.get(String(row.id))!.amount === row.amount),
    'the last image of every key carries the current amount',
  );
});

t.test('renames: columns (key, excluded, masked) and the table itself keep capture working', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`CREATE TABLE public.staff (id int PRIMARY KEY, name text, ssn text, email text)`);
  await c.query(`SELECT pgrelay.cdc_enable('public.staff', '{"exclude": ["ssn"], "mask": ["email"]}')`);
  await c.query(`INSERT INTO public.staff VALUES (1, 'ada', '078-05-1120', 'ada@example.com')`);
  await c.query(`ALTER TABLE public.staff RENAME COLUMN id TO staff_id`);
  await c.query(`ALTER TABLE public.staff RENAME COLUMN ssn TO social_security`);
  await c.query(`ALTER TABLE public.staff RENAME COLUMN email TO mail`);
  await c.query(`ALTER TABLE public.staff RENAME COLUMN name TO full_name`);
  await c.query(`UPDATE public.staff SET full_name = 'Ada', social_security = '219-09-9999'`);
  await c.query(`ALTER TABLE public.staff ALTER COLUMN staff_id TYPE bigint`);
  await c.query(`INSERT INTO public.staff VALUES (2, 'bob', '111-11-1111', 'bob@example.com')`);
  await c.query(`ALTER TABLE public.staff RENAME TO employees`);
  await c.query(`DELETE FROM public.employees WHERE staff_id = 2`);

  const rows = await captured(db.connectionString, 'cdc.public.staff');
  t.same(rows.map((r) => [r.type, r.key]), [['insert', '1'], ['update', '1'], ['insert', '2'], ['delete', '2']], 'every change captured, same topic, keys by the renamed key column');
  t.same(Object.keys(rows[1]!.data.after!).sort(), ['full_name', 'mail', 'staff_id'], 'images use the new names; the renamed excluded column stays out');
  t.match(rows[1]!.data.after!.mail, /^[0-9a-f]{64}$/, 'the renamed masked column stays masked');
  t.same(rows[1]!.data.changed, ['full_name'], 'changed uses the new name');
  const text = JSON.stringify(rows);
  t.notOk(['078-05-1120', '219-09-9999', '111-11-1111', '@example.com'].some((v) => text.includes(v)), 'no excluded or masked value leaked after the renames');
  t.equal(rows[3]!.metadata.table, 'employees', 'metadata follows the table rename');
  const [listed] = await query<{ table_name: string; key_columns: string[]; exclude: string[]; mask: string[] }>(
    db.connectionString,
    'SELECT table_name, key_columns, exclude, mask FROM pgrelay.cdc_list()',
  );
  t.same(listed, { table_name: 'public.employees', key_columns: ['staff_id'], exclude: ['social_security'], mask: ['mail'] }, 'cdc_list shows the new names');
});

t.test('dropping a key column of a captured table is refused, nothing changes', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`CREATE TABLE public.keyed (id int PRIMARY KEY, v int)`);
  await c.query(`SELECT pgrelay.cdc_enable('public.keyed')`);
  await expectError(t, db.connectionString, 'DROP COLUMN id', 'ALTER TABLE public.keyed DROP COLUMN id', [], {
    code: 'PR007',
    message: /key column of captured table keyed is gone: run pgrelay\.cdc_disable/,
  });
  const [cols] = await query<{ n: number }>(db.connectionString, `SELECT count(*)::int AS n FROM information_schema.columns WHERE table_name = 'keyed'`);
  t.equal(cols!.n, 2, 'the column is still there');
  await c.query(`INSERT INTO public.keyed VALUES (1, 1)`);
  t.equal((await captured(db.connectionString, 'cdc.public.keyed')).length, 1, 'capture still works');
  await c.query(`SELECT pgrelay.cdc_disable('public.keyed')`);
  await c.query('ALTER TABLE public.keyed DROP COLUMN id');
  t.pass('after cdc_disable the column can be dropped');
});

t.test('DROP TABLE forgets its capture; a new table of the same name is not captured', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`CREATE TABLE public.temp_data (id int PRIMARY KEY)`);
  await c.query(`CREATE TABLE public.kept (id int PRIMARY KEY)`);
  await c.query(`SELECT pgrelay.cdc_enable('public.temp_data')`);
  await c.query(`SELECT pgrelay.cdc_enable('public.kept')`);
  await c.query(`INSERT INTO public.temp_data VALUES (1)`);
  await c.query(`SELECT pgrelay.cdc_snapshot('public.temp_data')`);
  const [{ oid }] = (await c.query<{ oid: number }>(`SELECT 'public.temp_data'::regclass::oid::int AS oid`)).rows as [{ oid: number }];
  await c.query(`DROP TABLE public.temp_data`);
  t.same(await query(db.connectionString, 'SELECT relid FROM pgrelay.cdc_tables WHERE relid = $1', [oid]), [], 'its row in cdc_tables is gone');
  t.same(await query(db.connectionString, 'SELECT relid FROM pgrelay.cdc_snapshots WHERE relid = $1', [oid]), [], 'its snapshot progress is gone');
  t.same(await captureFunctions(db.connectionString), [`_cdc_capture_${(await query<{ o: number }>(db.connectionString, `SELECT 'public.kept'::regclass::oid::int AS o`))[0]!.o}`], 'its generated function is gone, the other stays');
  t.same((await query<{ table_name: string }>(db.connectionString, 'SELECT table_name FROM pgrelay.cdc_list()')).map((r) => r.table_name), ['public.kept'], 'cdc_list');
  await c.query(`CREATE TABLE public.temp_data (id int PRIMARY KEY)`);
  await c.query(`INSERT INTO public.temp_data VALUES (2)`);
  t.same((await captured(db.connectionString, 'cdc.public.temp_data')).map((r) => [r.type, r.key]), [['insert', '1'], ['snapshot', '1']], 'the new table is not captured');

  // Dropping one partition of a captured table leaves the capture of the rest.
  await c.query(`CREATE TABLE public.parts (id int, k int, PRIMARY KEY (id, k)) PARTITION BY LIST (k)`);
  await c.query(`CREATE TABLE public.parts_1 PARTITION OF public.parts FOR VALUES IN (1)`);
  await c.query(`CREATE TABLE public.parts_2 PARTITION OF public.parts FOR VALUES IN (2)`);
  await c.query(`SELECT pgrelay.cdc_enable('public.parts')`);
  await c.query(`DROP TABLE public.parts_2`);
  await c.query(`INSERT INTO public.parts_1 VALUES (1, 1)`);
  t.same((await captured(db.connectionString, 'cdc.public.parts')).map((r) => r.key), ['[1, 1]'], 'dropping a partition keeps the capture');
});

t.test('migrate down removes every capture trigger and generated function; user tables keep working', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`CREATE TABLE public.a (id int PRIMARY KEY, v int)`);
  await c.query(`CREATE SCHEMA "Other"`);
  await c.query(`CREATE TABLE "Other"."B b" (id int PRIMARY KEY)`);
  await c.query(`CREATE TABLE public.p (id int, k int, PRIMARY KEY (id, k)) PARTITION BY LIST (k)`);
  await c.query(`CREATE TABLE public.p1 PARTITION OF public.p FOR VALUES IN (1)`);
  for (const tbl of ['public.a', '"Other"."B b"', 'public.p']) await c.query(`SELECT pgrelay.cdc_enable($1)`, [tbl]);
  await c.query(`INSERT INTO public.a VALUES (1, 1)`);
  t.equal((await captureTriggers(db.connectionString)).length, 16, 'four triggers on each of a, "B b", p and its partition p1');
  await c.end();

  const down = await migrate({ connectionString: db.connectionString, direction: 'down' });
  t.ok(down.migrations.includes('004_cdc'), 'down reverted the CDC migration');
  t.same(await captureTriggers(db.connectionString), [], 'no capture trigger left on any table or partition');
  const [left] = await query<{ n: number }>(
    db.connectionString,
    `SELECT count(*)::int AS n FROM pg_trigger g JOIN pg_class r ON r.oid = g.tgrelid WHERE NOT g.tgisinternal`,
  );
  t.equal(left!.n, 0, 'no trigger at all on user tables');
  const [schema] = await query<{ s: string | null }>(db.connectionString, `SELECT to_regnamespace('pgrelay')::text AS s`);
  t.equal(schema!.s, null, 'schema pgrelay is gone');
  await query(db.connectionString, `INSERT INTO public.a VALUES (2, 2)`);
  await query(db.connectionString, `UPDATE "Other"."B b" SET id = id`);
  await query(db.connectionString, `INSERT INTO public.p1 VALUES (1, 1)`);
  await query(db.connectionString, `TRUNCATE public.p`);
  t.same(await query(db.connectionString, 'SELECT id, v FROM public.a ORDER BY id'), [{ id: 1, v: 1 }, { id: 2, v: 2 }], 'user tables keep their rows and accept writes');
});
