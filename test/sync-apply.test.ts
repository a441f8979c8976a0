// Sync apply in one database: CDC changes of a source table applied to target tables through
// mappings (subset, renamed, computed by a function), every delete mode, a primary-key change and
// a TRUNCATE; a change older than what a row reflects never overwrites it; a replayed batch is a
// no-op; deletes racing upserts end as the source did; domain events as a source; lag in SQL.
import t from 'tap';
import { freshDatabase } from './helpers/db.ts';
import { cli, connect, failure, runToEnd, settle, snapshot } from './helpers/sync.ts';

const SOURCE = `
  CREATE TABLE public.users (id int PRIMARY KEY, username text NOT NULL, email text, password text);
  CREATE FUNCTION public.email_domain(img jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT split_part(img ->> 'email', '@', 2) $$;
  SELECT pgrelay.cdc_enable('public.users');
`;

t.test('mappings, computed columns, delete modes, a key change and a truncate end equal to the source projection', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(SOURCE);
  await c.query(`
    CREATE TABLE public.user_snapshots (id int PRIMARY KEY, username text, email text);
    CREATE TABLE public.user_cards (user_id int PRIMARY KEY, handle text, email_domain text);
    CREATE TABLE public.user_soft (id int PRIMARY KEY, username text, deleted_at timestamptz);
    CREATE TABLE public.user_flag (id int PRIMARY KEY, username text, is_deleted boolean NOT NULL DEFAULT false);
    CREATE TABLE public.user_keep (id int PRIMARY KEY, username text);
  `);
  const define = (name: string, target: object) =>
    c.query(`SELECT pgrelay.sync_define($1, ARRAY['cdc.public.users'], $2::jsonb, '{"source_table": "public.users"}')`, [name, JSON.stringify(target)]);
  await define('snapshots', { table: 'public.user_snapshots', key_columns: ['id'], columns: { id: 'id', username: 'username', email: 'email' } });
  await define('cards', {
    table: 'public.user_cards',
    key_columns: ['user_id'],
    columns: { user_id: 'id', handle: 'username', email_domain: { function: 'public.email_domain' } },
  });
  await define('soft', { table: 'public.user_soft', key_columns: ['id'], columns: { id: 'id', username: 'username' }, delete: { soft: 'deleted_at' } });
  await define('flag', { table: 'public.user_flag', key_columns: ['id'], columns: { id: 'id', username: 'username' }, delete: { soft: 'is_deleted' } });
  await define('keep', { table: 'public.user_keep', key_columns: ['id'], columns: { id: 'id', username: 'username' }, delete: 'ignore' });
  const names = ['snapshots', 'cards', 'soft', 'flag', 'keep'];

  await c.query(`INSERT INTO public.users SELECT g, 'user' || g, 'u' || g || '@d' || (g % 3) || '.test', 'secret' FROM generate_series(1, 40) g`);
  await c.query(`UPDATE public.users SET email = 'new' || id || '@changed.test' WHERE id % 4 = 0`);
  await c.query(`DELETE FROM public.users WHERE id % 5 = 0`);
  await c.query(`UPDATE public.users SET id = 100 + id WHERE id IN (1, 2)`); // a key change
  await c.query(`INSERT INTO public.users VALUES (5, 'back', 'back@again.test', 'x')`); // re-insert after a delete
  await settle(db.connectionString);
  for (const name of names) await runToEnd(c, name, 7); // small batches: many checkpoints

  const projection = await snapshot(c, 'SELECT id, username, email FROM public.users');
  t.same(await snapshot(c, 'SELECT id, username, email FROM public.user_snapshots'), projection, 'subset: target equals the source projection');
  t.same(
    await snapshot(c, 'SELECT user_id, handle, email_domain FROM public.user_cards'),
    await snapshot(c, `SELECT id AS user_id, username AS handle, split_part(email, '@', 2) AS email_domain FROM public.users`),
    'renamed and computed columns',
  );
  t.same(await snapshot(c, 'SELECT id, username FROM public.user_soft WHERE deleted_at IS NULL'), await snapshot(c, 'SELECT id, username FROM public.users'), 'soft delete: live rows');
  t.same(
    (await c.query(`SELECT array_agg(id ORDER BY id) AS ids FROM public.user_soft WHERE deleted_at IS NOT NULL`)).rows[0].ids,
    [1, 2, 10, 15, 20, 25, 30, 35, 40],
    'soft delete (timestamp): deleted and moved-away keys are marked, the re-inserted key 5 is live again',
  );
  t.same(
    (await c.query(`SELECT array_agg(id ORDER BY id) AS ids FROM public.user_flag WHERE is_deleted`)).rows[0].ids,
    [1, 2, 10, 15, 20, 25, 30, 35, 40],
    'soft delete (boolean): the same keys flagged, key 5 back to false',
  );
  t.same(
    (await c.query(`SELECT array_agg(id ORDER BY id) AS ids FROM public.user_keep`)).rows[0].ids,
    (await c.query(`SELECT array_agg(g ORDER BY g) AS ids FROM generate_series(1, 40) g`)).rows[0].ids.concat([101, 102]),
    'delete ignored: every key ever written stays',
  );

  await c.query('TRUNCATE public.users');
  await c.query(`INSERT INTO public.users VALUES (7, 'after', 'after@truncate.test', 'x')`);
  await settle(db.connectionString);
  for (const name of names) await runToEnd(c, name);
  t.same(await snapshot(c, 'SELECT id, username, email FROM public.user_snapshots'), ['{"id":7,"username":"after","email":"after@truncate.test"}'], 'a truncate empties the target');
  t.equal((await c.query(`SELECT count(*)::int AS n FROM public.user_soft WHERE deleted_at IS NULL`)).rows[0].n, 1, 'soft mode: a truncate marks every row');
  t.equal((await c.query(`SELECT count(*)::int AS n FROM public.user_keep`)).rows[0].n, 42, 'ignore mode: a truncate removes nothing');

  const lag = await c.query(`SELECT sync_name, pending::int AS pending FROM pgrelay.sync_lag() ORDER BY sync_name`);
  t.same(lag.rows, names.slice().sort().map((name) => ({ sync_name: name, pending: 0 })), 'sync_lag: every sync caught up');
});

t.test('a stale change never overwrites, a replayed batch is a no-op, a moved checkpoint is refused', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query('CREATE TABLE public.items (id int PRIMARY KEY, v text)');
  const target = JSON.stringify({ table: 'public.items', key_columns: ['id'] });
  const msg = (position: number, type: string, after: object | null, before: object | null = null) => ({
    position,
    type,
    data: { before, after },
    created_at: new Date().toISOString(),
  });
  const apply = (messages: object[], from: [string, number], to: [string, number]) =>
    c.query<{ n: number }>(`SELECT pgrelay.sync_apply('items', $1::jsonb, $2::jsonb, $3::xid8, $4, $5::xid8, $6) AS n`, [
      target,
      JSON.stringify(messages),
      from[0],
      from[1],
      to[0],
      to[1],
    ]);
  const rows = async () => snapshot(c, 'SELECT id, v FROM public.items');

  const first = [msg(10, 'insert', { id: 1, v: 'a' }), msg(11, 'insert', { id: 2, v: 'b' }), msg(12, 'update', { id: 1, v: 'a2' }, { id: 1, v: 'a' })];
  t.equal((await apply(first, ['0', 0], ['100', 12])).rows[0]!.n, 2, 'two rows applied (the last change per key)');
  t.same(await rows(), ['{"id":1,"v":"a2"}', '{"id":2,"v":"b"}']);

  t.equal((await apply(first, ['0', 0], ['100', 12])).rows[0]!.n, 0, 'the same batch again: 0 applied');
  t.same(await rows(), ['{"id":1,"v":"a2"}', '{"id":2,"v":"b"}'], 'replay changed nothing');
  const checkpoint = await c.query(`SELECT cursor_xid::text AS x, cursor_position::int AS p, applied::int AS applied FROM pgrelay.sync_checkpoints WHERE name = 'items'`);
  t.same(checkpoint.rows[0], { x: '100', p: 12, applied: 2 }, 'the checkpoint and counters did not move on replay');

  // A later batch (by cursor) carrying an older position for key 1: a change the row already passed.
  const second = [msg(5, 'update', { id: 1, v: 'stale' }, { id: 1, v: 'x' }), msg(13, 'delete', null, { id: 2, v: 'b' })];
  t.equal((await apply(second, ['100', 12], ['101', 13])).rows[0]!.n, 1, 'only the delete applies');
  t.same(await rows(), ['{"id":1,"v":"a2"}'], 'the stale update did not overwrite key 1');
  t.equal((await c.query(`SELECT skipped_stale::int AS n FROM pgrelay.sync_checkpoints WHERE name = 'items'`)).rows[0].n, 1, 'skipped_stale counts it');

  // An upsert older than the delete of the same key arrives after it: the row stays deleted.
  t.equal((await apply([msg(9, 'insert', { id: 2, v: 'resurrected' })], ['101', 13], ['102', 9])).rows[0]!.n, 0);
  t.same(await rows(), ['{"id":1,"v":"a2"}'], 'an upsert older than the delete does not bring the row back');
  t.equal((await apply([msg(20, 'insert', { id: 2, v: 'new' })], ['102', 9], ['103', 20])).rows[0]!.n, 1);
  t.same(await rows(), ['{"id":1,"v":"a2"}', '{"id":2,"v":"new"}'], 'a newer insert after the delete does');

  const moved = await failure(() => apply([msg(30, 'insert', { id: 3, v: 'c' })], ['100', 12], ['104', 30]));
  t.equal(moved?.code, 'PR007', 'a batch starting from another checkpoint: PR007');
  t.equal(moved?.column, 'from_position');
  t.same(await rows(), ['{"id":1,"v":"a2"}', '{"id":2,"v":"new"}'], 'nothing written by the refused batch');
});

t.test('a delete racing an update or an insert of the same row ends as the source did', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(SOURCE);
  await c.query('CREATE TABLE public.user_snapshots (id int PRIMARY KEY, username text, email text)');
  await c.query(`SELECT pgrelay.sync_define('snap', ARRAY['cdc.public.users'], '{"table": "public.user_snapshots", "key_columns": ["id"], "columns": {"id": "id", "username": "username", "email": "email"}}')`);
  await c.query(`INSERT INTO public.users SELECT g, 'u' || g, 'u' || g || '@x.test', 's' FROM generate_series(1, 4) g`);
  await settle(db.connectionString);
  await runToEnd(c, 'snap');

  const a = await connect(t, db.connectionString, 'writer-a');
  const b = await connect(t, db.connectionString, 'writer-b');
  // Row 1: A updates (holds the row lock), B's delete waits, A commits, then B: deleted wins.
  await a.query('BEGIN');
  await a.query(`UPDATE public.users SET username = 'raced' WHERE id = 1`);
  const deleting = b.query('DELETE FROM public.users WHERE id = 1');
  await new Promise((resolve) => setTimeout(resolve, 100));
  await a.query('COMMIT');
  await deleting;
  // Row 2: A deletes, B's update waits and then finds nothing: deleted.
  await a.query('BEGIN');
  await a.query('DELETE FROM public.users WHERE id = 2');
  const updating = b.query(`UPDATE public.users SET username = 'late' WHERE id = 2`);
  await new Promise((resolve) => setTimeout(resolve, 100));
  await a.query('COMMIT');
  await updating;
  // Row 3: A deletes, B's insert of the same key waits for A, then succeeds: present again.
  await a.query('BEGIN');
  await a.query('DELETE FROM public.users WHERE id = 3');
  const inserting = b.query(`INSERT INTO public.users VALUES (3, 'reborn', 'r@x.test', 's')`);
  await new Promise((resolve) => setTimeout(resolve, 100));
  await a.query('COMMIT');
  await inserting;
  // Row 4: deleted and re-inserted in one batch, then deleted in the next.
  await c.query('DELETE FROM public.users WHERE id = 4');
  await c.query(`INSERT INTO public.users VALUES (4, 'four', 'f@x.test', 's')`);
  await settle(db.connectionString);
  await runToEnd(c, 'snap', 1000);
  t.same(await snapshot(c, 'SELECT id, username, email FROM public.user_snapshots'), await snapshot(c, 'SELECT id, username, email FROM public.users'), 'target equals source');
  await c.query('DELETE FROM public.users WHERE id = 4');
  await settle(db.connectionString);
  await runToEnd(c, 'snap', 1);
  t.same(await snapshot(c, 'SELECT id, username, email FROM public.user_snapshots'), await snapshot(c, 'SELECT id, username, email FROM public.users'), 'and again after one more delete');
  t.same((await c.query('SELECT array_agg(id ORDER BY id) AS ids FROM public.user_snapshots')).rows[0].ids, [3], 'only the re-inserted key 3 is left');
});

t.test('domain events as a source: the event data is the row, listed types delete', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query('CREATE TABLE public.carts (cart_id text PRIMARY KEY, items int, total numeric)');
  await c.query(`SELECT pgrelay.sync_define('carts', ARRAY['shop.cart'], '{"table": "public.carts", "key_columns": ["cart_id"], "columns": {"cart_id": "id", "items": "items", "total": "total"}}',
                 '{"source_format": "event", "delete_types": ["CartAbandoned"]}')`);
  await c.query(`SELECT pgrelay.publish('shop.cart', 'c1', 'CartUpdated', '{"id": "c1", "items": 1, "total": 9.5}')`);
  await c.query(`SELECT pgrelay.publish('shop.cart', 'c2', 'CartUpdated', '{"id": "c2", "items": 3, "total": 30}')`);
  await c.query(`SELECT pgrelay.publish('shop.cart', 'c1', 'CartUpdated', '{"id": "c1", "items": 2, "total": 19}')`);
  await c.query(`SELECT pgrelay.publish('shop.cart', 'c2', 'CartAbandoned', '{"id": "c2"}')`);
  await c.query(`SELECT pgrelay.publish('shop.other', 'c3', 'CartUpdated', '{"id": "c3", "items": 1, "total": 1}')`);
  await settle(db.connectionString);
  const before = await c.query(`SELECT pending::int AS pending FROM pgrelay.sync_lag('carts')`);
  t.equal(before.rows[0].pending, 4, 'sync_lag counts the four messages of its topic');
  await runToEnd(c, 'carts');
  t.same(await snapshot(c, 'SELECT cart_id, items, total::text AS total FROM public.carts'), ['{"cart_id":"c1","items":2,"total":"19"}'], 'c1 at its last state, c2 deleted, other topics ignored');
  t.equal((await c.query(`SELECT pending::int AS pending FROM pgrelay.sync_lag('carts')`)).rows[0].pending, 0, 'caught up');
});

t.test('retention keeps the log a sync has not applied yet', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query('CREATE TABLE public.items (id int PRIMARY KEY, v text)');
  await c.query(`SELECT pgrelay.sync_define('items', ARRAY['items'], '{"table": "public.items", "key_columns": ["id"], "database_env": "ITEMS_TARGET_URL"}', '{"source_format": "event"}')`);
  await c.query(`SELECT pgrelay.publish('items', g::text, 'set', jsonb_build_object('id', g, 'v', 'x')) FROM generate_series(1, 5) g`);
  await settle(db.connectionString);
  await c.query(`SELECT pgrelay.retention_run(interval '0')`);
  const left = await c.query(`SELECT count(*)::int AS n FROM pgrelay.messages WHERE topic = 'items'`);
  t.equal(left.rows[0].n, 5, 'the 5 messages the sync still needs are kept');
  // Once the sync reports (from its target database) that it applied the first three, only those go.
  const third = await c.query(`SELECT xid::text AS xid, position::text AS position FROM pgrelay.messages WHERE topic = 'items' ORDER BY xid, position OFFSET 2 LIMIT 1`);
  await c.query(`SELECT pgrelay.sync_progress('items', $1::xid8, $2::bigint)`, [third.rows[0].xid, third.rows[0].position]);
  const deleted = await c.query(`SELECT pgrelay.retention_run(interval '0') AS n`);
  t.equal(Number(deleted.rows[0].n), 3, 'the 3 messages the sync has applied are deleted');
  const after = await c.query(`SELECT count(*)::int AS n FROM pgrelay.messages WHERE topic = 'items'`);
  t.equal(after.rows[0].n, 2, 'the 2 it has not applied are kept');
});

t.test('CLI: `pgrelay sync run NAME` applies a same-database sync to the end; `sync list` shows it; a cross-database one is refused', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(SOURCE);
  await c.query('CREATE TABLE public.user_snapshots (id int PRIMARY KEY, username text, email text)');
  await c.query(`SELECT pgrelay.sync_define('snap', ARRAY['cdc.public.users'], '{"table": "public.user_snapshots", "key_columns": ["id"], "columns": {"id": "id", "username": "username", "email": "email"}}')`);
  await c.query(`SELECT pgrelay.sync_define('remote', ARRAY['cdc.public.users'], '{"table": "public.user_snapshots", "key_columns": ["id"], "database_env": "NOWHERE_URL"}')`);
  for (let i = 0; i < 5; i++) await c.query(`INSERT INTO public.users SELECT g, 'u' || g, 'u' || g || '@x.test', 's' FROM generate_series($1::int * 1000 + 1, $1::int * 1000 + 700) g`, [i]);
  await c.query('UPDATE public.users SET email = NULL WHERE id % 3 = 0');
  await settle(db.connectionString);
  const env = { DATABASE_URL: db.connectionString };
  const run = await cli(['sync', 'run', 'snap'], env);
  t.equal(run.code, 0, `exit 0 (stderr: ${run.stderr.slice(-200)})`);
  const updates = (await c.query(`SELECT count(*)::int AS n FROM public.users WHERE id % 3 = 0`)).rows[0].n as number;
  const applied = (JSON.parse(run.stdout) as { applied: number }).applied;
  t.ok(applied >= 3500 && applied <= 3500 + updates, `${applied} row changes applied over several batches (3500 inserts, ${updates} updates, some merged per batch)`);
  t.same(await snapshot(c, 'SELECT id, username, email FROM public.user_snapshots'), await snapshot(c, 'SELECT id, username, email FROM public.users'), 'target equals source');
  const list = await cli(['sync', 'list'], env);
  t.same((JSON.parse(list.stdout) as Array<{ name: string }>).map((s) => s.name), ['remote', 'snap'], 'sync list');
  const remote = await cli(['sync', 'run', 'remote'], env);
  t.equal(remote.code, 1, 'sync run on a cross-database sync: exit 1');
  t.match(remote.stderr, /cross-database sync is run by `pgrelay daemon`/);
});
