// A sync reads its topics' messages in the log's (xid, position) walk. When a batch comes back
// short, the walk has passed every message below the read horizon, so the checkpoint moves to
// (horizon, 0): a sync of a rare topic in a busy log must not rescan the other topics' messages on
// every read. These tests prove it moves past other topics' messages, never past a transaction
// still running (its change arrives later and is applied), and that the daemon's step and
// sync_run record an idle skip only once the horizon is 1,000 transactions ahead.
import t from 'tap';
import { sql } from 'slonik';
import { z } from 'zod';
import { createPgrelayPool } from '../client/index.ts';
import { listSyncs, runSyncStep, syncCheckpoint } from '../daemon/sync-runner.ts';
import { freshDatabase } from './helpers/db.ts';
import { connect, runToEnd, settle, snapshot } from './helpers/sync.ts';

type Read = { n: number; messages: string | null; x: string; p: string }; // x/p null: the cursor stays
const READ = `SELECT messages_count AS n, messages, to_xid::text AS x, to_position::text AS p
              FROM pgrelay.sync_read(ARRAY['cdc.public.users'], $1::xid8, $2::bigint, $3)`;
const SETUP = `
  CREATE TABLE public.users (id int PRIMARY KEY, username text NOT NULL, email text);
  SELECT pgrelay.cdc_enable('public.users');
  CREATE TABLE public.user_copy (id int PRIMARY KEY, username text NOT NULL, email text);
  SELECT pgrelay.sync_define('copy', ARRAY['cdc.public.users'], '{"table": "public.user_copy", "key_columns": ["id"]}');
`;
const after = (a: { x: string; p: string }, b: { x: string; p: string }): boolean =>
  BigInt(a.x) > BigInt(b.x) || (BigInt(a.x) === BigInt(b.x) && BigInt(a.p) > BigInt(b.p));

/** n messages on another topic, one transaction each (each takes an xid). */
async function noise(c: { query: (text: string) => Promise<unknown> }, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await c.query(`SELECT pgrelay.publish('noise.other', 'k${i % 7}', 'tick', '{}')`);
}

t.test('a short batch moves the cursor past other topics\' messages to the horizon; a full one stops at its last message', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString, 'skip-read');
  await c.query(SETUP);
  await c.query(`INSERT INTO public.users VALUES (1, 'one', 'one@x.test'), (2, 'two', 'two@x.test')`);
  await noise(c, 30);
  await settle(db.connectionString);
  const last = (await c.query<{ x: string; p: string }>(`SELECT xid::text AS x, position::text AS p FROM pgrelay.messages ORDER BY xid DESC, position DESC LIMIT 1`)).rows[0]!;
  const lastUser = (await c.query<{ x: string; p: string }>(
    `SELECT xid::text AS x, position::text AS p FROM pgrelay.messages WHERE topic = 'cdc.public.users' ORDER BY xid DESC, position DESC LIMIT 1`,
  )).rows[0]!;

  const full = (await c.query<Read>(READ, ['0', 0, 2])).rows[0]!;
  t.equal(full.n, 2, 'a full batch of two');
  t.same({ x: full.x, p: full.p }, lastUser, 'a full batch ends at its last message (more may follow below the horizon)');

  const short = (await c.query<Read>(READ, ['0', 0, 100])).rows[0]!;
  t.equal(short.n, 2, 'a short batch: both changes');
  t.equal(short.p, '0', 'its cursor is a horizon cursor (position 0)');
  t.ok(after({ x: short.x, p: short.p }, last), `the cursor (${short.x}, ${short.p}) is past the last message of any topic (${last.x}, ${last.p})`);

  const empty = (await c.query<Read>(READ, [short.x, short.p, 100])).rows[0]!;
  t.equal(empty.n, 0, 'nothing new after it');
  t.equal(empty.messages, null, 'no messages');
  t.ok(empty.x === null ? empty.p === null : !after({ x: short.x, p: short.p }, { x: empty.x, p: empty.p }),
    `an empty read leaves the cursor (null) or moves it forward, never back: (${empty.x}, ${empty.p})`);
});

t.test('a transaction still running when the horizon is taken is never skipped: its change arrives and applies', async (t) => {
  const db = await freshDatabase(t);
  const a = await connect(t, db.connectionString, 'skip-open-a');
  const b = await connect(t, db.connectionString, 'skip-open-b');
  await a.query(SETUP);
  await a.query(`INSERT INTO public.users VALUES (1, 'one', 'one@x.test'), (2, 'two', 'two@x.test')`);
  await settle(db.connectionString);
  await runToEnd(a, 'copy');

  // b changes key 2 and stays open; a then writes noise and a change of key 1, which commit.
  await b.query('BEGIN');
  await b.query(`UPDATE public.users SET email = 'late@x.test' WHERE id = 2`);
  const open = (await b.query<{ x: string }>('SELECT pg_current_xact_id()::text AS x')).rows[0]!.x;
  await noise(a, 20);
  await a.query(`UPDATE public.users SET username = 'one-a' WHERE id = 1`);

  const cp = (await a.query<{ x: string; p: string }>(`SELECT cursor_xid::text AS x, cursor_position::text AS p FROM pgrelay.sync_checkpoints WHERE name = 'copy'`)).rows[0]!;
  const read = (await a.query<Read>(READ, [cp.x, cp.p, 100])).rows[0]!;
  t.equal(read.n, 0, "nothing readable yet: a's change is above b's open transaction");
  const to = read.x === null ? cp : { x: read.x, p: read.p }; // null: the cursor stays where it was
  t.ok(BigInt(to.x) <= BigInt(open), `the cursor (${to.x}, ${to.p}) stays at or below the open transaction's xid ${open}`);
  t.equal(await a.query('SELECT pgrelay.sync_run($1, 100) AS n', ['copy']).then((r) => r.rows[0].n), 0, 'sync_run applies nothing yet');

  await b.query('COMMIT');
  await settle(db.connectionString);
  const next = (await a.query<Read>(READ, [to.x, to.p, 100])).rows[0]!;
  t.equal(next.n, 2, "both changes come after the commit: b's (older transaction) and a's");
  await runToEnd(a, 'copy');
  t.same(
    await snapshot(a, 'SELECT id, username, email FROM public.user_copy'),
    await snapshot(a, 'SELECT id, username, email FROM public.users'),
    'the target equals the source, the late change included',
  );
});

t.test('idle: sync_run and the daemon step record a skip only once the horizon is 1,000 transactions ahead', async (t) => {
  const source = await freshDatabase(t);
  const target = await freshDatabase(t);
  const s = await connect(t, source.connectionString, 'skip-idle-source');
  const d = await connect(t, target.connectionString, 'skip-idle-target');
  await s.query(SETUP);
  await d.query(`CREATE TABLE public.user_copy (id int PRIMARY KEY, username text NOT NULL, email text)`);
  await s.query(`SELECT pgrelay.sync_define('remote', ARRAY['cdc.public.users'],
                 '{"table": "public.user_copy", "key_columns": ["id"], "database_env": "SKIP_TARGET_URL"}')`);
  await s.query(`INSERT INTO public.users VALUES (1, 'one', 'one@x.test')`);
  await settle(source.connectionString);
  await runToEnd(s, 'copy');
  const localAt = async () =>
    (await s.query<{ x: string; p: string }>(`SELECT cursor_xid::text AS x, cursor_position::text AS p FROM pgrelay.sync_checkpoints WHERE name = 'copy'`)).rows[0]!;

  const sourcePool = await createPgrelayPool(source.connectionString, { maximumPoolSize: 2 });
  const targetPool = await createPgrelayPool(target.connectionString, { maximumPoolSize: 2 });
  t.teardown(async () => {
    await sourcePool.end();
    await targetPool.end();
  });
  const [sync] = (await listSyncs(sourcePool)).filter((row) => row.name === 'remote');
  t.equal(await runSyncStep(sourcePool, targetPool, sync!, 100), 1, 'the daemon step applies the one change');
  const remoteAt = async () => {
    const at = await syncCheckpoint(targetPool, 'remote');
    return { x: at.xid, p: at.position };
  };
  const applied = async () => Number(await targetPool.oneFirst(sql.type(z.object({ n: z.number() }))`SELECT applied::int AS n FROM pgrelay.sync_checkpoints WHERE name = 'remote'`));

  // A few other transactions: an idle call writes nothing unless the horizon is 1,000 transactions
  // ahead (the xid counter is cluster-wide: other databases' work on a shared server counts too,
  // so the horizon is read before and after the calls).
  await noise(s, 10);
  await settle(source.connectionString);
  const horizon = async () => BigInt((await s.query<{ h: string }>('SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS h')).rows[0]!.h);
  const [local0, remote0] = [await localAt(), await remoteAt()];
  const before = await horizon();
  t.equal(await s.query('SELECT pgrelay.sync_run($1, 100) AS n', ['copy']).then((r) => r.rows[0].n), 0, 'sync_run: nothing to apply');
  t.equal(await runSyncStep(sourcePool, targetPool, sync!, 100), 0, 'daemon step: nothing to apply');
  const afterCalls = await horizon();
  for (const [label, was, now] of [['sync_run', local0, await localAt()], ['daemon step', remote0, await remoteAt()]] as const) {
    const moved = BigInt(now.x) - BigInt(was.x);
    if (now.x === was.x && now.p === was.p) {
      t.ok(before - BigInt(was.x) < 1000n, `${label}: not written, and the horizon was less than 1,000 transactions ahead (${before - BigInt(was.x)})`);
    } else {
      t.ok(moved >= 1000n && afterCalls - BigInt(was.x) >= 1000n, `${label}: written only because the horizon was 1,000 or more transactions ahead (moved ${moved})`);
    }
  }

  // 1,100 more: the next idle call records the skip.
  await noise(s, 1100);
  await settle(source.connectionString);
  const lastNoise = (await s.query<{ x: string; p: string }>(`SELECT xid::text AS x, position::text AS p FROM pgrelay.messages ORDER BY xid DESC, position DESC LIMIT 1`)).rows[0]!;
  t.equal(await s.query('SELECT pgrelay.sync_run($1, 100) AS n', ['copy']).then((r) => r.rows[0].n), 0, 'sync_run: still nothing to apply');
  t.ok(after(await localAt(), lastNoise), 'sync_run moved its checkpoint past the other topic\'s messages');
  t.equal(await runSyncStep(sourcePool, targetPool, sync!, 100), 0, 'daemon step: still nothing to apply');
  t.ok(after(await remoteAt(), lastNoise), "the daemon step moved the target's checkpoint past them");
  t.equal(await applied(), 1, 'the skip counts no applied change');
  t.same(
    (await s.query(`SELECT applied_position::text AS p FROM pgrelay.syncs WHERE name = 'remote'`)).rows[0].p,
    (await remoteAt()).p,
    "the source's copy of the checkpoint follows (retention and lag)",
  );

  // Changes after the skip still arrive, in both syncs.
  await s.query(`UPDATE public.users SET email = 'after-skip@x.test' WHERE id = 1`);
  await settle(source.connectionString);
  await runToEnd(s, 'copy');
  t.equal(await runSyncStep(sourcePool, targetPool, sync!, 100), 1, 'the daemon step applies the change after the skip');
  t.same(
    await snapshot(d, 'SELECT id, username, email FROM public.user_copy'),
    await snapshot(s, 'SELECT id, username, email FROM public.users'),
    'the cross-database target equals the source',
  );
  t.same(
    await snapshot(s, 'SELECT id, username, email FROM public.user_copy'),
    await snapshot(s, 'SELECT id, username, email FROM public.users'),
    'the same-database target equals the source',
  );
});
