// The smallest useful pieces of `pg` for tests: one connection per call, always closed.
import pg from 'pg';
import type { Test } from 'tap';

export async function withClient<T>(connectionString: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({
    connectionString,
    application_name: 'pgrelay-test-harness',
    connectionTimeoutMillis: 15_000,
  });
  client.on('error', () => {}); // a dropped connection surfaces as a failed query instead
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * A connection of its own for a test, named `name` in pg_stat_activity, with a statement timeout
 * so a stuck statement fails the test instead of hanging it; closed when t ends.
 */
export async function connect(t: Test, connectionString: string, name: string, statementTimeout = '30s'): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: name, connectionTimeoutMillis: 15_000 });
  client.on('error', () => {}); // a dropped connection surfaces as a failed query instead
  await client.connect();
  await client.query(`SET statement_timeout = '${statementTimeout}'`);
  t.teardown(() => client.end().catch(() => {}));
  return client;
}

/** Run one statement on a new connection and return its rows. */
export async function query<R extends pg.QueryResultRow = Record<string, unknown>>(
  connectionString: string,
  text: string,
  params: unknown[] = [],
): Promise<R[]> {
  return withClient(connectionString, async (client) => (await client.query<R>(text, params)).rows);
}

/** The same server URL (credentials, host, options) pointed at another database. */
export function databaseUrl(serverUrl: string, database: string): string {
  const url = new URL(serverUrl);
  url.pathname = `/${encodeURIComponent(database)}`;
  return url.toString();
}

export const quoteIdent = (name: string): string => `"${name.replace(/"/g, '""')}"`;
