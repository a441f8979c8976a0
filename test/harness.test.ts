// Proves the test harness: one server per run, a migrated template, a fresh database per caller.
import t from 'tap';
import { adminConnectionString, freshDatabase, query, usingEmbeddedServer } from './helpers/db.ts';

t.test('two fresh databases are distinct and isolated', async (t) => {
  const a = await freshDatabase(t);
  const b = await freshDatabase(t);
  t.not(a.name, b.name);
  t.not(a.connectionString, b.connectionString);
  t.same(await query(a.connectionString, 'SELECT current_database() AS db'), [{ db: a.name }]);
  t.same(await query(b.connectionString, 'SELECT current_database() AS db'), [{ db: b.name }]);

  await query(a.connectionString, 'CREATE TABLE public.only_in_a (id int PRIMARY KEY)');
  await query(a.connectionString, 'INSERT INTO public.only_in_a VALUES (1)');
  t.same(await query(a.connectionString, 'SELECT id FROM public.only_in_a'), [{ id: 1 }]);
  t.same(await query(b.connectionString, `SELECT to_regclass('public.only_in_a') AS t`), [{ t: null }]);
});

t.test('a fresh database is a clone of the migrated template', async (t) => {
  const db = await freshDatabase(t);
  const [row] = await query<{ schema: string | null }>(db.connectionString, `SELECT to_regnamespace('pgrelay')::text AS schema`);
  t.equal(row?.schema, 'pgrelay');
  const [version] = await query<{ v: string }>(db.connectionString, 'SELECT pgrelay.version() AS v');
  t.match(version?.v, /^\d+\.\d+\.\d+/, 'pgrelay.version() answers');
});

t.test('migrated: false gives an empty database', async (t) => {
  const db = await freshDatabase(t, { migrated: false });
  t.same(await query(db.connectionString, `SELECT to_regnamespace('pgrelay') AS s`), [{ s: null }]);
  const tables = await query(db.connectionString, `SELECT 1 FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`);
  t.equal(tables.length, 0);
});

t.test('a fresh database is dropped when its test ends', async (t) => {
  let name = '';
  await t.test('owner', async (t) => {
    name = (await freshDatabase(t)).name;
    t.equal((await query(adminConnectionString(), 'SELECT 1 FROM pg_database WHERE datname = $1', [name])).length, 1);
  });
  t.equal((await query(adminConnectionString(), 'SELECT 1 FROM pg_database WHERE datname = $1', [name])).length, 0);
});

t.test('the server', async (t) => {
  const [row] = await query<{ num: string; max: string }>(
    adminConnectionString(),
    `SELECT current_setting('server_version_num') AS num, current_setting('max_connections') AS max`,
  );
  const major = Math.floor(Number(row?.num) / 10000);
  if (process.env.DATABASE_URL) {
    t.equal(usingEmbeddedServer(), false, 'DATABASE_URL is used');
    t.ok(major >= 14, `PostgreSQL ${major} is supported`);
  } else {
    t.equal(usingEmbeddedServer(), true, 'an embedded server is started');
    t.equal(major, 18, 'the embedded server is PostgreSQL 18');
    t.ok(Number(row?.max) >= 300, 'max_connections is high enough for parallel test files');
  }
});
