import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { mapErrors } from './errors.js';

export type SyncTarget = {
  table: string;
  key_columns: string[];
  /** Target column -> source field, a function (row jsonb), or a SQL expression over img (the source
   *  row jsonb; trusted admin input, evaluated in the target database). */
  columns?: Record<string, string | { function: string } | { expr: string }>;
  delete?: 'delete' | 'ignore' | { soft: string };
  /** Cross-database target: the environment variable holding its URL (the daemon applies it). */
  database_env?: string;
};

export type SyncOptions = { source_format?: 'cdc' | 'event'; delete_types?: string[]; source_table?: string };

const voidSchema = z.object({}).passthrough();
const countSchema = z.object({ n: z.number() });
const checkpointSchema = z.object({
  name: z.string(),
  cursor_xid: z.string(),
  cursor_position: z.string(),
  applied: z.string(),
  skipped_stale: z.string(),
  last_applied_at: z.string().nullable(),
  last_source_at: z.string().nullable(),
});
const lagSchema = z.object({ pending: z.string(), lag_seconds: z.number() });
const statusSchema = z.object({
  sync_name: z.string(),
  cursor_xid: z.string(),
  cursor_position: z.string(),
  pending: z.string(),
  lag_seconds: z.number(),
  applied_at: z.string().nullable(),
});
export type SyncStatus = z.infer<typeof statusSchema>;
const reconcileSchema = z.object({ rows: z.string(), missing: z.string(), different: z.string(), extra: z.string() });

export function syncMethods(connection: CommonQueryMethods) {
  return {
    /** Declares (or updates) a sync in this, the source, database. */
    define: (name: string, topics: readonly string[], target: SyncTarget, options: SyncOptions = {}) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`
          SELECT pgrelay.sync_define(${name}, ${sql.array([...topics], 'text')}, ${sql.jsonb(target as never)}, ${sql.jsonb(options as never)})`);
      }),
    /** Records, in the source, where a sync's target checkpoint is (the daemon does this). */
    progress: (name: string, cursor: { xid: string; position: string }) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.sync_progress(${name}, ${cursor.xid}::xid8, ${cursor.position}::bigint)`);
      }),
    drop: (name: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.sync_drop(${name})`);
      }),
    /** Same-database sync: apply the next batch now. Returns row changes applied (0: up to date). */
    run: (name: string, maxMessages = 1000) =>
      mapErrors(() => connection.oneFirst(sql.type(countSchema)`SELECT pgrelay.sync_run(${name}, ${maxMessages}) AS n`)),
    /** Same-database sync: compare source and target in one transaction and repair drift. */
    reconcile: (name: string, chunkSize = 1000) =>
      mapErrors(() =>
        connection.one(sql.type(reconcileSchema)`
          SELECT rows, missing, different, extra FROM pgrelay.sync_reconcile(${name}, ${chunkSize})`),
      ),
    /** Checkpoint of a sync, read from the database that holds it (the target). */
    checkpoint: (name: string) =>
      mapErrors(() =>
        connection.maybeOne(sql.type(checkpointSchema)`
          SELECT name, cursor_xid::text AS cursor_xid, cursor_position, applied, skipped_stale, last_applied_at, last_source_at
          FROM pgrelay.sync_checkpoints WHERE name = ${name}`),
      ),
    /**
     * Every sync defined here (the source) with its lag: source messages after its applied cursor
     * (pgrelay.sync_lag; for a cross-database sync the cursor the daemon last reported) and the
     * age in seconds of the oldest.
     */
    status: (name?: string) =>
      mapErrors(async () => [
        ...(await connection.any(sql.type(statusSchema)`
          SELECT sync_name, cursor_xid::text AS cursor_xid, cursor_position, pending, lag_seconds, applied_at
          FROM pgrelay.sync_lag(${name ?? null})`)),
      ]),
    /** Lag of a reader at a cursor on the source: pending messages and seconds behind. */
    lag: (topics: readonly string[], cursor: { xid: string; position: string }) =>
      mapErrors(() =>
        connection.one(sql.type(lagSchema)`
          SELECT pending, lag_seconds FROM pgrelay.log_lag(${sql.array([...topics], 'text')}, ${cursor.xid}::xid8, ${cursor.position}::bigint)`),
      ),
  };
}
export type SyncMethods = ReturnType<typeof syncMethods>;
