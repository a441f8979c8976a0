// What test files use: a fresh database per test file (or per test), and a way to query it.
import tap, { type Test } from 'tap';
import { createDatabase, dropDatabase, nextDatabaseName } from './databases.ts';
import { currentRunState } from './run-state.ts';
import { databaseUrl } from './sql.ts';

export { connect, query, withClient } from './sql.ts';

export type FreshDatabase = { connectionString: string; name: string };

/** URL of the server's maintenance database, as a role that may create databases. */
export function adminConnectionString(): string {
  return currentRunState().adminUrl;
}

/** True when this run started its own embedded PostgreSQL (DATABASE_URL unset). */
export function usingEmbeddedServer(): boolean {
  return currentRunState().embedded !== null;
}

/**
 * A new database of its own, dropped (WITH (FORCE)) when `t` ends: a clone of the run's migrated
 * template, or with `{ migrated: false }` an empty one (from template0) for migration tests.
 */
export async function freshDatabase(t: Test = tap, options: { migrated?: boolean } = {}): Promise<FreshDatabase> {
  const state = currentRunState();
  const name = nextDatabaseName(state.runId);
  await createDatabase(state.adminUrl, name, options.migrated === false ? 'template0' : state.template);
  t.teardown(() => dropDatabase(state.adminUrl, name));
  return { name, connectionString: databaseUrl(state.adminUrl, name) };
}
