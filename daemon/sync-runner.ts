import { sql, type DatabasePool } from 'slonik';
import { z } from 'zod';
import { createPgrelayPool, read, type Cursor } from '../client/index.js';

export const syncSchema = z.object({
  name: z.string(),
  topics: z.array(z.string()),
  source_format: z.enum(['cdc', 'event']),
  target: z.record(z.unknown()),
  source_table: z.string().nullable(),
  paused: z.boolean(),
});
export type SyncDefinition = z.infer<typeof syncSchema>;

const checkpointSchema = z.object({ cursor_xid: z.string(), cursor_position: z.string() });
const countSchema = z.object({ n: z.number() });

export async function listSyncs(source: DatabasePool): Promise<SyncDefinition[]> {
  return [...(await source.any(sql.type(syncSchema)`SELECT name, topics, source_format, target, source_table, paused FROM pgrelay.syncs ORDER BY name`))];
}

/** The target database's checkpoint for a sync (start of the log when it has none yet). */
export async function syncCheckpoint(target: DatabasePool, name: string): Promise<Cursor> {
  const row = await target.maybeOne(sql.type(checkpointSchema)`
    SELECT cursor_xid::text AS cursor_xid, cursor_position FROM pgrelay.sync_checkpoints WHERE name = ${name}`);
  return row === null ? { xid: '0', position: '0' } : { xid: row.cursor_xid, position: row.cursor_position };
}

/**
 * One step of a cross-database sync: read the next gapless batch from the source after the
 * checkpoint kept in the target, then apply it there with pgrelay.sync_apply, which moves the
 * checkpoint in the same target transaction. Returns the number of row changes applied.
 */
export async function runSyncStep(source: DatabasePool, target: DatabasePool, sync: SyncDefinition, maxMessages = 2000): Promise<number> {
  const from = await syncCheckpoint(target, sync.name);
  const batch = await read(source, from, { maxMessages, topics: sync.topics });
  if (batch.messages.length === 0) return 0;
  const messages = batch.messages.map((m) => ({ position: m.position, type: m.type, data: m.data, created_at: m.created_at }));
  return target.oneFirst(sql.type(countSchema)`
    SELECT pgrelay.sync_apply(${sync.name}, ${sql.jsonb(sync.target as never)}, ${sql.jsonb(messages as never)},
                              ${from.xid}::xid8, ${from.position}::bigint, ${batch.cursor.xid}::xid8, ${batch.cursor.position}::bigint,
                              ${sync.source_format}) AS n`);
}

/** Same-database sync: read and apply in one source transaction. */
export async function runLocalSync(source: DatabasePool, name: string, maxMessages = 2000): Promise<number> {
  return source.oneFirst(sql.type(countSchema)`SELECT pgrelay.sync_run(${name}, ${maxMessages}) AS n`);
}

/** Pools for cross-database targets, keyed by the environment variable that names their URL. */
export function createTargetPools(env: NodeJS.ProcessEnv) {
  const pools = new Map<string, Promise<DatabasePool>>();
  return {
    get(variable: string): Promise<DatabasePool> {
      const url = env[variable];
      if (url === undefined || url === '') throw new Error(`sync target: environment variable ${variable} is not set`);
      let pool = pools.get(variable);
      if (pool === undefined) {
        pool = createPgrelayPool(url, { maximumPoolSize: 4, applicationName: 'pgrelay-sync' });
        pools.set(variable, pool);
      }
      return pool;
    },
    async close(): Promise<void> {
      for (const pool of pools.values()) await (await pool).end();
      pools.clear();
    },
  };
}
