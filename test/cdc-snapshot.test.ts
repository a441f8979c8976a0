// CDC snapshots (backfill): existing rows come out as 'snapshot' messages in key order, in chunks
// of one short transaction each, resumable after an interruption or a kill, and interleaved
// correctly with live changes: a consumer that applies the log ends with the table exactly.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createClient, type Message, type PgrelayClient, START } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';
import { captured, connect, sleep, waitFor } from './helpers/cdc.ts';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'bin', 'pgrelay.js');

async function newClient(t: Test, connectionString: string): Promise<PgrelayClient> {
  const client = await createClient({ connectionString, maximumPoolSize: 3 });
  t.teardown(() => client.end());
  return client;
}

async function lockWaiter(connectionString: string, applicationName: string): Promise<number | undefined> {
  const [row] = await query<{ pid: number }>(
    connectionString,
    `SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock' AND datname = current_database()`,
    [applicationName],
  );
  return row?.pid;
}

/** A consumer: applies CDC messages to a Map keyed by message key, as a replica would. */
function applyTo(state: Map<string, unknown>, messages: readonly Message[]): void {
  for (const m of messages) {
    const data = m.data as { before: unknown; after: unknown };
    if (m.type === 'truncate') state.clear();
    else if (m.type === 'delete') state.delete(m.key!);
    else state.set(m.key!, data.after);
  }
}

/**
 * Reads a topic from the start until the cursor passes its last message, applying every batch.
 * An empty batch only means nothing is safe to read yet (a transaction anywhere on the server
 * holds the horizon), so it waits, with a deadline.
 */
async function consumeAll(client: PgrelayClient, connectionString: string, topic: string): Promise<Map<string, unknown>> {
  const [{ last }] = (await query<{ last: string }>(connectionString, `SELECT max(position)::text AS last FROM pgrelay.messages WHERE topic = $1`, [
    topic,
  ])) as [{ last: string }];
  const state = new Map<string, unknown>();
  let cursor = START;
  let seen = 0n;
  await waitFor(`the reader to reach position ${last}`, async () => {
    const batch = await client.read(cursor, { maxMessages: 1000, topics: [topic] });
    applyTo(state, batch.messages);
    cursor = batch.cursor;
    for (const m of batch.messages) if (BigInt(m.position) > seen) seen = BigInt(m.position);
    return seen >= BigInt(last);
  });
  return state;
}

async function tableState(connectionString: string, table: string): Promise<Map<string, unknown>> {
  const rows = await query<{ k: string; row: unknown }>(connectionString, `SELECT id::text AS k, to_jsonb(t.*) AS row FROM ${table} t`);
  return new Map(rows.map((r) => [r.k, r.row]));
}

t.test('snapshot: existing rows in key order, in chunks, resumable, then done', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);
  await query(db.connectionString, `CREATE TABLE public.regions (code text, n int, label text, secret text, PRIMARY KEY (code, n))`);
  await query(db.connectionString, `INSERT INTO public.regions SELECT chr(100 - g % 3), g, 'l' || g, 's' || g FROM generate_series(1, 23) g`);
  await client.cdc.enable('public.regions', { exclude: ['secret'] });

  t.same(await client.cdc.snapshotStep('public.regions', 10), { emitted: 10, total: 23, done: false }, 'first chunk');
  t.same(await client.cdc.snapshotStep('public.regions', 10), { emitted: 20, total: 23, done: false }, 'second chunk resumes after the first');
  await query(db.connectionString, `UPDATE public.regions SET label = 'changed' WHERE (code, n) = ('d', 21)`);
  t.same(await client.cdc.snapshotStep('public.regions', 10), { emitted: 23, total: 23, done: true }, 'last chunk: done');
  t.same(await client.cdc.snapshotStep('public.regions', 10), { emitted: 23, total: 23, done: true }, 'done stays done, emits nothing');

  const rows = await captured(db.connectionString, 'cdc.public.regions');
  const snapshots = rows.filter((r) => r.type === 'snapshot');
  const expected = await query<{ k: string }>(db.connectionString, `SELECT jsonb_build_array(code, n)::text AS k FROM public.regions ORDER BY code, n`);
  t.same(snapshots.map((r) => r.key), expected.map((r) => r.k), 'every row once, in primary-key order, keyed like live changes');
  t.ok(snapshots.every((r) => r.data.before === null && r.data.changed === null && !('secret' in r.data.after!)), 'after image only, excluded column left out');
  t.equal(snapshots.find((r) => r.key === '["d", 21]')!.data.after!.label, 'changed', 'a row changed before its chunk is emitted as it is now');
  t.equal(snapshots[0]!.metadata.snapshot, true, 'metadata.snapshot = true');
  t.equal(snapshots[0]!.metadata.table, 'regions', 'metadata.table');

  await client.cdc.snapshotReset('public.regions');
  const again = await client.cdc.snapshot('public.regions', { chunkSize: 100 });
  t.same(again, { emitted: 23, total: 23, done: true }, 'after a reset the backfill starts over');
  t.equal((await captured(db.connectionString, 'cdc.public.regions')).filter((r) => r.type === 'snapshot').length, 46, 'all rows emitted a second time');
});

t.test('a chunk and a concurrent update never cross: each waits for the other', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, `CREATE TABLE public.acct (id int PRIMARY KEY, balance int NOT NULL)`);
  await query(db.connectionString, `INSERT INTO public.acct SELECT g, 100 FROM generate_series(1, 10) g`);
  await query(db.connectionString, `SELECT pgrelay.cdc_enable('public.acct')`);

  // 1. An update in flight when the chunk reads the row: the chunk waits and emits its result.
  const writer = await connect(t, db.connectionString, 'acct-writer');
  const snapper = await connect(t, db.connectionString, 'acct-snapshot');
  await writer.query('BEGIN');
  await writer.query('UPDATE public.acct SET balance = 150 WHERE id = 3');
  const chunk = snapper.query(`SELECT * FROM pgrelay.cdc_snapshot('public.acct', 5)`);
  await waitFor('the chunk to wait for the row lock', async () => (await lockWaiter(db.connectionString, 'acct-snapshot')) !== undefined);
  await writer.query('COMMIT');
  await chunk;
  let rows = await captured(db.connectionString, 'cdc.public.acct');
  t.same(
    rows.filter((r) => r.key === '3').map((r) => [r.type, r.data.after!.balance]),
    [['update', 150], ['snapshot', 150]],
    'update first, then the snapshot of its result',
  );

  // 2. A chunk in flight (rows locked FOR SHARE) when an update comes: the update waits.
  await snapper.query('BEGIN');
  await snapper.query(`SELECT * FROM pgrelay.cdc_snapshot('public.acct', 5)`);
  const update = writer.query('UPDATE public.acct SET balance = 170 WHERE id = 8');
  await waitFor('the update to wait for the chunk', async () => (await lockWaiter(db.connectionString, 'acct-writer')) !== undefined);
  await snapper.query('COMMIT');
  await update;
  rows = await captured(db.connectionString, 'cdc.public.acct');
  t.same(
    rows.filter((r) => r.key === '8').map((r) => [r.type, r.data.after!.balance]),
    [['snapshot', 100], ['update', 170]],
    'the snapshot of the old value first, then the update',
  );
  const state = await consumeAll(await newClient(t, db.connectionString), db.connectionString, 'cdc.public.acct');
  t.same(state, await tableState(db.connectionString, 'public.acct'), 'applying the log gives the table');
});

t.test('a snapshot racing concurrent writers: a consumer applying the log rebuilds the table exactly', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);
  await query(db.connectionString, `CREATE TABLE public.wallets (id int PRIMARY KEY, owner text NOT NULL, balance int NOT NULL, touched int NOT NULL DEFAULT 0)`);
  await query(db.connectionString, `INSERT INTO public.wallets SELECT g, 'owner' || g, 1000, 0 FROM generate_series(1, 3000) g`);
  await client.cdc.enable('public.wallets');

  let snapshotDone = false;
  let nextId = 10_000;
  const writerCounts = { commits: 0, rollbacks: 0 };
  const writer = async (n: number) => {
    const c = await connect(t, db.connectionString, `wallet-writer-${n}`);
    // mulberry32: a small seeded PRNG, so a failing run can be reasoned about.
    let seed = n * 7919;
    const random = (max: number) => {
      seed = (seed + 0x6d2b79f5) | 0;
      let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
      return ((x ^ (x >>> 14)) >>> 0) % max;
    };
    while (!snapshotDone) {
      const id = 1 + random(3200);
      const op = random(10);
      try {
        await c.query('BEGIN');
        if (op < 5) await c.query('UPDATE public.wallets SET balance = balance + 1, touched = touched + 1 WHERE id = $1', [id]);
        else if (op < 6) await c.query('UPDATE public.wallets SET balance = balance - 1 WHERE id BETWEEN $1 AND $1 + 20', [id]);
        else if (op < 7) await c.query('DELETE FROM public.wallets WHERE id = $1', [id]);
        else if (op < 8) await c.query(`INSERT INTO public.wallets VALUES ($1, 'new', 1) ON CONFLICT (id) DO UPDATE SET owner = 'upserted'`, [nextId++ % 2 === 0 ? id : nextId]);
        else if (op < 9) await c.query('UPDATE public.wallets SET id = $2 WHERE id = $1', [id, 20_000 + n * 10_000 + random(10_000)]);
        else await c.query('UPDATE public.wallets SET owner = owner WHERE id = $1', [id]);
        if (random(8) === 0) {
          await c.query('ROLLBACK');
          writerCounts.rollbacks += 1;
        } else {
          await c.query('COMMIT');
          writerCounts.commits += 1;
        }
      } catch (error) {
        await c.query('ROLLBACK');
        const code = (error as { code?: string }).code;
        if (code !== '23505' && code !== '40P01') throw error;
      }
    }
  };

  const state = new Map<string, unknown>();
  let cursor = START;
  let seen = 0n;
  let consuming = true;
  const reader = await newClient(t, db.connectionString);
  const consumer = (async () => {
    while (consuming) {
      const batch = await reader.read(cursor, { maxMessages: 500, topics: ['cdc.public.wallets'] });
      applyTo(state, batch.messages);
      cursor = batch.cursor;
      for (const m of batch.messages) if (BigInt(m.position) > seen) seen = BigInt(m.position);
      if (batch.messages.length === 0) await sleep(10);
    }
  })();

  const writers = [1, 2, 3, 4].map(writer);
  await sleep(50);
  const result = await client.cdc.snapshot('public.wallets', { chunkSize: 40 });
  snapshotDone = true;
  await Promise.all(writers);
  t.ok(result.done, `snapshot done: ${result.emitted} rows, ${writerCounts.commits} writer commits, ${writerCounts.rollbacks} rollbacks`);

  const [{ last }] = (await query<{ last: string }>(db.connectionString, `SELECT max(position)::text AS last FROM pgrelay.messages`)) as [{ last: string }];
  await waitFor('the consumer to reach the end of the log', () => seen >= BigInt(last), 45_000);
  consuming = false;
  await consumer;

  const table = await tableState(db.connectionString, 'public.wallets');
  t.equal(state.size, table.size, `same number of rows (${table.size})`);
  t.same(state, table, 'the consumer rebuilt the table exactly');

  const rows = await captured(db.connectionString, 'cdc.public.wallets');
  const snapshotPositions = rows.filter((r) => r.type === 'snapshot').map((r) => BigInt(r.position));
  const first = snapshotPositions[0]!;
  const lastSnapshot = snapshotPositions[snapshotPositions.length - 1]!;
  const live = rows.filter((r) => r.type !== 'snapshot' && BigInt(r.position) > first && BigInt(r.position) < lastSnapshot);
  t.ok(live.length > 20, `live changes interleaved with the snapshot (${live.length} between its first and last message)`);
  const snapshotKeys = new Set(rows.filter((r) => r.type === 'snapshot').map((r) => r.key));
  t.ok(live.filter((r) => snapshotKeys.has(r.key)).length > 0, 'some keys have both a snapshot and a live change during it');
  t.ok(rows.some((r) => r.type === 'delete') && rows.some((r) => r.type === 'insert'), 'deletes, inserts and key changes happened during the snapshot');
});

type Run = { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string };

function runCli(args: string[], connectionString: string) {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, DATABASE_URL: connectionString },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const done = new Promise<Run>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, done, stderr: () => stderr };
}

t.test('pgrelay cdc snapshot: progress bar, SIGINT stops after a chunk, SIGKILL loses nothing, a rerun resumes', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, `CREATE TABLE public.big (id int PRIMARY KEY, v text)`);
  await query(db.connectionString, `INSERT INTO public.big SELECT g, md5(g::text) FROM generate_series(1, 4000) g`);
  const enable = await runCli(['cdc', 'enable', 'public.big', '--options', '{"mask": ["v"]}'], db.connectionString).done;
  t.equal(enable.code, 0, `cdc enable exits 0 ${enable.stderr}`);
  t.match(JSON.parse(enable.stdout), { table_name: 'public.big', mask: ['v'] }, 'cdc enable prints the capture');
  const progress = async () =>
    (await query<{ emitted: string; done: boolean }>(db.connectionString, `SELECT emitted::text, finished_at IS NOT NULL AS done FROM pgrelay.cdc_snapshots`))[0];

  // A row lock held by a test transaction stops the snapshot at a known place.
  const blocker = await connect(t, db.connectionString, 'blocker');
  await blocker.query('BEGIN');
  await blocker.query('SELECT * FROM public.big WHERE id = 1000 FOR UPDATE');
  const first = runCli(['cdc', 'snapshot', 'public.big', '--chunk-size', '100'], db.connectionString);
  await waitFor('the CLI to block on row 1000', async () => (await lockWaiter(db.connectionString, 'pgrelay-cli')) !== undefined);
  t.equal((await progress())!.emitted, '900', 'nine chunks committed before the blocked one');
  first.child.kill('SIGINT');
  await sleep(100);
  await blocker.query('COMMIT');
  const interrupted = await first.done;
  t.equal(interrupted.code, 130, 'SIGINT: exit code 130 after the chunk in flight');
  t.match(interrupted.stderr, /snapshot public\.big \[#+-*\] \d+% \d+\/4000 rows/, 'a progress bar was shown');
  t.match(interrupted.stderr, /interrupted after 1000 rows: run it again to resume/, 'it says how to resume');
  t.equal((await progress())!.emitted, '1000', 'the chunk in flight committed, no more');

  await blocker.query('BEGIN');
  await blocker.query('SELECT * FROM public.big WHERE id = 2550 FOR UPDATE');
  const second = runCli(['cdc', 'snapshot', 'public.big', '--chunk-size', '100'], db.connectionString);
  let orphan: number | undefined;
  await waitFor('the rerun to block on row 2550', async () => (orphan = await lockWaiter(db.connectionString, 'pgrelay-cli')) !== undefined);
  t.equal((await progress())!.emitted, '2500', 'the rerun resumed at row 1001');
  second.child.kill('SIGKILL');
  const killed = await second.done;
  t.equal(killed.signal, 'SIGKILL', 'killed');
  await query(db.connectionString, 'SELECT pg_terminate_backend($1)', [orphan]);
  await waitFor('the killed CLI backend to go', async () => (await lockWaiter(db.connectionString, 'pgrelay-cli')) === undefined);
  await blocker.query('COMMIT');
  t.equal((await progress())!.emitted, '2500', 'the chunk in flight at the kill left nothing');

  const third = await runCli(['cdc', 'snapshot', 'public.big', '--chunk-size', '100'], db.connectionString).done;
  t.equal(third.code, 0, `the third run finishes ${third.stderr.slice(-300)}`);
  t.match(third.stderr, /snapshot of public\.big done: 4000 rows emitted/, 'and says so');
  t.same(JSON.parse(third.stdout), { table: 'public.big', emitted: 4000, total: 4000, done: true }, 'final progress on stdout');

  const snapshots = (await captured(db.connectionString, 'cdc.public.big')).filter((r) => r.type === 'snapshot');
  t.equal(snapshots.length, 4000, 'exactly one snapshot message per row across the three runs');
  t.same(snapshots.map((r) => Number(r.key)), Array.from({ length: 4000 }, (_, i) => i + 1), 'in key order, no gap, no duplicate');
  t.ok(snapshots.every((r) => /^[0-9a-f]{64}$/.test(String(r.data.after!.v))), 'masked column hashed in snapshots too');

  const list = await runCli(['cdc', 'list'], db.connectionString).done;
  t.match(JSON.parse(list.stdout), [{ table_name: 'public.big', snapshot_emitted: 4000, snapshot_done: true }], 'cdc list shows the finished backfill');
  const disable = await runCli(['cdc', 'disable', 'public.big'], db.connectionString).done;
  t.equal(disable.code, 0, 'cdc disable exits 0');
  const again = await runCli(['cdc', 'disable', 'public.big'], db.connectionString).done;
  t.equal(again.code, 1, 'disabling again fails');
  t.match(again.stderr, /is not captured \(SQLSTATE PR003\)/, 'with the SQLSTATE');
});

t.test('a chunk waiting on a row whose key a concurrent UPDATE changes neither jumps ahead nor ends the backfill early', async (t) => {
  const db = await freshDatabase(t);
  const admin = await connect(t, db.connectionString, 'snapshot-admin');
  const holder = await connect(t, db.connectionString, 'key-mover');
  const snapshotter = await connect(t, db.connectionString, 'snapshotter');
  await admin.query(`CREATE TABLE public.moving (id int PRIMARY KEY, v text NOT NULL)`);
  await admin.query(`INSERT INTO public.moving SELECT g, 'v' || g FROM generate_series(1, 20) g`);
  await admin.query(`SELECT pgrelay.cdc_enable('public.moving')`);
  const step = async () =>
    (await snapshotter.query<{ emitted: string; total: string; done: boolean }>(`SELECT * FROM pgrelay.cdc_snapshot('public.moving', 4)`)).rows[0]!;
  t.same(await step(), { emitted: '4', total: '20', done: false }, 'first chunk: keys 1-4');

  // Key 6 moves far ahead (to 1000) while the second chunk (keys 5-8) waits for its row lock.
  await holder.query('BEGIN');
  await holder.query(`UPDATE public.moving SET id = 1000 WHERE id = 6`);
  const waiting = step();
  await waitFor('the chunk to wait for the moved row', async () => (await lockWaiter(db.connectionString, 'snapshotter')) !== undefined, 10_000);
  await holder.query('COMMIT');
  const second = await waiting;
  t.equal(second.done, false, 'the chunk with the moved row does not end the backfill');
  const [{ last }] = (await admin.query<{ last: string }>(`SELECT last_key::text AS last FROM pgrelay.cdc_snapshots`)).rows as [{ last: string }];
  t.equal(last, '["8"]', 'and its last key is the end of its range (8), not the moved row\'s new key (1000)');

  let rounds = 0;
  while (!(await step()).done) if (++rounds > 20) throw new Error('backfill did not finish');
  const rows = await captured(db.connectionString, 'cdc.public.moving');
  const snapshotKeys = new Set(rows.filter((r) => r.type === 'snapshot').map((r) => r.key));
  const tableKeys = (await admin.query<{ id: string }>(`SELECT id::text AS id FROM public.moving ORDER BY id`)).rows.map((r) => r.id);
  t.same(tableKeys.filter((k) => !snapshotKeys.has(k)), [], 'every row of the table got a snapshot message (1000 included)');
  t.notOk(snapshotKeys.has('6'), 'the moved row was not emitted under its old key');

  // A consumer applying the whole log in order ends with the table.
  const client = await newClient(t, db.connectionString);
  t.same(await consumeAll(client, db.connectionString, 'cdc.public.moving'), await tableState(db.connectionString, 'public.moving'), 'applying the log gives the table');
});
