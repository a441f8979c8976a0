import pg from 'pg';
import { runner } from 'node-pg-migrate';
import { functionFiles, migrationFiles, type SqlFile } from './sql-files.js';
import { migrationsDir } from './paths.js';

/** Where node-pg-migrate records applied migrations (outside schema pgrelay, so `down` can drop that). */
export const MIGRATIONS_TABLE = 'pgrelay_migrations';
export const MIGRATIONS_SCHEMA = 'public';
/** Session advisory lock held for the whole install: concurrent `migrate up`s wait, they never race. */
const INSTALL_LOCK = 7_301_000_001;

export type MigrateOptions = {
  connectionString: string;
  direction?: 'up' | 'down';
  log?: (line: string) => void;
};

export type MigrateResult = { direction: 'up' | 'down'; migrations: string[]; functions: number; dropped: string[] };

export type MigrationStatus = {
  applied: string[];
  pending: string[];
  unknown: string[];
  installedVersion: string | null;
};

async function withClient<T>(connectionString: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString, application_name: 'pgrelay-migrate' });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

async function appliedMigrations(client: pg.Client): Promise<string[]> {
  const exists = await client.query<{ t: string | null }>(`SELECT to_regclass($1) AS t`, [
    `${MIGRATIONS_SCHEMA}.${MIGRATIONS_TABLE}`,
  ]);
  if (exists.rows[0]?.t == null) return [];
  const rows = await client.query<{ name: string }>(
    `SELECT name FROM ${MIGRATIONS_SCHEMA}.${MIGRATIONS_TABLE} ORDER BY run_on, id`,
  );
  return rows.rows.map((row) => row.name);
}

async function installedVersion(client: pg.Client): Promise<string | null> {
  const found = await client.query<{ v: string | null }>(
    `SELECT CASE WHEN to_regprocedure('pgrelay.version()') IS NULL THEN NULL ELSE 'yes' END AS v`,
  );
  if (found.rows[0]?.v == null) return null;
  const version = await client.query<{ v: string }>(`SELECT pgrelay.version() AS v`);
  return version.rows[0]?.v ?? null;
}

async function statusWith(client: pg.Client): Promise<MigrationStatus> {
  const known = migrationFiles().map((file) => file.name);
  const applied = await appliedMigrations(client);
  return {
    applied,
    pending: known.filter((name) => !applied.includes(name)),
    unknown: applied.filter((name) => !known.includes(name)),
    installedVersion: await installedVersion(client),
  };
}

/** Names of the pgrelay functions a file defines. */
function definedFunctions(sql: string): string[] {
  return [...sql.matchAll(/CREATE\s+OR\s+REPLACE\s+FUNCTION\s+pgrelay\.("?)(\w+)\1\s*\(/gi)].map((match) => match[2]!);
}

/**
 * Runs one function file. A changed return type or parameter name cannot be replaced in place
 * (SQLSTATE 42P13): then the file's functions are dropped (never CASCADE, so nothing that depends
 * on them disappears silently) and the file runs again.
 */
async function installFile(client: pg.Client, file: SqlFile): Promise<void> {
  await client.query('SAVEPOINT pgrelay_function_file');
  try {
    await client.query(file.sql);
  } catch (error) {
    await client.query('ROLLBACK TO SAVEPOINT pgrelay_function_file');
    if ((error as { code?: string }).code !== '42P13') {
      throw new Error(`pgrelay migrate: sql/functions/${file.name} failed: ${(error as Error).message}`);
    }
    const existing = await client.query<{ signature: string }>(
      `SELECT p.oid::regprocedure::text AS signature FROM pg_proc p
        WHERE p.pronamespace = 'pgrelay'::regnamespace AND p.proname = ANY($1::text[])`,
      [definedFunctions(file.sql)],
    );
    for (const row of existing.rows) await client.query(`DROP FUNCTION ${row.signature}`);
    try {
      await client.query(file.sql);
    } catch (retryError) {
      throw new Error(`pgrelay migrate: sql/functions/${file.name} failed: ${(retryError as Error).message}`);
    }
  }
}

/** Reinstall every function file and drop pgrelay functions that no file defines any more. */
async function installFunctions(client: pg.Client): Promise<{ functions: number; dropped: string[] }> {
  const files = functionFiles();
  await client.query('BEGIN');
  try {
    await client.query('SET LOCAL check_function_bodies = off');
    for (const file of files) {
      await installFile(client, file);
    }
    // Capture functions are generated code: regenerate them, so a table captured by an older
    // pgrelay runs this version's capture (its fixes, its message ids), not the one it was enabled with.
    await client.query('SELECT pgrelay._cdc_generate(c.relid) FROM pgrelay.cdc_tables c ORDER BY c.relid');
    // _saga_call too (its file installs the fallback that runs every SQL step by dynamic EXECUTE).
    await client.query('SELECT pgrelay._saga_generate_call()');
    // CREATE OR REPLACE rewrites each catalog row, so a function untouched by this transaction
    // (its row older than our xid; files ran in subtransactions, whose xids are younger) is one
    // whose file is gone or whose signature changed: drop it.
    const stale = await client.query<{ signature: string }>(
      `SELECT p.oid::regprocedure::text AS signature
         FROM pg_proc p
        WHERE p.pronamespace = 'pgrelay'::regnamespace
          AND age(p.xmin) > age(pg_current_xact_id()::xid)
          -- generated per-table capture functions, and anything a trigger or event trigger uses,
          -- are not file-defined: they stay
          AND p.proname NOT LIKE '\\_cdc\\_capture\\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid = p.oid AND d.deptype = 'n')
        ORDER BY 1`,
    );
    for (const row of stale.rows) {
      await client.query(`DROP FUNCTION ${row.signature}`);
    }
    await client.query('COMMIT');
    return { functions: files.length, dropped: stale.rows.map((row) => row.signature) };
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  }
}

/**
 * Drops every function the sql/functions files define (all overloads), so the down migrations can
 * drop the tables and types those functions use. Functions the migrations made themselves (event
 * trigger functions, generated capture functions) are left to the migrations.
 */
async function dropFileFunctions(client: pg.Client): Promise<string[]> {
  const names = [...new Set(functionFiles().flatMap((file) => definedFunctions(file.sql)))];
  await client.query('BEGIN');
  try {
    const rows = await client.query<{ signature: string }>(
      `SELECT p.oid::regprocedure::text AS signature FROM pg_proc p
        WHERE p.pronamespace = to_regnamespace('pgrelay') AND p.proname = ANY($1::text[]) ORDER BY 1`,
      [names],
    );
    for (const row of rows.rows) await client.query(`DROP FUNCTION ${row.signature}`);
    await client.query('COMMIT');
    return rows.rows.map((row) => row.signature);
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  }
}

async function runMigrations(client: pg.Client, direction: 'up' | 'down', log: (line: string) => void): Promise<string[]> {
  const ran = await runner({
    dbClient: client,
    dir: migrationsDir(),
    direction,
    count: direction === 'down' ? Infinity : undefined,
    migrationsTable: MIGRATIONS_TABLE,
    migrationsSchema: MIGRATIONS_SCHEMA,
    checkOrder: true,
    singleTransaction: true,
    noLock: true,
    log: (message: string) => log(message),
    logger: { debug: () => {}, info: () => {}, warn: (m: string) => log(m), error: (m: string) => log(m) },
  });
  return ran.map((migration) => migration.name);
}

/**
 * Install or upgrade (`up`), or remove everything pgrelay made (`down`).
 * Runs under a session advisory lock, so concurrent callers queue instead of racing.
 * Refuses to touch a database migrated by a newer pgrelay than this one.
 */
export async function migrate(options: MigrateOptions): Promise<MigrateResult> {
  const direction = options.direction ?? 'up';
  const log = options.log ?? (() => {});
  return withClient(options.connectionString, async (client) => {
    await client.query('SET client_min_messages = warning');
    await client.query('SELECT pg_advisory_lock($1)', [INSTALL_LOCK]);
    try {
      const status = await statusWith(client);
      if (status.unknown.length > 0) {
        throw new Error(
          `pgrelay migrate: the database has migrations this pgrelay does not know (${status.unknown.join(', ')}); ` +
            'it was installed by a newer pgrelay: upgrade pgrelay instead',
        );
      }
      if (direction === 'down') {
        const dropped = await dropFileFunctions(client);
        const migrations = status.applied.length > 0 ? await runMigrations(client, 'down', log) : [];
        await client.query(`DROP TABLE IF EXISTS ${MIGRATIONS_SCHEMA}.${MIGRATIONS_TABLE}`);
        return { direction, migrations, functions: 0, dropped };
      }
      const migrations = status.pending.length > 0 ? await runMigrations(client, 'up', log) : [];
      const installed = await installFunctions(client);
      return { direction, migrations, ...installed };
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [INSTALL_LOCK]).catch(() => {});
    }
  });
}

export async function migrationStatus(connectionString: string): Promise<MigrationStatus> {
  return withClient(connectionString, statusWith);
}

/** One plain SQL script that installs pgrelay and records its migrations, for teams without Node. */
export function installScript(): string {
  const migrations = migrationFiles();
  const parts = [
    '-- pgrelay install script: run with psql -v ON_ERROR_STOP=1 -f <file>',
    'BEGIN;',
    `SELECT pg_advisory_xact_lock(${INSTALL_LOCK});`,
    `CREATE TABLE IF NOT EXISTS ${MIGRATIONS_SCHEMA}.${MIGRATIONS_TABLE} (id serial PRIMARY KEY, name varchar(255) NOT NULL, run_on timestamp NOT NULL);`,
  ];
  for (const migration of migrations) {
    parts.push(`-- migration ${migration.name}`, migration.up.trim());
    parts.push(`INSERT INTO ${MIGRATIONS_SCHEMA}.${MIGRATIONS_TABLE} (name, run_on) VALUES ('${migration.name}', now());`);
  }
  parts.push('SET LOCAL check_function_bodies = off;');
  for (const file of functionFiles()) {
    parts.push(`-- sql/functions/${file.name}`, file.sql.trim());
  }
  // What migrate up generates after installing the functions (a fresh install has no captured
  // tables and no saga definitions, so this writes _saga_call's fallback again, as migrate does).
  parts.push('SELECT pgrelay._saga_generate_call();');
  parts.push('COMMIT;', '');
  return parts.join('\n\n');
}
