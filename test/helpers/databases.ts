// Naming, creating and dropping the databases a test run owns.
import { randomBytes } from 'node:crypto';
import { quoteIdent, withClient } from './sql.ts';

const PREFIX = 'pgrelay_test_';

/** Unique per run (time + randomness), so runs sharing one server never collide. */
export const newRunId = (): string => `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
export const templateName = (runId: string): string => `${PREFIX}${runId}_tpl`;

let counter = 0;
/** A database name unique within the run: the run, this process, and a counter. */
export const nextDatabaseName = (runId: string): string => `${PREFIX}${runId}_${process.pid}_${++counter}`;

/** CREATE DATABASE, cloned from `template` (template0 gives an empty database). */
export async function createDatabase(adminUrl: string, name: string, template: string): Promise<void> {
  await withClient(adminUrl, (client) =>
    client.query(`CREATE DATABASE ${quoteIdent(name)} TEMPLATE ${quoteIdent(template)}`),
  );
}

/** Turn a freshly migrated database into a template: cloneable by CREATEDB roles, no connections. */
export async function sealTemplate(adminUrl: string, name: string): Promise<void> {
  await withClient(adminUrl, (client) =>
    client.query(`ALTER DATABASE ${quoteIdent(name)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false`),
  );
}

/** DROP DATABASE IF EXISTS, ending its connections (WITH (FORCE) on PostgreSQL 13+). */
export async function dropDatabase(adminUrl: string, name: string): Promise<void> {
  await withClient(adminUrl, async (client) => {
    const version = await client.query<{ v: number }>(`SELECT current_setting('server_version_num')::int AS v`);
    const force = (version.rows[0]?.v ?? 0) >= 130000;
    const exists = await client.query(`SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate`, [name]);
    if (exists.rowCount) await client.query(`ALTER DATABASE ${quoteIdent(name)} WITH IS_TEMPLATE false`);
    if (!force) {
      await client.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, [name]);
    }
    await client.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)}${force ? ' WITH (FORCE)' : ''}`);
  });
}

/** Drop every database of one run (its template and anything a crashed test file left). */
export async function dropRunDatabases(adminUrl: string, runId: string): Promise<string[]> {
  const rows = await withClient(adminUrl, (client) =>
    client.query<{ datname: string }>(
      `SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname`,
      [`${PREFIX}${runId}_`],
    ),
  );
  const names = rows.rows.map((row) => row.datname);
  for (const name of names) await dropDatabase(adminUrl, name);
  return names;
}
