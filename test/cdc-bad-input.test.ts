// CDC bad input: every argument of cdc_enable / cdc_disable / cdc_snapshot is validated with a
// stable SQLSTATE naming it, nothing is half-written, and names that look like SQL (in options,
// in table names, in real column names) are rejected or quoted safely: never executed.
import t from 'tap';
import { createClient, InvalidArgumentError, NotFoundError } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';
import { captured, captureFunctions, captureTriggers, connect, expectError, failure } from './helpers/cdc.ts';

const ENABLE = 'pgrelay.cdc_enable';

t.test('cdc_enable: bad arguments raise PR001 naming the argument and leave nothing behind', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  await query(url, `CREATE TABLE public.users (id int PRIMARY KEY, name text, email text)`);
  await query(url, `CREATE VIEW public.users_view AS SELECT * FROM public.users`);
  await query(url, `CREATE TABLE public.loose (a int, b int)`);
  await query(url, `CREATE TABLE public.nullable_key (a int, b int NOT NULL)`);
  await query(url, `CREATE UNIQUE INDEX ON public.nullable_key (a)`);
  await query(url, `CREATE TABLE public.not_unique (a int NOT NULL)`);

  const bad: Array<[string, string, unknown[], string, RegExp?]> = [
    ['NULL table', `SELECT ${ENABLE}(NULL)`, [], 'tbl'],
    ['a view', `SELECT ${ENABLE}('public.users_view')`, [], 'tbl', /must be a table/],
    ['a sequence', `SELECT ${ENABLE}('pgrelay.message_position_seq')`, [], 'tbl', /must be a table/],
    ["pgrelay's own table", `SELECT ${ENABLE}('pgrelay.messages')`, [], 'tbl', /pgrelay's own tables/],
    ['no primary key', `SELECT ${ENABLE}('public.loose')`, [], 'tbl', /no primary key/],
    ['options NULL', `SELECT ${ENABLE}('public.users', NULL)`, [], 'options', /JSON object/],
    ['options an array', `SELECT ${ENABLE}('public.users', '[]')`, [], 'options', /JSON object/],
    ['options a string', `SELECT ${ENABLE}('public.users', '"exclude"')`, [], 'options', /JSON object/],
    ['unknown option', `SELECT ${ENABLE}('public.users', '{"excludes": ["name"]}')`, [], 'options', /unknown option 'excludes'/],
    ['exclude not an array', `SELECT ${ENABLE}('public.users', '{"exclude": "name"}')`, [], 'options', /"exclude" must be an array of strings/],
    ['mask of numbers', `SELECT ${ENABLE}('public.users', '{"mask": [1]}')`, [], 'options', /"mask" must be an array of strings/],
    ['exclude a missing column', `SELECT ${ENABLE}('public.users', '{"exclude": ["nope"]}')`, [], 'options', /names a column 'nope'/],
    ['exclude a key column', `SELECT ${ENABLE}('public.users', '{"exclude": ["id"]}')`, [], 'options', /must not name a key column/],
    ['mask a key column', `SELECT ${ENABLE}('public.users', '{"mask": ["id"]}')`, [], 'options', /must not name a key column/],
    ['topic not a string', `SELECT ${ENABLE}('public.users', '{"topic": 5}')`, [], 'options', /"topic" must be a string/],
    ['topic with bad characters', `SELECT ${ENABLE}('public.users', '{"topic": "a b"}')`, [], 'options', /"topic" must be 1-200 characters/],
    ['topic too long', `SELECT ${ENABLE}('public.users', jsonb_build_object('topic', repeat('a', 201)))`, [], 'options', /"topic" must be 1-200/],
    ['empty operations', `SELECT ${ENABLE}('public.users', '{"operations": []}')`, [], 'options', /"operations" must be a non-empty subset/],
    ['unknown operation', `SELECT ${ENABLE}('public.users', '{"operations": ["insert", "merge"]}')`, [], 'options', /"operations"/],
    ['skip_unchanged a string', `SELECT ${ENABLE}('public.users', '{"skip_unchanged": "yes"}')`, [], 'options', /true or false/],
    ['key_columns empty', `SELECT ${ENABLE}('public.loose', '{"key_columns": []}')`, [], 'options', /at least one column/],
    ['key_columns missing column', `SELECT ${ENABLE}('public.loose', '{"key_columns": ["c"]}')`, [], 'options', /names a column 'c'/],
    ['key_columns twice', `SELECT ${ENABLE}('public.not_unique', '{"key_columns": ["a", "a"]}')`, [], 'options', /twice/],
    ['key_columns nullable', `SELECT ${ENABLE}('public.nullable_key', '{"key_columns": ["a"]}')`, [], 'options', /must be NOT NULL/],
    ['key_columns not unique', `SELECT ${ENABLE}('public.not_unique', '{"key_columns": ["a"]}')`, [], 'options', /must identify a row/],
  ];
  for (const [label, text, params, argument, message] of bad) {
    await expectError(t, url, label, text, params, { code: 'PR001', fn: ENABLE, argument, message });
  }
  t.same(await query(url, 'SELECT relid FROM pgrelay.cdc_tables'), [], 'no capture recorded');
  t.same(await captureTriggers(url), [], 'no trigger created');
  t.same(await captureFunctions(url), [], 'no function created');

  // A failed re-enable keeps the previous capture exactly.
  await query(url, `SELECT ${ENABLE}('public.users', '{"exclude": ["email"]}')`);
  await expectError(t, url, 'bad re-enable', `SELECT ${ENABLE}('public.users', '{"exclude": ["nope"]}')`, [], { code: 'PR001', fn: ENABLE, argument: 'options' });
  await query(url, `INSERT INTO public.users VALUES (1, 'a', 'a@example.com')`);
  t.same((await captured(url, 'cdc.public.users')).map((r) => r.data.after), [{ id: 1, name: 'a' }], 'the earlier options still apply');
});

t.test('cdc_disable, cdc_snapshot, cdc_snapshot_reset: bad arguments', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  await query(url, `CREATE TABLE public.t (id int PRIMARY KEY)`);
  await expectError(t, url, 'disable NULL', `SELECT pgrelay.cdc_disable(NULL)`, [], { code: 'PR001', fn: 'pgrelay.cdc_disable', argument: 'tbl' });
  await expectError(t, url, 'disable uncaptured', `SELECT pgrelay.cdc_disable('public.t')`, [], {
    code: 'PR003',
    fn: 'pgrelay.cdc_disable',
    argument: 'tbl',
    message: /is not captured/,
  });
  await expectError(t, url, 'snapshot uncaptured', `SELECT pgrelay.cdc_snapshot('public.t')`, [], {
    code: 'PR003',
    fn: 'pgrelay.cdc_snapshot',
    argument: 'tbl',
    message: /cdc_enable it first/,
  });
  await query(url, `SELECT pgrelay.cdc_enable('public.t')`);
  for (const size of ['NULL', '0', '-1', '100001']) {
    await expectError(t, url, `chunk_size ${size}`, `SELECT pgrelay.cdc_snapshot('public.t', ${size})`, [], {
      code: 'PR001',
      fn: 'pgrelay.cdc_snapshot',
      argument: 'chunk_size',
    });
  }
  await expectError(t, url, 'snapshot NULL', `SELECT pgrelay.cdc_snapshot(NULL)`, [], { code: 'PR001', fn: 'pgrelay.cdc_snapshot', argument: 'tbl' });
  await expectError(t, url, 'reset NULL', `SELECT pgrelay.cdc_snapshot_reset(NULL)`, [], { code: 'PR001', fn: 'pgrelay.cdc_snapshot_reset', argument: 'tbl' });
  t.same(await query(url, 'SELECT relid FROM pgrelay.cdc_snapshots'), [], 'no snapshot progress written by the failures');
});

t.test('SQL injection attempts in options and table names are rejected, never run', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  await query(url, `CREATE TABLE public.users (id int PRIMARY KEY, name text)`);
  await query(url, `CREATE TABLE public.victim (id int PRIMARY KEY)`);
  await query(url, `INSERT INTO public.victim VALUES (1)`);
  const attempts = [
    `{"exclude": ["name\\"); DROP TABLE public.victim; --"]}`,
    `{"mask": ["name', 'x'); DROP TABLE public.victim; --"]}`,
    `{"key_columns": ["id) ; DROP TABLE public.victim; --"]}`,
    `{"topic": "x'; DROP TABLE public.victim; --"}`,
    `{"operations": ["insert'); DROP TABLE public.victim; --"]}`,
    `{"exclude'); DROP TABLE public.victim; --": []}`,
  ];
  for (const options of attempts) {
    await expectError(t, url, `options ${options}`, `SELECT pgrelay.cdc_enable('public.users', $1::jsonb)`, [options], {
      code: 'PR001',
      fn: ENABLE,
      argument: 'options',
    });
  }
  for (const name of [`public.users; DROP TABLE public.victim`, `public.users'); DROP TABLE public.victim; --`]) {
    const error = await failure(() => query(url, `SELECT pgrelay.cdc_enable($1::regclass)`, [name]));
    t.ok(error !== undefined && ['42602', '42P01', '3F000'].includes(error.code ?? ''), `table name ${JSON.stringify(name)}: rejected as a name (${error?.code})`);
  }
  t.same(await query(url, 'SELECT id FROM public.victim'), [{ id: 1 }], 'the victim table is intact');
  t.same(await query(url, 'SELECT relid FROM pgrelay.cdc_tables'), [], 'nothing captured');

  const client = await createClient({ connectionString: url, maximumPoolSize: 1 });
  t.teardown(() => client.end());
  const typed = await failure(() => client.cdc.enable('public.users', { exclude: ['name"); DROP TABLE public.victim; --'] }));
  t.ok(typed instanceof InvalidArgumentError, 'the client raises InvalidArgumentError');
  t.equal((typed as InvalidArgumentError).argument, 'options', 'naming options');
  const missing = await failure(() => client.cdc.disable('public.users'));
  t.ok(missing instanceof NotFoundError, 'disable of an uncaptured table: NotFoundError');
});

t.test('hostile but real names are quoted: capture works and runs nothing', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  const c = await connect(t, url);
  await c.query(`CREATE TABLE public.victim (id int PRIMARY KEY)`);
  await c.query(`INSERT INTO public.victim VALUES (1)`);
  await c.query(`CREATE SCHEMA "s'; DROP TABLE public.victim; --"`);
  await c.query(`
    CREATE TABLE "s'; DROP TABLE public.victim; --"."Robert'); DROP TABLE public.victim;--
next line" (
      "id"")); DROP TABLE public.victim; --" int,
      "$body$ $f$ %s %L $1" int,
      "secret'); DROP TABLE public.victim; --" text,
      "masked"" || pg_sleep(1) || """ text,
      PRIMARY KEY ("id"")); DROP TABLE public.victim; --", "$body$ $f$ %s %L $1")
    )`);
  const tbl = `"s'; DROP TABLE public.victim; --"."Robert'); DROP TABLE public.victim;--
next line"`;
  const options = JSON.stringify({ exclude: [`secret'); DROP TABLE public.victim; --`], mask: [`masked" || pg_sleep(1) || "`] });
  await c.query(`SELECT pgrelay.cdc_enable($1::regclass, $2::jsonb)`, [tbl, options]);
  await c.query(`INSERT INTO ${tbl} VALUES (1, 2, 'hidden', 'm')`);
  await c.query(`UPDATE ${tbl} SET "masked"" || pg_sleep(1) || """ = 'n'`);
  await c.query(`SELECT pgrelay.cdc_snapshot($1::regclass)`, [tbl]);
  await c.query(`ALTER TABLE ${tbl} ADD COLUMN "x'); DROP TABLE public.victim; --" int DEFAULT 5`);
  await c.query(`DELETE FROM ${tbl}`);
  await c.query(`TRUNCATE ${tbl}`);

  const [{ topic }] = (await query<{ topic: string }>(url, 'SELECT topic FROM pgrelay.cdc_tables')) as [{ topic: string }];
  t.match(topic, /^[A-Za-z0-9._-]+$/, `the default topic is sanitised: ${topic}`);
  const rows = await captured(url, topic);
  t.same(rows.map((r) => r.type), ['insert', 'update', 'snapshot', 'delete', 'truncate'], 'every change captured');
  t.equal(rows[0]!.key, '[1, 2]', 'composite key of the hostile key columns');
  t.same(Object.keys(rows[0]!.data.after!).sort(), ['$body$ $f$ %s %L $1', 'id")); DROP TABLE public.victim; --', 'masked" || pg_sleep(1) || "'].sort(), 'excluded column out, others in');
  t.match(String(rows[1]!.data.after!['masked" || pg_sleep(1) || "']), /^[0-9a-f]{64}$/, 'the masked column hashed');
  t.same(rows[1]!.data.changed, ['masked" || pg_sleep(1) || "'], 'changed names it');
  t.equal(rows[3]!.data.before!["x'); DROP TABLE public.victim; --"], 5, 'the added hostile column is captured');
  t.notOk(JSON.stringify(rows).includes('hidden'), 'the excluded value never appears');
  t.same(await query(url, 'SELECT id FROM public.victim'), [{ id: 1 }], 'the victim table is intact');
  await c.query(`SELECT pgrelay.cdc_disable($1::regclass)`, [tbl]);
  t.same(await captureTriggers(url), [], 'disable removes the triggers of the hostile table');
});
