// `pgrelay dead-letters list|retry|discard`, run as the built CLI against real dead letters made
// through the pull API; bad input gets a stable SQLSTATE and a non-zero exit, changing nothing.
import t from 'tap';
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freshDatabase } from './helpers/db.ts';
import { connect } from './fixtures/daemon.ts';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'bin', 'pgrelay.js');

type Run = { code: number; stdout: string; stderr: string };

t.test('dead-letters list, retry and discard', async (t) => {
  const db = await freshDatabase(t);
  const cli = (...args: string[]): Promise<Run> =>
    new Promise((resolve) => {
      execFile(process.execPath, [CLI, ...args, '--database-url', db.connectionString], { timeout: 90_000 }, (error, stdout, stderr) => {
        resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
      });
    });
  const sql = await connect(db.connectionString, 'test-admin');
  t.teardown(() => sql.end());
  const count = async (): Promise<number> => Number((await sql.query(`SELECT count(*)::int AS n FROM pgrelay.dead_letters`)).rows[0].n);

  // Three dead letters: a consumer fails each message once, with max_attempts 1.
  await sql.query(`SELECT pgrelay.subscribe('dl', '{orders}', '{"type":"consumer"}', '{"max_attempts":1}')`);
  await sql.query(`SELECT pgrelay.subscribe('other', '{orders}', '{"type":"consumer"}')`);
  for (const key of ['a', 'b', 'c']) {
    await sql.query(`SELECT pgrelay.publish('orders', $1, 'order.placed', $2::jsonb)`, [key, JSON.stringify({ key })]);
  }
  // Another session's open transaction (the server is shared) may hold the read horizon a moment.
  const fetchSome = async <R extends Record<string, unknown>>(columns: string): Promise<R[]> => {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const { rows } = await sql.query<R>(`SELECT ${columns} FROM pgrelay.fetch_batch('dl', 'test-worker', 10)`);
      if (rows.length > 0 || Date.now() > deadline) {
        t.comment(`fetch waited ${20_000 - (deadline - Date.now())} ms`);
        return rows;
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  const batch = await fetchSome<{ partition_index: number; lease_token: string; position: string; key: string }>(
    'partition_index, lease_token::text, position::text, key',
  );
  t.equal(batch.length, 3);
  const positions = batch.map((row) => row.position);
  await sql.query(`SELECT pgrelay.complete_batch('dl', $1, $2::bigint, '{}', $3::bigint[], $4::text[])`, [
    batch[0]!.partition_index,
    batch[0]!.lease_token,
    positions,
    batch.map((row) => `boom ${row.key}`),
  ]);
  t.equal(await count(), 3, 'three dead letters');

  const [listed, listedAll, listedOther] = await Promise.all([
    cli('dead-letters', 'list', 'dl'),
    cli('dead-letters', 'list'),
    cli('dead-letters', 'list', 'other'),
  ]);
  t.equal(listed.code, 0, listed.stderr);
  const letters = JSON.parse(listed.stdout) as Array<{ subscription: string; position: string; key: string; attempts: number; last_error: string; data: unknown }>;
  t.same(
    letters.map((l) => [l.subscription, l.position, l.key, l.attempts, l.last_error]),
    batch.map((row) => ['dl', row.position, row.key, 1, `boom ${row.key}`]),
    'list shows each with its attempts and last error',
  );
  t.same(letters[0]?.data, { key: 'a' });
  t.equal((JSON.parse(listedAll.stdout) as unknown[]).length, 3, 'list without a name: every subscription');
  t.same(JSON.parse(listedOther.stdout), [], 'another subscription has none');

  const retried = await cli('dead-letters', 'retry', 'dl', positions[0]!);
  t.equal(retried.code, 0, retried.stderr);
  t.same(JSON.parse(retried.stdout), { retried: 1 });
  t.equal(await count(), 2);
  const again = await fetchSome<{ position: string; attempt: number }>('position::text, attempt');
  t.same(again, [{ position: positions[0], attempt: 1 }], 'the retried message is delivered again, attempts counted afresh');

  const discarded = await cli('dead-letters', 'discard', 'dl', positions[1]!);
  t.same(JSON.parse(discarded.stdout), { discarded: 1 });
  t.same(
    (await sql.query<{ position: string }>(`SELECT position::text FROM pgrelay.dead_letters`)).rows.map((r) => r.position),
    [positions[2]],
  );

  // Bad input: a stable SQLSTATE naming the argument, exit 1, nothing changed.
  const cases: Array<[string[], RegExp]> = [
    [['dead-letters', 'retry', 'dl', '999999999'], /argument position .*\(SQLSTATE PR003\)/],
    [['dead-letters', 'discard', 'dl', '999999999'], /argument position .*\(SQLSTATE PR003\)/],
    [['dead-letters', 'retry', 'nosuch'], /argument subscription .*\(SQLSTATE PR003\)/],
    [['dead-letters', 'discard', 'nosuch'], /argument subscription .*\(SQLSTATE PR003\)/],
    [['dead-letters', 'retry', 'dl', 'twelve'], /argument position .*\(SQLSTATE PR001\)/],
    [['dead-letters', 'discard', 'dl', '-3'], /argument position .*\(SQLSTATE PR001\)/],
    [['dead-letters', 'retry'], /usage: pgrelay dead-letters retry SUBSCRIPTION/],
    [['dead-letters', 'frobnicate', 'dl'], /usage: pgrelay dead-letters list\|retry\|discard/],
  ];
  const runs = await Promise.all(cases.map(([args]) => cli(...args)));
  for (const [i, [args, message]] of cases.entries()) {
    t.equal(runs[i]!.code, 1, `${args.join(' ')}: exit 1`);
    t.match(runs[i]!.stderr, message, `${args.join(' ')}: says why`);
  }
  t.equal(await count(), 1, 'bad input changed nothing');

  const all = await cli('dead-letters', 'discard', 'dl');
  t.same(JSON.parse(all.stdout), { discarded: 1 }, 'discard without a position: all of the subscription');
  t.same(JSON.parse((await cli('dead-letters', 'list', 'dl')).stdout), []);
});
