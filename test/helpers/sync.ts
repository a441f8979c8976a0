// What the sync tests share: connections, waiting with deadlines, error expectations, and running
// a same-database sync until it has caught up.
import type { Test } from 'tap';
import { spawn } from 'node:child_process';
import pg from 'pg';
import { query } from './db.ts';
import { connect as connectClient } from './sql.ts';
import { failure, type PgError } from './errors.ts';

export { failure, type PgError };

/** A connection of its own (statements may run 90 s: a sync of a large table), closed when t ends. */
export const connect = (t: Test, connectionString: string, name = 'sync-test'): Promise<pg.Client> => connectClient(t, connectionString, name, '90s');

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/** One statement that must fail with a pgrelay SQLSTATE naming the argument (never XX000). */
export async function expectError(
  t: Test,
  client: pg.Client,
  label: string,
  text: string,
  params: unknown[],
  expected: { code: string; fn: string; argument: string },
): Promise<void> {
  const error = await failure(() => client.query(text, params));
  if (error === undefined) {
    t.fail(`${label}: succeeded, expected ${expected.code} naming ${expected.argument}`);
    return;
  }
  t.not(error.code, 'XX000', `${label}: not an internal error`);
  t.equal(error.code, expected.code, `${label}: SQLSTATE ${expected.code} (got ${error.code}: ${error.message})`);
  t.equal(error.column, expected.argument, `${label}: the COLUMN field names ${expected.argument}`);
  t.ok(
    error.message.startsWith(`${expected.fn}: argument ${expected.argument} `),
    `${label}: the message names the function and argument: ${JSON.stringify(error.message.slice(0, 160))}`,
  );
}

/** Waits until every transaction that was running has ended (so a gapless read sees everything committed). */
export async function settle(connectionString: string): Promise<void> {
  const [row] = await query<{ w: string }>(connectionString, 'SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS w');
  await waitFor('the horizon to pass', async () =>
    (await query<{ ok: boolean }>(connectionString, 'SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::xid8 AS ok', [row!.w]))[0]!.ok,
  );
}

/** Runs a same-database sync until it applies nothing more; returns the row changes applied. */
export async function runToEnd(client: pg.Client, name: string, maxMessages = 1000): Promise<number> {
  let total = 0;
  const deadline = Date.now() + 30_000;
  for (;;) {
    const { rows } = await client.query<{ n: number }>('SELECT pgrelay.sync_run($1, $2) AS n', [name, maxMessages]);
    if (rows[0]!.n === 0) {
      // 0 also means "a batch of only stale changes": stop only when the checkpoint has caught up.
      const lag = await client.query<{ pending: string }>('SELECT pending::text FROM pgrelay.sync_lag($1)', [name]);
      if (lag.rows[0]!.pending === '0') return total;
      if (Date.now() > deadline) throw new Error(`sync ${name} did not catch up: ${lag.rows[0]!.pending} pending`);
      await sleep(20);
    }
    total += rows[0]!.n;
  }
}

/** Rows of a query as sorted JSON lines, for exact comparisons with a readable diff. */
export async function snapshot(client: pg.Client, text: string): Promise<string[]> {
  const { rows } = await client.query(text);
  return rows.map((row) => JSON.stringify(row)).sort();
}

const CLI = new URL('../../dist/bin/pgrelay.js', import.meta.url).pathname;

/** Runs the built `pgrelay` CLI (npm run build first) and collects its output and exit code. */
export function cli(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}
