// Bad input to the sync functions, the client and the daemon's sync config file: a pgrelay
// SQLSTATE naming the argument (never an internal error), injection attempts refused, and
// nothing half-written (no sync defined, no target row, no checkpoint moved).
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient, InvalidArgumentError, NotFoundError } from '../client/index.ts';
import { freshDatabase } from './helpers/db.ts';
import { startDaemonProcess } from './helpers/daemon-process.ts';
import { connect, expectError } from './helpers/sync.ts';

const GOOD_TARGET = { table: 'public.items', key_columns: ['id'] };

t.test('sync_define: every malformed argument raises PR001 naming it; nothing is defined', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(`
    CREATE TABLE public.items (id int PRIMARY KEY, v text, flag boolean);
    CREATE TABLE public.nokey (id int, v text);
    CREATE TABLE public.victim (id int);
    CREATE FUNCTION public.not_jsonb(x int) RETURNS int LANGUAGE sql AS 'SELECT x';
  `);
  const define = 'SELECT pgrelay.sync_define($1, $2::text[], $3::jsonb, $4::jsonb)';
  const fn = 'pgrelay.sync_define';
  const cases: Array<[string, unknown[], string]> = [
    ['name NULL', [null, '{items}', GOOD_TARGET, {}], 'name'],
    ['name with a space', ['bad name', '{items}', GOOD_TARGET, {}], 'name'],
    ['name too long', ['x'.repeat(201), '{items}', GOOD_TARGET, {}], 'name'],
    ['topics NULL', ['s', null, GOOD_TARGET, {}], 'topics'],
    ['topics empty', ['s', '{}', GOOD_TARGET, {}], 'topics'],
    ['topic with a quote', ['s', `{"it'ems"}`, GOOD_TARGET, {}], 'topics'],
    ['target NULL', ['s', '{items}', null, {}], 'target'],
    ['target an array', ['s', '{items}', [1], {}], 'target'],
    ['target unknown field', ['s', '{items}', { ...GOOD_TARGET, tabel: 'x' }, {}], 'target'],
    ['target without table', ['s', '{items}', { key_columns: ['id'] }, {}], 'target'],
    ['table injection', ['s', '{items}', { table: 'public.items; DROP TABLE public.victim', key_columns: ['id'] }, {}], 'target'],
    ['table with bad syntax', ['s', '{items}', { table: 'public.a b', key_columns: ['id'] }, {}], 'target'],
    ['table missing', ['s', '{items}', { table: 'public.nothing', key_columns: ['id'] }, {}], 'target'],
    ['key_columns empty', ['s', '{items}', { table: 'public.items', key_columns: [] }, {}], 'target'],
    ['key_columns not strings', ['s', '{items}', { table: 'public.items', key_columns: [1] }, {}], 'target'],
    ['key column missing', ['s', '{items}', { table: 'public.items', key_columns: ['nope'] }, {}], 'target'],
    ['key without a unique index', ['s', '{items}', { table: 'public.nokey', key_columns: ['id'] }, {}], 'target'],
    ['columns an array', ['s', '{items}', { ...GOOD_TARGET, columns: ['id'] }, {}], 'target'],
    ['column injection', ['s', '{items}', { ...GOOD_TARGET, columns: { 'v"; DROP TABLE public.victim; --': 'v' } }, {}], 'target'],
    ['column source a number', ['s', '{items}', { ...GOOD_TARGET, columns: { v: 3 } }, {}], 'target'],
    ['function missing', ['s', '{items}', { ...GOOD_TARGET, columns: { v: { function: 'public.nope' } } }, {}], 'target'],
    ['function not (jsonb)', ['s', '{items}', { ...GOOD_TARGET, columns: { v: { function: 'public.not_jsonb' } } }, {}], 'target'],
    ['function injection', ['s', '{items}', { ...GOOD_TARGET, columns: { v: { function: 'public.f(jsonb); DROP TABLE public.victim; --' } } }, {}], 'target'],
    ['delete unknown', ['s', '{items}', { ...GOOD_TARGET, delete: 'purge' }, {}], 'target'],
    ['soft column missing', ['s', '{items}', { ...GOOD_TARGET, delete: { soft: 'gone' } }, {}], 'target'],
    ['database_env not a variable name', ['s', '{items}', { ...GOOD_TARGET, database_env: 'postgres://u:p@h/db' }, {}], 'target'],
    ['options NULL', ['s', '{items}', GOOD_TARGET, null], 'options'],
    ['options unknown', ['s', '{items}', GOOD_TARGET, { start: 'latest' }], 'options'],
    ['source_format unknown', ['s', '{items}', GOOD_TARGET, { source_format: 'wal' }], 'options'],
    ['delete_types not strings', ['s', '{items}', GOOD_TARGET, { delete_types: [1] }], 'options'],
    ['source_table missing', ['s', '{items}', GOOD_TARGET, { source_table: 'public.nothing' }], 'options'],
    ['source_table injection', ['s', '{items}', GOOD_TARGET, { source_table: 'public.items; DROP TABLE public.victim' }], 'options'],
  ];
  for (const [label, params, argument] of cases) {
    const [name, topics, target, options] = params;
    await expectError(t, c, label, define, [name, topics, target === null ? null : JSON.stringify(target), options === null ? null : JSON.stringify(options)], {
      code: 'PR001',
      fn,
      argument,
    });
  }
  t.equal((await c.query('SELECT count(*)::int AS n FROM pgrelay.syncs')).rows[0].n, 0, 'no sync was defined');
  t.ok((await c.query(`SELECT to_regclass('public.victim') IS NOT NULL AS ok`)).rows[0].ok, 'the victim table is still there');

  const client = await createClient({ connectionString: db.connectionString, maximumPoolSize: 1 });
  t.teardown(() => client.end());
  await t.rejects(client.syncs.define('s', ['items'], { table: 'public.nothing', key_columns: ['id'] }), InvalidArgumentError, 'client: InvalidArgumentError');
  await t.rejects(client.syncs.drop('nope'), NotFoundError, 'client: dropping an unknown sync is NotFoundError');
});

t.test('sync_apply: malformed messages and arguments raise PR001, nothing written, checkpoint unmoved', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query('CREATE TABLE public.items (id int PRIMARY KEY, v text)');
  const apply = `SELECT pgrelay.sync_apply('items', $1::jsonb, $2::jsonb, '0', 0, '10', $3, $4)`;
  const fn = 'pgrelay.sync_apply';
  const good = { position: 1, type: 'insert', data: { before: null, after: { id: 1, v: 'a' } } };
  const cases: Array<[string, unknown[], string]> = [
    ['messages NULL', [GOOD_TARGET, null, 2, 'cdc'], 'messages'],
    ['messages an object', [GOOD_TARGET, { position: 1 }, 2, 'cdc'], 'messages'],
    ['a message not an object', [GOOD_TARGET, [good, 'x'], 2, 'cdc'], 'messages'],
    ['a message without position', [GOOD_TARGET, [good, { type: 'insert', data: good.data }], 2, 'cdc'], 'messages'],
    ['a message without type', [GOOD_TARGET, [good, { position: 2, data: good.data }], 2, 'cdc'], 'messages'],
    ['a cdc message without images', [GOOD_TARGET, [good, { position: 2, type: 'update', data: { changed: [] } }], 2, 'cdc'], 'messages'],
    ['an event without data', [GOOD_TARGET, [{ position: 2, type: 'set' }], 2, 'event'], 'messages'],
    ['a row without its key', [GOOD_TARGET, [good, { position: 2, type: 'insert', data: { after: { v: 'no key' } } }], 2, 'cdc'], 'messages'],
    ['source_format unknown', [GOOD_TARGET, [good], 2, 'wal'], 'source_format'],
    ['to_position NULL', [GOOD_TARGET, [good], null, 'cdc'], 'to_position'],
    ['target table missing', [{ table: 'public.nothing', key_columns: ['id'] }, [good], 2, 'cdc'], 'target'],
  ];
  for (const [label, params, argument] of cases) {
    const [target, messages, to, format] = params;
    await expectError(t, c, label, apply, [JSON.stringify(target), messages === null ? null : JSON.stringify(messages), to, format], { code: 'PR001', fn, argument });
  }
  await expectError(t, c, 'name invalid', `SELECT pgrelay.sync_apply('bad name', $1::jsonb, '[]', '0', 0, '1', 1)`, [JSON.stringify(GOOD_TARGET)], {
    code: 'PR001',
    fn,
    argument: 'name',
  });
  t.equal((await c.query('SELECT count(*)::int AS n FROM public.items')).rows[0].n, 0, 'no target row written');
  t.equal((await c.query(`SELECT count(*)::int AS n FROM pgrelay.sync_checkpoints WHERE cursor_position <> 0`)).rows[0].n, 0, 'no checkpoint moved');
  t.equal((await c.query(`SELECT count(*)::int AS n FROM pgrelay.sync_row_versions`)).rows[0].n, 0, 'no row version written');
});

t.test('sync_read: bad arguments are PR001 naming them', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  const fn = 'pgrelay.sync_read';
  const cases: Array<[string, string, string]> = [
    ['topics NULL', `SELECT * FROM pgrelay.sync_read(NULL, '0', 0)`, 'topics'],
    ['topic malformed', `SELECT * FROM pgrelay.sync_read(ARRAY['bad topic'], '0', 0)`, 'topics'],
    ['after_xid NULL', `SELECT * FROM pgrelay.sync_read(ARRAY['items'], NULL, 0)`, 'after_xid'],
    ['after_position NULL', `SELECT * FROM pgrelay.sync_read(ARRAY['items'], '0', NULL)`, 'after_position'],
    ['after_position negative', `SELECT * FROM pgrelay.sync_read(ARRAY['items'], '0', -1)`, 'after_position'],
    ['max_messages 0', `SELECT * FROM pgrelay.sync_read(ARRAY['items'], '0', 0, 0)`, 'max_messages'],
    ['max_messages too large', `SELECT * FROM pgrelay.sync_read(ARRAY['items'], '0', 0, 100001)`, 'max_messages'],
  ];
  for (const [what, query, argument] of cases) await expectError(t, c, what, query, [], { code: 'PR001', fn, argument });
  const empty = await c.query(`SELECT messages_count, messages FROM pgrelay.sync_read(ARRAY['items'], '0', 0)`);
  t.same(empty.rows, [{ messages_count: 0, messages: null }], 'valid arguments on an empty log: nothing to read');
});

t.test('sync_run, sync_drop, sync_progress, sync_lock, sync_reconcile: bad arguments and wrong states', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query('CREATE TABLE public.items (id int PRIMARY KEY, v text)');
  await c.query(`SELECT pgrelay.sync_define('local', ARRAY['items'], $1::jsonb, '{"source_format": "event"}')`, [JSON.stringify(GOOD_TARGET)]);
  await c.query(`SELECT pgrelay.sync_define('remote', ARRAY['items'], $1::jsonb, '{"source_format": "event"}')`, [JSON.stringify({ ...GOOD_TARGET, database_env: 'REMOTE_URL' })]);
  await expectError(t, c, 'sync_run unknown', `SELECT pgrelay.sync_run('nope')`, [], { code: 'PR003', fn: 'pgrelay.sync_run', argument: 'name' });
  await expectError(t, c, 'sync_run max_messages 0', `SELECT pgrelay.sync_run('local', 0)`, [], { code: 'PR001', fn: 'pgrelay.sync_run', argument: 'max_messages' });
  await expectError(t, c, 'sync_run cross-database', `SELECT pgrelay.sync_run('remote')`, [], { code: 'PR007', fn: 'pgrelay.sync_run', argument: 'name' });
  await expectError(t, c, 'sync_drop unknown', `SELECT pgrelay.sync_drop('nope')`, [], { code: 'PR003', fn: 'pgrelay.sync_drop', argument: 'name' });
  await expectError(t, c, 'sync_progress unknown', `SELECT pgrelay.sync_progress('nope', '1', 1)`, [], { code: 'PR003', fn: 'pgrelay.sync_progress', argument: 'name' });
  await expectError(t, c, 'sync_progress xid NULL', `SELECT pgrelay.sync_progress('remote', NULL, 1)`, [], { code: 'PR001', fn: 'pgrelay.sync_progress', argument: 'cursor_xid' });
  await expectError(t, c, 'sync_progress negative', `SELECT pgrelay.sync_progress('remote', '1', -1)`, [], { code: 'PR001', fn: 'pgrelay.sync_progress', argument: 'cursor_position' });
  await expectError(t, c, 'sync_lock bad name', `SELECT pgrelay.sync_lock('a b')`, [], { code: 'PR001', fn: 'pgrelay.sync_lock', argument: 'name' });
  await expectError(t, c, 'sync_reconcile unknown', `SELECT pgrelay.sync_reconcile('nope')`, [], { code: 'PR003', fn: 'pgrelay.sync_reconcile', argument: 'name' });
  await expectError(t, c, 'sync_reconcile chunk 0', `SELECT pgrelay.sync_reconcile('local', 0)`, [], { code: 'PR001', fn: 'pgrelay.sync_reconcile', argument: 'chunk_size' });
  await expectError(t, c, 'sync_reconcile cross-database', `SELECT pgrelay.sync_reconcile('remote')`, [], { code: 'PR007', fn: 'pgrelay.sync_reconcile', argument: 'name' });
  await expectError(t, c, 'sync_reconcile without source_table', `SELECT pgrelay.sync_reconcile('local')`, [], { code: 'PR007', fn: 'pgrelay.sync_reconcile', argument: 'name' });

  // sync_progress only moves forward.
  await c.query(`SELECT pgrelay.sync_progress('remote', '9', 90)`);
  await c.query(`SELECT pgrelay.sync_progress('remote', '5', 50)`);
  const row = await c.query(`SELECT applied_xid::text AS x, applied_position::int AS p FROM pgrelay.syncs WHERE name = 'remote'`);
  t.same(row.rows[0], { x: '9', p: 90 }, 'an older progress report does not move the copy back');
});

t.test('the daemon sync config file: malformed files and bad entries stop the daemon with a clear message, defining nothing', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query('CREATE TABLE public.items (id int PRIMARY KEY, v text)');
  const dir = mkdtempSync(join(tmpdir(), 'pgrelay-sync-config-'));
  const attempt = async (label: string, content: string, expected: RegExp): Promise<void> => {
    const file = join(dir, `${label.replace(/\W+/g, '-')}.json`);
    writeFileSync(file, content);
    const daemon = await startDaemonProcess({ connectionString: db.connectionString, args: ['--port', 'off', '--sync-config', file], waitReady: false });
    const code = await daemon.exited;
    t.equal(code, 1, `${label}: the daemon exits 1`);
    const text = daemon.logs.map((line) => String(line.msg ?? '')).join('\n');
    t.match(text, expected, `${label}: the message says what is wrong`);
  };
  await attempt('not JSON', '{"syncs": [', /sync config .*not-JSON\.json/);
  await attempt('no syncs array', '{"sync": []}', /sync config .*: .*syncs/);
  await attempt('entry without target', JSON.stringify({ syncs: [{ name: 'a', topics: ['items'] }] }), /syncs\.0\.target/);
  await attempt(
    'second entry invalid',
    JSON.stringify({
      syncs: [
        { name: 'good', topics: ['items'], target: GOOD_TARGET, options: { source_format: 'event' } },
        { name: 'bad', topics: ['items'], target: { table: 'public.nothing', key_columns: ['id'] } },
      ],
    }),
    /sync config .*: sync bad: pgrelay\.sync_define: argument target/,
  );
  t.equal((await c.query('SELECT count(*)::int AS n FROM pgrelay.syncs')).rows[0].n, 0, 'no sync defined, not even the good entry of the bad file');
});
