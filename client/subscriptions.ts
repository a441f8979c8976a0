import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { InvalidArgumentError, mapErrors } from './errors.js';

export type SinkDescription =
  | { type: 'consumer' }
  | { type: 'stdout' }
  | { type: 'webhook'; url: string; secret_env?: string; secret_file?: string; timeout_ms?: number; concurrency?: number }
  | { type: 'nats' | 'amqp'; [key: string]: unknown };

export type BackoffOptions = { initial_ms?: number; max_ms?: number; multiplier?: number; jitter?: number };

export type SubscribeOptions = {
  partitions?: number;
  start?: 'earliest' | 'latest';
  max_attempts?: number;
  backoff?: BackoffOptions;
  batch_size?: number;
  lease_seconds?: number;
};

type Jsonb = Parameters<typeof sql.jsonb>[0];
const voidSchema = z.object({}).passthrough();

export const subscriptionSchema = z.object({
  name: z.string(),
  topics: z.array(z.string()),
  sink: z.record(z.unknown()),
  partitions: z.number().int(),
  max_attempts: z.number().int(),
  backoff: z.record(z.unknown()),
  batch_size: z.number().int(),
  lease_seconds: z.union([z.number(), z.string()]).transform(Number),
  paused: z.boolean(),
});
export type Subscription = z.infer<typeof subscriptionSchema>;

export const lagSchema = z.object({
  subscription_name: z.string(),
  partition_index: z.number().int(),
  pending: z.string(),
  lag_seconds: z.number(),
  retrying: z.string(),
  dead: z.string(),
  delivered: z.string(),
  paused: z.boolean(),
  lease_owner: z.string().nullable(),
});
export type PartitionLag = z.infer<typeof lagSchema>;

export const deadLetterSchema = z.object({
  subscription: z.string(),
  position: z.string(),
  id: z.string().uuid(),
  topic: z.string(),
  key: z.string().nullable(),
  type: z.string(),
  data: z.unknown(),
  attempts: z.number().int(),
  last_error: z.string().nullable(),
  dead_at: z.string(),
});
export type DeadLetter = z.infer<typeof deadLetterSchema>;

/**
 * Checks what SQL would only reject as a cast error (SQLSTATE 22P02/22007, not pgrelay's): a
 * position that is not a whole number, a Date that is not a time. Same error shape as the SQL side.
 */
function checkPosition(fn: string, argument: string, position: string | bigint | undefined): string | null {
  if (position === undefined) return null;
  const text = String(position);
  if (!/^-?\d{1,19}$/.test(text)) {
    throw new InvalidArgumentError(`${fn}: argument ${argument} must be a whole number, got ${JSON.stringify(text.slice(0, 40))}`, 'PR001', argument);
  }
  return text;
}

function checkTime(fn: string, argument: string, time: Date | undefined): string | null {
  if (time === undefined) return null;
  if (!(time instanceof Date) || Number.isNaN(time.getTime())) {
    throw new InvalidArgumentError(`${fn}: argument ${argument} must be a valid Date`, 'PR001', argument);
  }
  return time.toISOString();
}

export function subscriptionMethods(connection: CommonQueryMethods) {
  return {
    subscribe: (name: string, topics: readonly string[], sink: SinkDescription, options: SubscribeOptions = {}) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`
          SELECT pgrelay.subscribe(${name}, ${sql.array([...topics], 'text')}, ${sql.jsonb(sink as Jsonb)}, ${sql.jsonb(options as Jsonb)})`);
      }),
    unsubscribe: (name: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.unsubscribe(${name})`);
      }),
    pause: (name: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.subscription_pause(${name})`);
      }),
    resume: (name: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.subscription_resume(${name})`);
      }),
    reset: (name: string, from: { position?: string | bigint; time?: Date } = {}) =>
      mapErrors(async () => {
        const position = checkPosition('pgrelay.subscription_reset', 'from_position', from.position);
        const time = checkTime('pgrelay.subscription_reset', 'from_time', from.time);
        await connection.query(sql.type(voidSchema)`
          SELECT pgrelay.subscription_reset(${name}, ${position}::bigint, ${time}::timestamptz)`);
      }),
    list: () =>
      mapErrors(async () => [
        ...(await connection.any(sql.type(subscriptionSchema)`
          SELECT name, topics, sink, partitions, max_attempts, backoff, batch_size, lease_seconds::float8 AS lease_seconds, paused
          FROM pgrelay.subscriptions ORDER BY name`)),
      ]),
    lag: (name?: string) =>
      mapErrors(async () => [
        ...(await connection.any(sql.type(lagSchema)`SELECT * FROM pgrelay.subscription_lag(${name ?? null})`)),
      ]),
    deadLetters: (name?: string) =>
      mapErrors(async () => [
        ...(await connection.any(sql.type(deadLetterSchema)`
          SELECT d.subscription, d.position, (d.message).id AS id, (d.message).topic AS topic, (d.message).key AS key,
                 (d.message).type AS type, (d.message).data AS data, d.attempts, d.last_error, d.dead_at
          FROM pgrelay.dead_letters d
          WHERE ${name ?? null}::text IS NULL OR d.subscription = ${name ?? null}
          ORDER BY d.subscription, d.position`)),
      ]),
    /** Puts one dead letter (or all of the subscription's) back to be delivered; returns how many. */
    retryDeadLetters: (name: string, position?: string | bigint) =>
      mapErrors(() =>
        connection.oneFirst(sql.type(z.object({ n: z.number() }))`
          SELECT pgrelay.dead_letter_retry(${name}, ${checkPosition('pgrelay.dead_letter_retry', 'position', position)}::bigint) AS n`),
      ),
    /** Deletes one dead letter (or all of the subscription's); returns how many. */
    discardDeadLetters: (name: string, position?: string | bigint) =>
      mapErrors(() =>
        connection.oneFirst(sql.type(z.object({ n: z.number() }))`
          SELECT pgrelay.dead_letter_discard(${name}, ${checkPosition('pgrelay.dead_letter_discard', 'position', position)}::bigint) AS n`),
      ),
    runRetention: (olderThan?: string, batchSize = 10_000) =>
      mapErrors(() =>
        connection.oneFirst(sql.type(z.object({ n: z.string() }))`
          SELECT pgrelay.retention_run(${olderThan ?? null}::interval, ${batchSize}) AS n`),
      ),
  };
}
export type SubscriptionMethods = ReturnType<typeof subscriptionMethods>;
