// What the CDC tests share: connections, the captured messages of a topic, and the errors
// pgrelay must raise (a PR SQLSTATE naming the argument, never an internal error).
import type { Test } from 'tap';
import pg from 'pg';
import { query } from './sql.ts';

export type CdcRow = {
  position: string;
  xid: string;
  key: string | null;
  type: string;
  data: { before: Record<string, unknown> | null; after: Record<string, unknown> | null; changed: string[] | null };
  metadata: Record<string, unknown>;
};

export async function connect(t: Test, connectionString: string, applicationName = 'cdc-test'): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: applicationName, connectionTimeoutMillis: 15_000 });
  client.on('error', () => {});
  await client.connect();
  await client.query(`SET statement_timeout = '30s'`);
  t.teardown(() => client.end().catch(() => {}));
  return client;
}

/** Messages of one topic in position order. */
export async function captured(connectionString: string, topic: string): Promise<CdcRow[]> {
  return query<CdcRow>(
    connectionString,
    `SELECT m.position::text AS position, m.xid::text AS xid, m.key, m.type, m.data, m.metadata
     FROM pgrelay.messages m WHERE m.topic = $1 ORDER BY m.position`,
    [topic],
  );
}

/** (type, key, after) triples: what most assertions compare. */
export const changes = (rows: readonly CdcRow[]) => rows.map((r) => ({ type: r.type, key: r.key, after: r.data.after, before: r.data.before }));

export async function failure(run: () => Promise<unknown>): Promise<(Error & { code?: string; column?: string }) | undefined> {
  try {
    await run();
  } catch (error) {
    return error as Error & { code?: string; column?: string };
  }
  return undefined;
}

export type Expected = { code: string; fn?: string; argument?: string; message?: RegExp };

/** One statement that must fail with the given SQLSTATE (and, for pgrelay's codes, naming the argument). */
export async function expectError(t: Test, connectionString: string, label: string, text: string, params: unknown[], expected: Expected): Promise<void> {
  const error = await failure(() => query(connectionString, text, params));
  if (error === undefined) {
    t.fail(`${label}: succeeded, expected ${expected.code}`);
    return;
  }
  t.not(error.code, 'XX000', `${label}: not an internal error`);
  t.equal(error.code, expected.code, `${label}: SQLSTATE ${expected.code} (got ${error.code}: ${error.message})`);
  if (expected.argument !== undefined) {
    t.equal(error.column, expected.argument, `${label}: the COLUMN field names ${expected.argument}`);
    t.ok(
      error.message.startsWith(`${expected.fn}: argument ${expected.argument} `),
      `${label}: the message names the function and argument: ${JSON.stringify(error.message.slice(0, 200))}`,
    );
  }
  if (expected.message !== undefined) t.match(error.message, expected.message, `${label}: message says why`);
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** The capture triggers (name on table) of the database, sorted. */
export async function captureTriggers(connectionString: string): Promise<string[]> {
  const rows = await query<{ t: string }>(
    connectionString,
    `SELECT g.tgname || ' on ' || g.tgrelid::regclass::text AS t FROM pg_trigger g
     WHERE NOT g.tgisinternal AND g.tgname LIKE 'pgrelay\\_cdc\\_%'`,
  );
  return rows.map((r) => r.t).sort();
}

export async function captureFunctions(connectionString: string): Promise<string[]> {
  const rows = await query<{ f: string }>(
    connectionString,
    `SELECT p.proname AS f FROM pg_proc p WHERE p.pronamespace = 'pgrelay'::regnamespace AND p.proname LIKE '\\_cdc\\_capture\\_%' ORDER BY 1`,
  );
  return rows.map((r) => r.f);
}
