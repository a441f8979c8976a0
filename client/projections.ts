import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { mapErrors } from './errors.js';

const voidSchema = z.object({}).passthrough();
const countSchema = z.object({ n: z.number().int() });

export const projectionLagSchema = z.object({
  projection_name: z.string(),
  /** Messages not yet applied (counted up to 1,000,000), a decimal string. */
  pending: z.string(),
  /** Age in seconds of the oldest message not yet applied (0 when none). */
  lag_seconds: z.number(),
  /** Messages applied since creation or the last rebuild, a decimal string. */
  applied: z.string(),
  last_error: z.string().nullable(),
});
export type ProjectionLag = z.infer<typeof projectionLagSchema>;

export type ProjectionDefineOptions = {
  /** A function () RETURNS void that empties the read model, called by rebuild(). */
  resetHandler?: string;
  /** 'earliest' (default): from the beginning of the log; 'latest': from now on. */
  start?: 'earliest' | 'latest';
};

/** A handler given by name ('public.project_orders') gets the expected signature appended. */
const withSignature = (name: string, signature: string): string => (name.includes('(') ? name : `${name}${signature}`);

export function projectionMethods(connection: CommonQueryMethods) {
  const run = (name: string, maxMessages = 1000) =>
    mapErrors(() => connection.oneFirst(sql.type(countSchema)`SELECT pgrelay.projection_run(${name}, ${maxMessages}) AS n`));
  return {
    /**
     * Registers (or updates, keeping its checkpoint) a projection: handler, a function
     * (message jsonb) RETURNS void, is applied to each message of topics (exact names or
     * prefixes ending in '*') in log order, the checkpoint advancing in the same transaction.
     */
    define: (name: string, topics: readonly string[], handler: string, options: ProjectionDefineOptions = {}) =>
      mapErrors(async () => {
        const reset = options.resetHandler === undefined ? null : withSignature(options.resetHandler, '()');
        await connection.query(sql.type(voidSchema)`
          SELECT pgrelay.projection_define(${name}, ${sql.array([...topics], 'text')}, ${withSignature(handler, '(jsonb)')}::regprocedure,
                                           ${reset}::regprocedure, ${options.start ?? 'earliest'})`);
      }),
    /**
     * Applies the next batch (at most maxMessages) in one transaction. Returns how many messages it
     * applied: 0 when up to date, when another run holds the projection, or when the handler
     * failed (see lag()'s last_error; the projection stays where it was).
     */
    run,
    /** run() until it returns 0 (or maxBatches batches). Returns the total applied. */
    catchUp: async (name: string, options: { maxMessages?: number; maxBatches?: number } = {}) => {
      let total = 0;
      for (let batch = 0; batch < (options.maxBatches ?? Number.POSITIVE_INFINITY); batch += 1) {
        const applied = await run(name, options.maxMessages ?? 1000);
        if (applied === 0) break;
        total += applied;
      }
      return total;
    },
    /** Empties the read model (reset handler) and starts over from the beginning, in one transaction. */
    rebuild: (name: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.projection_rebuild(${name})`);
      }),
    /** Forgets a projection (its read model is left as it is). */
    drop: (name: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.projection_drop(${name})`);
      }),
    /** Pending messages, lag and last error per projection (all when name is omitted). */
    lag: (name?: string) =>
      mapErrors(async () => [
        ...(await connection.any(sql.type(projectionLagSchema)`
          SELECT projection_name, pending::text AS pending, lag_seconds, applied::text AS applied, last_error
          FROM pgrelay.projection_lag(${name ?? null})`)),
      ]),
  };
}
export type ProjectionMethods = ReturnType<typeof projectionMethods>;
