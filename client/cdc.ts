// client.cdc: change data capture of tables into the log (pgrelay.cdc_enable / cdc_disable /
// cdc_list / cdc_snapshot). Table names are passed to PostgreSQL as regclass text
// ('public.users', '"Odd Schema"."MixedCase"'), resolved by the server, never spliced into SQL.
import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { mapErrors } from './errors.js';

export type CdcOperation = 'insert' | 'update' | 'delete' | 'truncate';

export type CdcOptions = {
  /** Default 'cdc.<schema>.<table>' (characters outside [A-Za-z0-9._-] become '_'). */
  topic?: string;
  /** Columns left out of every image. */
  exclude?: string[];
  /** Columns replaced by the hex SHA-256 of their text value (NULL stays NULL). */
  mask?: string[];
  /** The message key for a table without a primary key: NOT NULL columns with a unique index. */
  key_columns?: string[];
  /** Which operations to capture (default all four). */
  operations?: CdcOperation[];
  /** Skip UPDATEs that change no captured column. */
  skip_unchanged?: boolean;
};

/** data of a CDC message (type insert | update | delete | truncate | snapshot). */
export type CdcChange<Row = Record<string, unknown>> = {
  before: Row | null;
  after: Row | null;
  /** Columns an UPDATE changed (sorted), null for other types. */
  changed: string[] | null;
};

const voidSchema = z.object({}).passthrough();
const count = z.union([z.string(), z.number()]).transform(Number);

export const cdcTableSchema = z.object({
  table_name: z.string(),
  topic: z.string(),
  key_columns: z.array(z.string()),
  exclude: z.array(z.string()),
  mask: z.array(z.string()),
  operations: z.array(z.enum(['insert', 'update', 'delete', 'truncate'])),
  skip_unchanged: z.boolean(),
  snapshot_emitted: count.nullable(),
  snapshot_total: count.nullable(),
  snapshot_done: z.boolean(),
});
export type CdcTable = z.infer<typeof cdcTableSchema>;

export const cdcSnapshotProgressSchema = z.object({ emitted: count, total: count, done: z.boolean() });
export type CdcSnapshotProgress = z.infer<typeof cdcSnapshotProgressSchema>;

export type CdcSnapshotOptions = {
  /** Rows per chunk (one transaction each, rows locked FOR SHARE only while it runs). Default 1000. */
  chunkSize?: number;
  /** Called after every chunk. */
  onProgress?: (progress: CdcSnapshotProgress) => void;
  /** Stops between chunks; the backfill resumes where it stopped on the next call. */
  signal?: AbortSignal;
};

export function cdcMethods(connection: CommonQueryMethods) {
  const step = (table: string, chunkSize: number) =>
    mapErrors(() =>
      connection.one(sql.type(cdcSnapshotProgressSchema)`
        SELECT emitted, total, done FROM pgrelay.cdc_snapshot(${table}::regclass, ${chunkSize})`),
    );
  return {
    /** Starts capturing a table (or replaces its options). */
    enable: (table: string, options: CdcOptions = {}) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.cdc_enable(${table}::regclass, ${sql.jsonb(options as never)})`);
      }),
    /** Stops capturing a table: triggers, generated function and snapshot progress are removed. */
    disable: (table: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.cdc_disable(${table}::regclass)`);
      }),
    /** Captured tables with their options and backfill progress. */
    list: () =>
      mapErrors(async () => [
        ...(await connection.any(sql.type(cdcTableSchema)`
          SELECT table_name, topic, key_columns, exclude, mask, operations, skip_unchanged,
                 snapshot_emitted, snapshot_total, snapshot_done
          FROM pgrelay.cdc_list()`)),
      ]),
    /** Emits the next chunk of existing rows as 'snapshot' messages (one transaction). */
    snapshotStep: step,
    /**
     * Backfills the table: chunk after chunk until done or signal aborts. Resumable: a later call
     * (after an abort, a crash or a kill) continues after the last committed chunk.
     */
    snapshot: async (table: string, options: CdcSnapshotOptions = {}): Promise<CdcSnapshotProgress> => {
      const chunkSize = options.chunkSize ?? 1000;
      for (;;) {
        const progress = await step(table, chunkSize);
        options.onProgress?.(progress);
        if (progress.done || options.signal?.aborted === true) return progress;
      }
    },
    /** Forgets the backfill progress: the next snapshot starts from the first key. */
    snapshotReset: (table: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.cdc_snapshot_reset(${table}::regclass)`);
      }),
  };
}
export type CdcMethods = ReturnType<typeof cdcMethods>;
