import { sql, type DatabasePool } from 'slonik';
import { z } from 'zod';
import { createPgrelayPool, InvalidStateError, mapError, type Cursor } from '../client/index.js';

export const syncSchema = z.object({
  name: z.string(),
  topics: z.array(z.string()),
  source_format: z.enum(['cdc', 'event']),
  target: z.record(z.unknown()),
  source_table: z.string().nullable(),
  paused: z.boolean(),
  /** The source's copy of the target checkpoint (pgrelay.sync_progress). */
  applied_xid: z.string(),
  applied_position: z.string(),
});
export type SyncDefinition = z.infer<typeof syncSchema>;

const checkpointSchema = z.object({ cursor_xid: z.string(), cursor_position: z.string() });
const countSchema = z.object({ n: z.number() });
const voidSchema = z.object({}).passthrough();
const batchSchema = z.object({ n: z.number(), messages: z.string().nullable(), xid: z.string().nullable(), position: z.string().nullable() });

export async function listSyncs(source: DatabasePool): Promise<SyncDefinition[]> {
  return [...(await source.any(sql.type(syncSchema)`SELECT name, topics, source_format, target, source_table, paused, applied_xid::text AS applied_xid, applied_position::text AS applied_position FROM pgrelay.syncs ORDER BY name`))];
}

/** The target database's checkpoint for a sync (start of the log when it has none yet). */
export async function syncCheckpoint(target: DatabasePool, name: string): Promise<Cursor> {
  const row = await target.maybeOne(sql.type(checkpointSchema)`
    SELECT cursor_xid::text AS cursor_xid, cursor_position FROM pgrelay.sync_checkpoints WHERE name = ${name}`);
  return row === null ? { xid: '0', position: '0' } : { xid: row.cursor_xid, position: row.cursor_position };
}

/** The source fields a sync's target key comes from, or null when one is computed by a function. */
function sourceKeyFields(sync: SyncDefinition) {
  const columns = (sync.target.columns ?? {}) as Record<string, unknown>;
  const fields: string[] = [];
  for (const key of (sync.target.key_columns ?? []) as string[]) {
    const mapped = columns[key] ?? key;
    if (typeof mapped !== 'string') return null;
    fields.push(mapped);
  }
  return sql.array(fields, 'text');
}

type Batch = { n: number; messages: string | null; to: Cursor };

/** The next batch after a cursor, as the JSON text pgrelay.sync_apply takes (never decoded here). */
async function readBatch(source: DatabasePool, sync: SyncDefinition, from: Cursor, maxMessages: number): Promise<Batch> {
  const row = await source.one(sql.type(batchSchema)`
    SELECT messages_count AS n, messages, to_xid::text AS xid, to_position::text AS position
    FROM pgrelay.sync_read(${sql.array(sync.topics, 'text')}, ${from.xid}::xid8, ${from.position}::bigint, ${maxMessages},
                           ${sync.source_format === 'cdc' ? sourceKeyFields(sync) : null})`);
  return { n: row.n, messages: row.messages, to: row.xid === null || row.position === null ? from : { xid: row.xid, position: row.position } };
}

/**
 * One step of a cross-database sync: read gapless batches from the source after the checkpoint
 * kept in the target and apply each there with pgrelay.sync_apply, which moves the checkpoint in
 * the same target transaction. Reading batch N+1 overlaps applying batch N; a prefetched batch
 * applies only if the checkpoint is where it starts (sync_apply checks), else the step ends.
 * At most maxBatches batches, then the checkpoint is copied back to the source
 * (pgrelay.sync_progress) for lag figures and so retention keeps what the target has not applied;
 * a crash before that copy only leaves it behind until the next step. Returns row changes applied.
 */
export async function runSyncStep(source: DatabasePool, target: DatabasePool, sync: SyncDefinition, maxMessages = 2000, maxBatches = 8): Promise<number> {
  let from = await syncCheckpoint(target, sync.name);
  let next = readBatch(source, sync, from, maxMessages);
  let applied = 0;
  try {
    for (let i = 0; i < maxBatches; i++) {
      const batch = await next;
      if (batch.n === 0 || batch.messages === null) {
        // Nothing new. sync_read moves the cursor past other topics' messages to the read horizon
        // once that is 1,000 transactions ahead: record it, so later reads skip that stretch.
        if (batch.to.xid === from.xid && batch.to.position === from.position) break;
        batch.messages = '[]';
        next = Promise.resolve({ n: 0, messages: null, to: batch.to });
      } else {
        next = i + 1 < maxBatches ? readBatch(source, sync, batch.to, maxMessages) : Promise.resolve({ n: 0, messages: null, to: batch.to });
      }
      try {
        applied += await target.oneFirst(sql.type(countSchema)`
          SELECT pgrelay.sync_apply(${sync.name}, ${sql.jsonb(sync.target as never)}, ${batch.messages}::jsonb,
                                    ${from.xid}::xid8, ${from.position}::bigint, ${batch.to.xid}::xid8, ${batch.to.position}::bigint,
                                    ${sync.source_format}) AS n`);
      } catch (error) {
        // Another daemon moved the checkpoint first (PR007): it applies this stretch; not a failure.
        const mapped = mapError(error);
        if (mapped instanceof InvalidStateError) return applied;
        throw mapped;
      }
      from = batch.to;
    }
  } finally {
    next.catch(() => {}); // a prefetch nobody will use
  }
  await reportProgress(source, sync, from);
  return applied;
}

async function reportProgress(source: DatabasePool, sync: SyncDefinition, cursor: Cursor): Promise<void> {
  if (cursor.xid === sync.applied_xid && cursor.position === sync.applied_position) return;
  await source.query(sql.type(voidSchema)`SELECT pgrelay.sync_progress(${sync.name}, ${cursor.xid}::xid8, ${cursor.position}::bigint)`);
  sync.applied_xid = cursor.xid;
  sync.applied_position = cursor.position;
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
