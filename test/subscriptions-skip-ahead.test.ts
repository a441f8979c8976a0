// A subscription of a rare topic in a busy log: a free partition with nothing of its own below the
// read horizon moves its cursor to (horizon, 0) once 1,000 messages or transactions lie between,
// so fetches stop walking other topics' messages again and again (and retention may remove
// them). Proven here: the cursor passes the other topic's messages; a transaction still open
// when the horizon is taken is never skipped (its message is delivered after it commits);
// a partition with a pending retry is left alone; a few other messages do not make it write.
import t from 'tap';
import { freshDatabase } from './helpers/db.ts';
import { connect } from './helpers/sql.ts';

type Cursor = { x: string; p: string };
const CURSOR = `SELECT cursor_xid::text AS x, cursor_position::text AS p FROM pgrelay.subscription_partitions WHERE subscription = $1 AND partition_index = 0`;
const FETCH = `SELECT position::text AS p, key, lease_token::text AS token FROM pgrelay.fetch_batch($1, 'c1', 100)`;
const after = (a: Cursor, b: Cursor): boolean => BigInt(a.x) > BigInt(b.x) || (BigInt(a.x) === BigInt(b.x) && BigInt(a.p) > BigInt(b.p));
const BUSY = (n: number) => `SELECT count(pgrelay.publish('busy.topic', 'k' || g % 50, 'tick', '{}')) FROM generate_series(1, ${n}) g`;

t.test('an idle partition skips other topics\' messages, never an open transaction', async (t) => {
  const db = await freshDatabase(t);
  const a = await connect(t, db.connectionString, 'skip-a');
  const b = await connect(t, db.connectionString, 'skip-b');
  await a.query(`SELECT pgrelay.subscribe('rare', ARRAY['rare.topic'], '{"type": "consumer"}', '{"partitions": 1}')`);
  const cursor = async (): Promise<Cursor> => (await a.query<Cursor>(CURSOR, ['rare'])).rows[0]!;
  const start = await cursor();

  // A few other messages (one transaction): no write unless the horizon is 1,000 transactions on.
  await a.query(BUSY(10));
  const horizonBefore = BigInt((await a.query<{ h: string }>('SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS h')).rows[0]!.h);
  t.same((await a.query(FETCH, ['rare'])).rows, [], 'nothing to fetch');
  const afterFew = await cursor();
  if (afterFew.x === start.x && afterFew.p === start.p) t.pass('10 other messages: the cursor was not written');
  else t.ok(horizonBefore - BigInt(start.x) >= 1000n || BigInt(afterFew.x) - BigInt(start.x) >= 1000n,
    `written only because the horizon was 1,000 transactions on (cluster-wide xids): ${JSON.stringify(afterFew)}`);

  // 1,500 other messages in one transaction: the next fetch moves the cursor past all of them.
  await a.query(BUSY(1500));
  const lastBusy = (await a.query<Cursor>(`SELECT xid::text AS x, position::text AS p FROM pgrelay.messages ORDER BY xid DESC, position DESC LIMIT 1`)).rows[0]!;
  t.same((await a.query(FETCH, ['rare'])).rows, [], 'still nothing to fetch');
  const skipped = await cursor();
  t.equal(skipped.p, '0', 'a horizon cursor (position 0)');
  t.ok(after(skipped, lastBusy), `the cursor (${skipped.x}, 0) is past the other topic's last message (${lastBusy.x}, ${lastBusy.p})`);

  // b publishes a rare message and stays open; 1,500 more other messages commit meanwhile.
  await b.query('BEGIN');
  await b.query(`SELECT pgrelay.publish('rare.topic', 'r1', 'late', '{}')`);
  const open = (await b.query<{ x: string }>('SELECT pg_current_xact_id()::text AS x')).rows[0]!.x;
  await a.query(BUSY(1500));
  t.same((await a.query(FETCH, ['rare'])).rows, [], "b's message is not readable while b is open");
  const held = await cursor();
  t.ok(BigInt(held.x) <= BigInt(open), `the cursor (${held.x}, ${held.p}) stays at or below the open transaction ${open}`);
  await b.query('COMMIT');
  const got = (await a.query<{ p: string; key: string; token: string }>(FETCH, ['rare'])).rows;
  t.same(got.map((r) => r.key), ['r1'], "b's message is delivered after it commits");
  await a.query(`SELECT pgrelay.complete_batch('rare', 0, $1::bigint, ARRAY[$2::bigint], '{}'::bigint[], '{}'::text[])`, [got[0]!.token, got[0]!.p]);
});

t.test('a partition with a pending retry keeps its cursor', async (t) => {
  const db = await freshDatabase(t);
  const a = await connect(t, db.connectionString, 'skip-retry');
  await a.query(`SELECT pgrelay.subscribe('rare', ARRAY['rare.topic'], '{"type": "consumer"}', '{"partitions": 1, "backoff": {"initial_ms": 3600000, "max_ms": 3600000, "jitter": 0}}')`);
  await a.query(`SELECT pgrelay.publish('rare.topic', 'r1', 'first', '{}')`);
  const got = (await a.query<{ p: string; token: string }>(FETCH, ['rare'])).rows;
  t.equal(got.length, 1, 'one message fetched');
  await a.query(`SELECT pgrelay.complete_batch('rare', 0, $1::bigint, '{}'::bigint[], ARRAY[$2::bigint], ARRAY['boom'])`, [got[0]!.token, got[0]!.p]);
  t.equal((await a.query(`SELECT count(*)::int AS n FROM pgrelay.retries WHERE subscription = 'rare'`)).rows[0].n, 1, 'a retry waits an hour');
  const before = (await a.query<Cursor>(CURSOR, ['rare'])).rows[0]!;
  await a.query(BUSY(1500));
  t.same((await a.query(FETCH, ['rare'])).rows, [], 'nothing due');
  t.same((await a.query<Cursor>(CURSOR, ['rare'])).rows[0], before, 'the cursor stayed where it was');
});
