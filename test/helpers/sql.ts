// The smallest useful pieces of `pg` for tests: one connection per call, always closed.
import pg from 'pg';

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
