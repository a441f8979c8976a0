import { sql, type DatabasePool, type DatabasePoolConnection } from 'slonik';
import { z } from 'zod';
import type { SyncDefinition } from './sync-runner.js';

export type ReconcileReport = { rows: number; missing: number; different: number; extra: number; chunks: number };

const rowsSchema = z.object({ rows: z.array(z.record(z.unknown())).nullable() });
const resultSchema = z.object({ missing: z.string(), different: z.string(), extra: z.string() });
const countSchema = z.object({ n: z.string() });
const voidSchema = z.object({}).passthrough();

/**
 * Compares a sync's source table with its target in key-ordered chunks and repairs drift (see
 * pgrelay.sync_reconcile_chunk). The source table is the sync's options.source_table; its key
 * columns are the sync's target key columns mapped back through `columns` when renamed.
 */
export async function reconcileSync(
  source: DatabasePool,
  target: DatabasePool,
  sync: SyncDefinition,
  options: { chunkSize?: number; onProgress?: (done: number, total: number, report: ReconcileReport) => void; signal?: AbortSignal } = {},
): Promise<ReconcileReport> {
  if (sync.source_table === null) throw new Error(`sync ${sync.name} has no source_table: define it with options {"source_table": "schema.table"}`);
  const chunkSize = options.chunkSize ?? 1000;
  const targetKeys = (sync.target.key_columns as string[]) ?? [];
  const columns = (sync.target.columns ?? {}) as Record<string, unknown>;
  const sourceKeys = targetKeys.map((key) => {
    const mapped = columns[key];
    if (mapped === undefined) return key;
    if (typeof mapped === 'string') return mapped;
    throw new Error(`sync ${sync.name}: key column ${key} is computed by a function; reconcile needs plain source key columns`);
  });
  const table = sql.identifier(sync.source_table.split('.').map((part) => part.replace(/^"|"$/g, '')));
  const keyList = sql.join(sourceKeys.map((key) => sql.identifier(['s', key])), sql.fragment`, `);
  const total = Number(await source.oneFirst(sql.type(countSchema)`SELECT count(*)::text AS n FROM ${table}`));
  const report: ReconcileReport = { rows: 0, missing: 0, different: 0, extra: 0, chunks: 0 };
  let after: Record<string, unknown> | null = null;
  for (;;) {
    if (options.signal?.aborted) break;
    // Each chunk runs under the sync's checkpoint lock in the target (pgrelay.sync_lock): the applier
    // waits, so the source rows, read after the lock, are at least as new as what the target has
    // applied, and nothing the applier writes meanwhile is mistaken for drift and undone.
    // (An explicit BEGIN rather than slonik's transaction(): that one forbids querying the source
    // pool while it is open.)
    const { rows, last, result } = await inTransaction(target, async (tx) => {
      await tx.query(sql.type(voidSchema)`SELECT pgrelay.sync_lock(${sync.name})`);
      const reader = source === target ? tx : source;
      // The bound goes back through the source row type, so keys compare in their own type.
      const rows: Array<Record<string, unknown>> =
        (await reader.oneFirst(sql.type(rowsSchema)`
          SELECT jsonb_agg(to_jsonb(c) ORDER BY ${sql.join(sourceKeys.map((key) => sql.identifier(['c', key])), sql.fragment`, `)}) AS rows
          FROM (SELECT s.* FROM ${table} AS s
                WHERE ${after === null ? sql.fragment`true` : sql.fragment`(${keyList}) > (SELECT ${sql.join(sourceKeys.map((key) => sql.identifier(['a', key])), sql.fragment`, `)} FROM jsonb_populate_record(NULL::${table}, ${sql.jsonb(after as never)}) AS a)`}
                ORDER BY ${keyList} LIMIT ${chunkSize}) AS c`)) ?? [];
      const last: Record<string, unknown> | null = rows.length === chunkSize ? rows[rows.length - 1]! : null;
      // The target key range of this chunk: (after, last] in target key names.
      const toTarget = (row: Record<string, unknown> | null) =>
        row === null ? null : Object.fromEntries(targetKeys.map((key, i) => [key, row[sourceKeys[i]!]]));
      const result = await tx.one(sql.type(resultSchema)`
        SELECT missing::text, different::text, extra::text
        FROM pgrelay.sync_reconcile_chunk(${sync.name}, ${sql.jsonb(sync.target as never)}, ${sql.jsonb(rows as never)},
                                          ${after === null ? null : sql.jsonb(toTarget(after) as never)},
                                          ${last === null ? null : sql.jsonb(toTarget(last) as never)})`);
      return { rows, last, result };
    });
    report.rows += rows.length;
    report.missing += Number(result.missing);
    report.different += Number(result.different);
    report.extra += Number(result.extra);
    report.chunks += 1;
    options.onProgress?.(report.rows, total, report);
    if (last === null) break;
    after = last;
  }
  return report;
}

async function inTransaction<T>(pool: DatabasePool, fn: (connection: DatabasePoolConnection) => Promise<T>): Promise<T> {
  return pool.connect(async (connection) => {
    await connection.query(sql.type(voidSchema)`BEGIN`);
    try {
      const value = await fn(connection);
      await connection.query(sql.type(voidSchema)`COMMIT`);
      return value;
    } catch (error) {
      await connection.query(sql.type(voidSchema)`ROLLBACK`).catch(() => {});
      throw error;
    }
  });
}
