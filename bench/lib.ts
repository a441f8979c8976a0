// What every benchmark suite shares: a PostgreSQL server (DATABASE_URL's, or an embedded
// PostgreSQL 18 started for the run), fresh databases on it, timing, and the results file.
// A suite is a module bench/<name>.ts whose default export is a BenchSuite; bench/run.ts runs them.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpus } from 'node:os';
import pg from 'pg';
import { migrate } from '../client/migrate.js';
import { startEmbeddedPostgres } from '../daemon/embedded.js';

export type BenchServer = {
  /** URL of the server's maintenance database, as a role that may create databases. */
  readonly adminUrl: string;
  /** 'embedded PostgreSQL 18' or the server_version of DATABASE_URL's server. */
  readonly description: string;
  /** A new empty database (an older one of that name is dropped first); pgrelay installed unless { migrated: false }. */
  database(name: string, options?: { migrated?: boolean }): Promise<string>;
  /**
   * Drops the named databases (earlier parts' leftovers), runs a CHECKPOINT and waits (up to 60 s)
   * until no autovacuum worker runs: a latency measurement then does not share the two cores with
   * the clean-up of the parts before it.
   */
  settle(dropDatabases?: readonly string[]): Promise<void>;
  stop(): Promise<void>;
};

export type BenchContext = {
  server: BenchServer;
  /** From --quick: smaller sizes for a smoke run (CI, development). */
  quick: boolean;
  log(line: string): void;
};

export type BenchResult = Record<string, unknown>;
export type BenchSuite = { name: string; run(context: BenchContext): Promise<BenchResult> };

export const quoteIdent = (name: string): string => `"${name.replace(/"/g, '""')}"`;

export function databaseUrl(serverUrl: string, database: string): string {
  const url = new URL(serverUrl);
  url.pathname = `/${encodeURIComponent(database)}`;
  return url.toString();
}

export async function withPg<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export async function startBenchServer(log: (line: string) => void): Promise<BenchServer> {
  const external = process.env.DATABASE_URL;
  let adminUrl: string;
  let stop: () => Promise<void> = async () => {};
  let description: string;
  if (external !== undefined && external !== '') {
    adminUrl = external;
    description = await withPg(adminUrl, async (c) => `PostgreSQL ${(await c.query('SHOW server_version')).rows[0].server_version} (DATABASE_URL)`);
  } else {
    log('starting an embedded PostgreSQL 18 for the benchmarks');
    const embedded = await startEmbeddedPostgres(log);
    adminUrl = embedded.connectionString;
    stop = embedded.stop;
    description = await withPg(adminUrl, async (c) => `embedded PostgreSQL ${(await c.query('SHOW server_version')).rows[0].server_version}`);
  }
  return {
    adminUrl,
    description,
    async database(name, options = {}) {
      await withPg(adminUrl, async (c) => {
        await c.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`);
        await c.query(`CREATE DATABASE ${quoteIdent(name)}`);
      });
      const url = databaseUrl(adminUrl, name);
      if (options.migrated !== false) await migrate({ connectionString: url, direction: 'up' });
      return url;
    },
    async settle(dropDatabases = []) {
      await withPg(adminUrl, async (c) => {
        for (const name of dropDatabases) await c.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`);
        await c.query('CHECKPOINT');
        const deadline = Date.now() + 60_000;
        while (Date.now() < deadline) {
          const { rows } = await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'`);
          if (rows[0]!.n === 0) return;
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
      });
    },
    stop,
  };
}

/** Milliseconds taken by fn, with its result. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = process.hrtime.bigint();
  const value = await fn();
  return { ms: Number(process.hrtime.bigint() - start) / 1e6, value };
}

export const perSecond = (count: number, ms: number): number => Math.round((count * 1000) / ms);
export const ratio = (a: number, b: number): number => Math.round((a / b) * 100) / 100;

export function percentile(sortedMs: readonly number[], p: number): number {
  if (sortedMs.length === 0) return NaN;
  const index = Math.min(sortedMs.length - 1, Math.max(0, Math.ceil((p / 100) * sortedMs.length) - 1));
  return Math.round(sortedMs[index]! * 100) / 100;
}

export const machine = (): Record<string, unknown> => ({
  node: process.version,
  cpus: cpus().length,
  cpu: cpus()[0]?.model ?? 'unknown',
});

/** bench/results/<suite>.json in the source tree (not dist/), with the machine and the date. */
export function writeResults(suite: string, serverDescription: string, result: BenchResult): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const root = here.includes(`${join('dist', 'bench')}`) ? join(here, '..', '..') : join(here, '..');
  const file = join(root, 'bench', 'results', `${suite}.json`);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `${JSON.stringify({ suite, date: new Date().toISOString(), server: serverDescription, machine: machine(), ...result }, null, 2)}\n`);
  return file;
}
