// Target columns computed by a SQL expression over the source row (img jsonb): the value lands in
// the target (also through reconcile); a bad expression is PR001 naming the column when the sync
// is defined, and in a cross-database target before the first write; expressions shaped to break
// out of their wrapper (a second statement, a second column, a comment) are refused, nothing runs.
import t from 'tap';
import { freshDatabase } from './helpers/db.ts';
import { connect, expectError, failure, runToEnd, settle, snapshot } from './helpers/sync.ts';

const FULL_NAME = `img ->> 'first' || ' ' || (img ->> 'last')`;

t.test('an expression column is applied, with its type, next to plain and renamed ones', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`
    CREATE TABLE public.people (id int PRIMARY KEY, first text, last text, born date);
    SELECT pgrelay.cdc_enable('public.people');
    CREATE TABLE public.cards (person_id int PRIMARY KEY, full_name text, born_year int, initials text);
  `);
  await c.query(`SELECT pgrelay.sync_define('cards', ARRAY['cdc.public.people'], $1::jsonb, '{"source_table": "public.people"}')`, [
    JSON.stringify({
      table: 'public.cards',
      key_columns: ['person_id'],
      columns: {
        person_id: 'id',
        full_name: { expr: FULL_NAME },
        born_year: { expr: `extract(year FROM (img ->> 'born')::date) -- a trailing comment` },
        initials: { expr: `upper(left(img ->> 'first', 1) || left(img ->> 'last', 1))` },
      },
    }),
  ]);
  await c.query(`INSERT INTO public.people SELECT g, 'first' || g, 'last' || g, date '1990-01-01' + g * 400 FROM generate_series(1, 30) g`);
  await c.query(`UPDATE public.people SET last = 'changed' WHERE id % 3 = 0`);
  await c.query(`DELETE FROM public.people WHERE id % 7 = 0`);
  await settle(db.connectionString);
  await runToEnd(c, 'cards', 9);
  const expected = `SELECT id AS person_id, first || ' ' || last AS full_name, extract(year FROM born)::int AS born_year,
                           upper(left(first, 1) || left(last, 1)) AS initials FROM public.people`;
  t.same(await snapshot(c, 'SELECT * FROM public.cards'), await snapshot(c, expected), 'the target holds the expressions over each source row');
  t.equal((await c.query(`SELECT full_name FROM public.cards WHERE person_id = 3`)).rows[0].full_name, 'first3 changed', 'an update recomputes the expression');

  await c.query(`UPDATE public.cards SET full_name = 'drifted' WHERE person_id = 1`);
  const { rows } = await c.query(`SELECT (r).different::int AS different FROM pgrelay.sync_reconcile('cards') r`);
  t.equal(rows[0].different, 1, 'reconcile computes the expression too: one drifted row found');
  t.equal((await c.query(`SELECT full_name FROM public.cards WHERE person_id = 1`)).rows[0].full_name, 'first1 last1', 'and repaired');
});

t.test('bad and injection-shaped expressions: PR001 naming the column, nothing defined, nothing run', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`
    CREATE TABLE public.cards (id int PRIMARY KEY, full_name text, n int);
    CREATE TABLE public.victim (id int);
    CREATE TABLE public.touched (at timestamptz);
    CREATE FUNCTION public.touch() RETURNS int LANGUAGE sql AS 'INSERT INTO public.touched VALUES (now()) RETURNING 1';
  `);
  const define = `SELECT pgrelay.sync_define('s', ARRAY['items'], $1::jsonb)`;
  const target = (columns: object) => JSON.stringify({ table: 'public.cards', key_columns: ['id'], columns: { id: 'id', ...columns } });
  const cases: Array<[string, object, string]> = [
    ['syntax error', { full_name: { expr: `img ->> 'first' ||` } }, 'full_name'],
    ['unknown function', { full_name: { expr: `no_such_function(img)` } }, 'full_name'],
    ['unknown column', { full_name: { expr: `nope ->> 'x'` } }, 'full_name'],
    ['wrong type (no cast from timestamptz to int)', { n: { expr: `now()` } }, 'n'],
    ['not a string', { full_name: { expr: 42 } }, 'full_name'],
    ['empty', { full_name: { expr: '  ' } }, 'full_name'],
    ['expr with another field', { full_name: { expr: `img ->> 'a'`, function: 'public.touch' } }, 'full_name'],
    ['a second statement', { full_name: { expr: `1); DROP TABLE public.victim; --` } }, 'full_name'],
    ['a second statement, rebalanced', { full_name: { expr: `'x'); DROP TABLE public.victim; SELECT ('x'` } }, 'full_name'],
    ['a second statement, parentheses balanced', { full_name: { expr: `'x'))::text; DROP TABLE public.victim; SELECT (('x'` } }, 'full_name'],
    ['a second column', { full_name: { expr: `'x')::text)::text, ((public.touch()` } }, 'full_name'],
    ['a comment swallowing the rest', { full_name: { expr: `'x' /* ` } }, 'full_name'],
    ['an open string', { full_name: { expr: `'x` } }, 'full_name'],
    ['a data-modifying CTE', { n: { expr: `(WITH d AS (DELETE FROM public.victim RETURNING 1) SELECT 1)` } }, 'n'],
  ];
  for (const [label, columns, column] of cases) {
    await expectError(t, c, label, define, [target(columns)], { code: 'PR001', fn: 'pgrelay.sync_define', argument: 'target' });
    const error = await failure(() => c.query(define, [target(columns)]));
    t.match(error?.message ?? '', `"columns".${column}`, `${label}: the message names the column ${column}`);
  }
  t.equal((await c.query('SELECT count(*)::int AS n FROM pgrelay.syncs')).rows[0].n, 0, 'no sync was defined');
  t.ok((await c.query(`SELECT to_regclass('public.victim') IS NOT NULL AS ok`)).rows[0].ok, 'the victim table is still there');
  t.equal((await c.query('SELECT count(*)::int AS n FROM public.touched')).rows[0].n, 0, 'no expression was run while being checked');
});

t.test('cross-database: a bad expression stops the first batch in the target, nothing written', async (t) => {
  const target = await freshDatabase(t);
  const c = await connect(t, target.connectionString);
  await c.query(`CREATE TABLE public.cards (id int PRIMARY KEY, full_name text)`);
  const messages = JSON.stringify([{ position: 1, type: 'insert', data: { after: { id: 1, first: 'a', last: 'b' } } }]);
  const apply = `SELECT pgrelay.sync_apply('x', $1::jsonb, $2::jsonb, '0', 0, '5', 1)`;
  const bad = { table: 'public.cards', key_columns: ['id'], database_env: 'T', columns: { id: 'id', full_name: { expr: `img ->> 'first' || no_such(img)` } } };
  await expectError(t, c, 'apply with a bad expression', apply, [JSON.stringify(bad), messages], { code: 'PR001', fn: 'pgrelay.sync_apply', argument: 'target' });
  t.equal((await c.query('SELECT count(*)::int AS n FROM public.cards')).rows[0].n, 0, 'no target row written');
  t.equal((await c.query('SELECT count(*)::int AS n FROM pgrelay.sync_checkpoints')).rows[0].n, 0, 'no checkpoint written');

  const good = { ...bad, columns: { id: 'id', full_name: { expr: FULL_NAME } } };
  t.equal((await c.query(apply, [JSON.stringify(good), messages])).rows[0].sync_apply, 1, 'the fixed expression applies');
  t.same((await c.query('SELECT id, full_name FROM public.cards')).rows, [{ id: 1, full_name: 'a b' }], 'computed in the target');
});
