// A sync reads the log's gapless (xid, position) walk without the per-key hold other consumers
// get: a key's newer change made in an older transaction can arrive a batch before its older
// change made in a younger transaction. The target keeps per-key order by position: the older
// change arrives after the newer one and is skipped as stale, and the target ends as the source.
import t from 'tap';
import { freshDatabase } from './helpers/db.ts';
import { connect, runToEnd, settle, snapshot } from './helpers/sync.ts';

t.test('a newer change of a key read before an older one (younger transaction) wins; the older is skipped as stale', async (t) => {
  const db = await freshDatabase(t);
  const a = await connect(t, db.connectionString, 'sync-order-a');
  const b = await connect(t, db.connectionString, 'sync-order-b');
  await a.query(`
    CREATE TABLE public.users (id int PRIMARY KEY, username text NOT NULL, email text);
    SELECT pgrelay.cdc_enable('public.users');
    CREATE TABLE public.user_copy (id int PRIMARY KEY, username text NOT NULL, email text);
    SELECT pgrelay.sync_define('copy', ARRAY['cdc.public.users'], '{"table": "public.user_copy", "key_columns": ["id"]}');
    INSERT INTO public.users VALUES (1, 'one', 'one@x.test'), (2, 'two', 'two@x.test');
  `);
  await settle(db.connectionString);
  await runToEnd(a, 'copy');
  const start = await a.query<{ x: string; p: string }>(`SELECT cursor_xid::text AS x, cursor_position::text AS p FROM pgrelay.sync_checkpoints WHERE name = 'copy'`);

  // a takes its xid first (a change of key 2), b then changes key 1 and commits, then a changes
  // key 1 (the newer change, in the older transaction) and commits.
  await a.query('BEGIN');
  await a.query(`UPDATE public.users SET username = 'two-a' WHERE id = 2`);
  await b.query(`UPDATE public.users SET email = 'from-b@x.test' WHERE id = 1`);
  await a.query(`UPDATE public.users SET email = 'from-a@x.test' WHERE id = 1`);
  await a.query('COMMIT');
  await settle(db.connectionString);

  const log = await a.query<{ xid: string; position: string; key: string }>(`
    SELECT xid::text AS xid, position::text AS position, key FROM pgrelay.messages
    WHERE topic = 'cdc.public.users' AND (xid, position) > ($1::xid8, $2::bigint) ORDER BY position`, [start.rows[0]!.x, start.rows[0]!.p]);
  t.equal(log.rows.length, 3, 'three changes after the checkpoint');
  const [aKey2, bKey1, aKey1] = log.rows;
  t.ok(BigInt(aKey2!.xid) === BigInt(aKey1!.xid) && BigInt(bKey1!.xid) > BigInt(aKey1!.xid), "a's transaction is the older one, b's change of key 1 has the smaller position");

  // sync_read, two at a time: a's two changes (walk order) come first, key 1's newer change among them.
  const first = await a.query<{ messages_count: number; messages: string; to_xid: string; to_position: string }>(
    `SELECT messages_count, messages, to_xid::text AS to_xid, to_position::text AS to_position FROM pgrelay.sync_read(ARRAY['cdc.public.users'], $1::xid8, $2::bigint, 2)`,
    [start.rows[0]!.x, start.rows[0]!.p],
  );
  t.same((JSON.parse(first.rows[0]!.messages) as Array<{ position: number }>).map((m) => String(m.position)), [aKey2!.position, aKey1!.position],
    'the first batch of two holds both changes of the older transaction');
  const second = await a.query<{ messages: string }>(`SELECT messages FROM pgrelay.sync_read(ARRAY['cdc.public.users'], $1::xid8, $2::bigint, 2)`, [
    first.rows[0]!.to_xid,
    first.rows[0]!.to_position,
  ]);
  t.same((JSON.parse(second.rows[0]!.messages) as Array<{ position: number }>).map((m) => String(m.position)), [bKey1!.position], "the next batch holds b's older change");

  // Applied one message per batch: b's change arrives last and must not overwrite a's.
  const applied = await runToEnd(a, 'copy', 1);
  t.equal(applied, 2, "two changes applied: a's two; b's is stale");
  t.same(
    await snapshot(a, 'SELECT id, username, email FROM public.user_copy'),
    await snapshot(a, 'SELECT id, username, email FROM public.users'),
    'the target equals the source',
  );
  t.same((await a.query(`SELECT email FROM public.user_copy WHERE id = 1`)).rows, [{ email: 'from-a@x.test' }], 'key 1 has the newer change');
  t.equal((await a.query<{ n: number }>(`SELECT skipped_stale::int AS n FROM pgrelay.sync_checkpoints WHERE name = 'copy'`)).rows[0]!.n, 1, 'skipped_stale counts the older change');
});
