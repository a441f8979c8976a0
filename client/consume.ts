import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { LeaseLostError, NotFoundError, mapError, mapErrors } from './errors.js';
import { messageSchema, type Message } from './schemas.js';
import type { Waker } from './waker.js';

export const deliverySchema = messageSchema.extend({
  subscription: z.string(),
  partition_index: z.number().int(),
  lease_token: z.string(),
  attempt: z.number().int(),
});

export type Delivery = {
  subscription: string;
  partition: number;
  leaseToken: string;
  attempt: number;
  message: Message;
};

export type Handler = (message: Message, delivery: Delivery) => Promise<void>;

export type BatchOutcome = { acked: string[]; failed: string[]; errors: string[]; latenciesMs: number[] };

export type ConsumeOptions = {
  /** Lease owner name; default host-pid-random. */
  consumer?: string;
  /** Partitions served in parallel by this consumer (one loop each). Default 1. */
  concurrency?: number;
  /** Messages per fetched batch; default the subscription's batch_size. */
  batchSize?: number;
  /** Streams (topic, key) delivered in parallel inside one batch. Default 16. */
  keyConcurrency?: number;
  /** Safety poll when idle (NOTIFY is only a doorbell). Default 1000 ms. */
  idlePollMs?: number;
  /**
   * How often a batch still being delivered extends its lease. Default a third of the
   * subscription's lease_seconds, so a slow batch keeps its lease through two missed beats.
   */
  heartbeatMs?: number;
  /** Wake-ups on NOTIFY; without one the consumer polls every idlePollMs. */
  waker?: Waker;
  /**
   * A node-postgres pool (same database) for the loop's own statements: fetch, complete, extend,
   * and the doorbell protocol. slonik adds about 0.15 ms to every query and 0.4 ms to a fetch
   * (pool acquisition, tracing spans, interceptors); on an idle system a message waits for one
   * fetch, so this is most of what idle latency can lose on the client. Handlers and everything
   * else keep the slonik connection. createClient({ connectionString }) passes its own.
   */
  pgPool?: PgQueryable;
  /**
   * Delivers a whole batch at once instead of calling the handler per message (a broker sink
   * publishing with one round of confirms); must resolve with the outcome deliverBatch would give.
   */
  deliverBatch?: (deliveries: readonly Delivery[]) => Promise<BatchOutcome>;
  /** Called after each batch completes. */
  onBatch?: (outcome: BatchOutcome, deliveries: readonly Delivery[]) => void;
  /** Called on database errors the loop recovers from, and on lost leases. */
  onError?: (error: unknown) => void;
};

export type Consumer = {
  /**
   * Stops fetching and starting messages, waits for the deliveries in flight, completes what was
   * handled (the rest of the batch comes again, to this or another consumer), then resolves.
   */
  stop(): Promise<void>;
  readonly done: Promise<void>;
  readonly stats: { batches: number; delivered: number; failed: number; leaseLost: number };
};

const chainOf = (message: Message): string =>
  message.key === null ? `p:${message.position}` : `k:${message.topic}\u001f${message.key}`;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs fn over items with at most `limit` running at once. */
async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next]!;
      next += 1;
      await fn(item);
    }
  });
  await Promise.all(workers);
}

/**
 * Delivers a batch: each (topic, key) stream in position order, one message at a time; streams in
 * parallel. The first failure of a stream stops that stream (the rest of it is parked by
 * complete_batch), so per-key order survives failures.
 */
export async function deliverBatch(
  deliveries: readonly Delivery[],
  handler: Handler,
  keyConcurrency: number,
  stopping: () => boolean = () => false,
): Promise<BatchOutcome> {
  const chains = new Map<string, Delivery[]>();
  for (const delivery of deliveries) {
    const chain = chainOf(delivery.message);
    const list = chains.get(chain) ?? [];
    list.push(delivery);
    chains.set(chain, list);
  }
  const outcome: BatchOutcome = { acked: [], failed: [], errors: [], latenciesMs: [] };
  await eachLimited([...chains.values()], keyConcurrency, async (chain) => {
    for (const delivery of chain) {
      // Shutting down: no new message is started; the rest of the batch is left unattempted and
      // comes again (complete_batch moves the cursor only over what was handled).
      if (stopping()) return;
      try {
        await handler(delivery.message, delivery);
        outcome.acked.push(delivery.message.position);
        outcome.latenciesMs.push(Date.now() - Date.parse(delivery.message.created_at));
      } catch (error) {
        outcome.failed.push(delivery.message.position);
        outcome.errors.push(String(error instanceof Error ? error.message : error).slice(0, 2000));
        return;
      }
    }
  });
  return outcome;
}

type DeliveryRow = z.infer<typeof deliverySchema>;

const toDelivery = (row: DeliveryRow): Delivery => ({
  subscription: row.subscription,
  partition: row.partition_index,
  leaseToken: row.lease_token,
  attempt: row.attempt,
  message: {
    position: row.position,
    xid: row.xid,
    id: row.id,
    topic: row.topic,
    key: row.key,
    type: row.type,
    data: row.data,
    metadata: row.metadata,
    created_at: row.created_at,
  },
});

export function fetchBatch(connection: CommonQueryMethods, subscription: string, consumer: string, batchSize: number | null) {
  return mapErrors(async () => {
    const rows = await connection.any(sql.type(deliverySchema)`
      SELECT subscription, partition_index, lease_token, attempt, position, xid::text AS xid, id, topic, key, type,
             data, metadata, created_at
      FROM pgrelay.fetch_batch(${subscription}, ${consumer}, ${batchSize})`);
    return rows.map(toDelivery);
  });
}

const voidSchema = z.object({}).passthrough();

/**
 * Acknowledges a batch. Its commit does not wait for the WAL flush (synchronous_commit off for
 * this one statement's transaction): an acknowledgement lost in a server crash only means the
 * batch is delivered again once its lease expires, which at-least-once allows, and the fencing
 * token stays safe because every lease (fetch_batch) is still committed durably, and WAL is
 * flushed in order, so a durable lease taken after this acknowledgement makes it durable too.
 */
export function completeBatch(connection: CommonQueryMethods, first: Delivery, outcome: BatchOutcome) {
  return mapErrors(async () => {
    await connection.query(sql.type(voidSchema)`
      SELECT set_config('synchronous_commit', 'off', true),
             pgrelay.complete_batch(${first.subscription}, ${first.partition}, ${first.leaseToken},
               ${sql.array(outcome.acked, 'int8')}, ${sql.array(outcome.failed, 'int8')}, ${sql.array(outcome.errors, 'text')})`);
  });
}

function extendLease(connection: CommonQueryMethods, first: Delivery) {
  return mapErrors(async () => {
    await connection.query(sql.type(voidSchema)`
      SELECT pgrelay.extend_lease(${first.subscription}, ${first.partition}, ${first.leaseToken})`);
  });
}

/** What the loop needs of a node-postgres pool (or client): pg.Pool and pg.Client both fit. */
export type PgQueryable = { query(config: pg.QueryConfig): Promise<pg.QueryResult> };

/** The statements a pull loop runs: on slonik (any connection), or on a node-postgres pool. */
export type LoopStatements = {
  fetch(subscription: string, consumer: string, batchSize: number | null): Promise<Delivery[]>;
  complete(first: Delivery, outcome: BatchOutcome): Promise<void>;
  extend(first: Delivery): Promise<void>;
  /** doorbell_arm() in its own transaction, without waiting for the WAL flush (see createIdleWait). */
  arm(): Promise<void>;
  watermark(): Promise<string>;
  settled(watermark: string): Promise<boolean>;
};

export function slonikStatements(connection: CommonQueryMethods): LoopStatements {
  return {
    fetch: (subscription, consumer, batchSize) => fetchBatch(connection, subscription, consumer, batchSize),
    complete: (first, outcome) => completeBatch(connection, first, outcome),
    extend: (first) => extendLease(connection, first),
    arm: async () => {
      await connection.query(sql.type(voidSchema)`SELECT set_config('synchronous_commit', 'off', true), pgrelay.doorbell_arm()`);
    },
    watermark: () => connection.oneFirst(sql.type(z.object({ w: z.string() }))`SELECT pgrelay.doorbell_watermark()::text AS w`),
    settled: (watermark) =>
      connection.oneFirst(sql.type(z.object({ s: z.boolean() }))`SELECT pgrelay.doorbell_settled(${watermark}::xid8) AS s`),
  };
}

const PG_FETCH = `
  SELECT subscription, partition_index, lease_token::text AS lease_token, attempt, position::text AS position,
         xid::text AS xid, id::text AS id, topic, key, type, data, metadata, created_at
  FROM pgrelay.fetch_batch($1, $2, $3)`;
const PG_COMPLETE = `
  SELECT set_config('synchronous_commit', 'off', true),
         pgrelay.complete_batch($1, $2, $3, $4::int8[], $5::int8[], $6::text[])`;

/**
 * The same statements as slonikStatements on a node-postgres pool, as named (prepared)
 * statements. Rows are checked with the same zod schema; int8 and xid come back as text and
 * created_at becomes the ISO string the slonik pool's type parser makes of it.
 */
export function pgStatements(pool: PgQueryable): LoopStatements {
  const run = (name: string, text: string, values: unknown[] = []): Promise<pg.QueryResult> =>
    mapErrors(() => pool.query({ name, text, values }));
  return {
    fetch: async (subscription, consumer, batchSize) => {
      const { rows } = await run('pgrelay-loop-fetch', PG_FETCH, [subscription, consumer, batchSize]);
      return rows.map((row: Record<string, unknown>) => {
        const createdAt = row.created_at;
        row.created_at = (createdAt instanceof Date ? createdAt : new Date(String(createdAt))).toISOString();
        return toDelivery(deliverySchema.parse(row));
      });
    },
    complete: async (first, outcome) => {
      await run('pgrelay-loop-complete', PG_COMPLETE, [
        first.subscription, first.partition, first.leaseToken, outcome.acked, outcome.failed, outcome.errors,
      ]);
    },
    extend: async (first) => {
      await run('pgrelay-loop-extend', 'SELECT pgrelay.extend_lease($1, $2, $3)', [first.subscription, first.partition, first.leaseToken]);
    },
    arm: async () => {
      await run('pgrelay-loop-arm', `SELECT set_config('synchronous_commit', 'off', true), pgrelay.doorbell_arm()`);
    },
    watermark: async () => String((await run('pgrelay-loop-watermark', 'SELECT pgrelay.doorbell_watermark()::text AS w')).rows[0].w),
    settled: async (watermark) =>
      (await run('pgrelay-loop-settled', 'SELECT pgrelay.doorbell_settled($1::xid8) AS s', [watermark])).rows[0].s === true,
  };
}

/**
 * Waits for work after an empty fetch, following the doorbell protocol: arm, then poll with
 * backoff until every publisher that might have missed the arming has ended, then sleep on NOTIFY
 * (or the safety poll). Returns as soon as there may be work.
 */
export function createIdleWait(db: LoopStatements, waker: Waker | undefined, idlePollMs: number) {
  let watermark: string | null = null;
  let settled = false;
  let backoffMs = 1;
  return {
    reset() {
      watermark = null;
      backoffMs = 1;
    },
    /** since: the waker's generation read before the empty fetch (see Waker.wait). */
    async wait(since?: number): Promise<void> {
      if (waker === undefined) {
        await sleep(idlePollMs);
        return;
      }
      if (since !== undefined && since !== waker.generation) {
        // A ring came while the fetch was in flight: fetch again at once. It disarmed the
        // doorbell, so arm it again before sleeping.
        watermark = null;
        backoffMs = 1;
        return;
      }
      if (watermark === null) {
        settled = false;
        backoffMs = 1;
        // Not waiting for the WAL flush: the protocol needs the arming visible, not durable; one lost in a
        // crash is made good by the waker, whose reconnect wakes every loop (and they arm again).
        await db.arm();
        watermark = await db.watermark();
        return; // fetch once more right after arming
      }
      if (!settled) {
        settled = await db.settled(watermark);
        if (settled) {
          // The last publisher that may have missed the arming ended after the fetch just made:
          // fetch once more before sleeping, or its message waits for the safety poll.
          return;
        }
        if ((await waker.wait(backoffMs, since)) === 'notified') watermark = null;
        backoffMs = Math.min(backoffMs * 2, idlePollMs);
        return;
      }
      const result = await waker.wait(idlePollMs, since);
      if (result === 'notified') watermark = null; // the ring disarmed the doorbell: arm again next time
    },
  };
}

const leaseSchema = z.object({ lease_seconds: z.number() });

/** The subscription's lease_seconds; NotFoundError (PR003) when no subscription has that name. */
export function subscriptionLeaseSeconds(connection: CommonQueryMethods, subscription: string): Promise<number> {
  return mapErrors(async () => {
    const seconds = await connection.maybeOneFirst(sql.type(leaseSchema)`
      SELECT lease_seconds::float8 AS lease_seconds FROM pgrelay.subscriptions WHERE name = ${subscription}`);
    if (seconds === null) {
      throw new NotFoundError(`consume: argument subscription names no subscription: '${subscription}'`, 'PR003', 'subscription');
    }
    return seconds;
  });
}

/** A third of lease_seconds (at least 100 ms): the lease survives two missed beats. */
export const heartbeatFor = (leaseSeconds: number): number => Math.max(100, Math.floor((leaseSeconds * 1000) / 3));

/**
 * Checks that the subscription exists (NotFoundError, PR003, otherwise) and starts its pull
 * loop(s), heartbeating at a third of its lease_seconds unless options.heartbeatMs says otherwise.
 */
export async function consume(connection: CommonQueryMethods, subscription: string, handler: Handler, options: ConsumeOptions = {}): Promise<Consumer> {
  const leaseSeconds = await subscriptionLeaseSeconds(connection, subscription);
  return startConsumer(connection, subscription, handler, { heartbeatMs: heartbeatFor(leaseSeconds), ...options });
}

/** Runs a subscription's pull loop(s) in process until stop(). */
export function startConsumer(connection: CommonQueryMethods, subscription: string, handler: Handler, options: ConsumeOptions = {}): Consumer {
  const consumer = options.consumer ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  const keyConcurrency = options.keyConcurrency ?? 16;
  const idlePollMs = options.idlePollMs ?? 1000;
  const stats = { batches: 0, delivered: 0, failed: 0, leaseLost: 0 };
  let stopping = false;
  // Without heartbeatMs, learnt from the subscription once (again after a failed look-up).
  let heartbeatMs: Promise<number> | undefined = options.heartbeatMs === undefined ? undefined : Promise.resolve(options.heartbeatMs);
  const heartbeatEvery = (): Promise<number> =>
    (heartbeatMs ??= subscriptionLeaseSeconds(connection, subscription).then(heartbeatFor, (error: unknown) => {
      heartbeatMs = undefined;
      report(error);
      return 5_000;
    }));

  const report = (error: unknown): void => {
    if (options.onError) options.onError(error);
  };

  const db = options.pgPool === undefined ? slonikStatements(connection) : pgStatements(options.pgPool);

  const loop = async (): Promise<void> => {
    const idle = createIdleWait(db, options.waker, idlePollMs);
    let errorBackoffMs = 50;
    while (!stopping) {
      let deliveries: Delivery[];
      const generation = options.waker?.generation;
      try {
        deliveries = await db.fetch(subscription, consumer, options.batchSize ?? null);
        errorBackoffMs = 50;
      } catch (error) {
        report(error);
        await sleep(errorBackoffMs);
        errorBackoffMs = Math.min(errorBackoffMs * 2, 5_000);
        continue;
      }
      if (deliveries.length === 0) {
        try {
          await idle.wait(generation);
        } catch (error) {
          report(error);
          await sleep(errorBackoffMs);
        }
        continue;
      }
      idle.reset();
      const first = deliveries[0]!;
      const heartbeat = setInterval(() => {
        db.extend(first).catch(report);
      }, await heartbeatEvery());
      let outcome: BatchOutcome;
      try {
        outcome = options.deliverBatch
          ? await options.deliverBatch(deliveries)
          : await deliverBatch(deliveries, handler, keyConcurrency, () => stopping);
      } finally {
        clearInterval(heartbeat);
      }
      for (let attempt = 0; ; attempt += 1) {
        try {
          await db.complete(first, outcome);
          stats.batches += 1;
          stats.delivered += outcome.acked.length;
          stats.failed += outcome.failed.length;
          options.onBatch?.(outcome, deliveries);
          break;
        } catch (error) {
          const mapped = mapError(error);
          if (mapped instanceof LeaseLostError) {
            stats.leaseLost += 1;
            report(mapped);
            break;
          }
          report(mapped);
          // Give up (the lease expires and the batch is delivered again) after 20 tries, or 3
          // when shutting down, so a database outage cannot hold a SIGTERM for long.
          if (attempt >= (stopping ? 3 : 20)) break;
          await sleep(Math.min(50 * 2 ** attempt, 2_000));
        }
      }
    }
  };

  const loops = Array.from({ length: options.concurrency ?? 1 }, () => loop());
  const done = Promise.all(loops).then(() => undefined);
  return {
    stop: async () => {
      stopping = true;
      options.waker?.wakeAll();
      await done;
    },
    done,
    stats,
  };
}
