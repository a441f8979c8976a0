import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { sql, type DatabasePool } from 'slonik';
import { z } from 'zod';
import {
  createBarePool,
  createPgrelayPool,
  createWaker,
  migrationStatus,
  startConsumer,
  subscriptionMethods,
  type Consumer,
  type Subscription,
  type Waker,
} from '../client/index.js';
import type { RelayMetrics } from './metrics-types.js';
import type { Sink, SinkRegistry } from './sink.js';
import { startDrivers } from './drivers.js';
import { batchPublisher } from './batch-publish.js';

export type Log = {
  info(object: object, message?: string): void;
  warn(object: object, message?: string): void;
  error(object: object, message?: string): void;
};

export type RelayServiceOptions = {
  connectionString: string;
  sinks: SinkRegistry;
  metrics?: RelayMetrics;
  log?: Log;
  /** Lease owner name of this daemon; default host-pid-random. */
  consumer?: string;
  /** Serve only these subscriptions (default: every one whose sink type this daemon has). */
  only?: readonly string[];
  /** How often to pick up new, changed and removed subscriptions. Default 2000 ms. */
  refreshMs?: number;
  /** How often to refresh lag and horizon-stall metrics. Default 5000 ms. */
  lagRefreshMs?: number;
  /** Safety poll while idle. Default 1000 ms. */
  idlePollMs?: number;
  /** Pool size; default 10. */
  maximumPoolSize?: number;
  /** How long /healthz waits for the database before saying unhealthy. Default 3000 ms. */
  healthTimeoutMs?: number;
  /** Drive sagas, projections and syncs too (default true). */
  drivers?: boolean;
  env?: NodeJS.ProcessEnv;
};

type Running = { subscription: Subscription; fingerprint: string; sink: Sink; consumer: Consumer };

export type RelayService = {
  start(): Promise<void>;
  /** Stops fetching, finishes and completes in-flight batches, closes sinks and connections. */
  stop(): Promise<void>;
  health(): Promise<{ ok: boolean; subscriptions: string[]; consumer: string; error?: string }>;
  readonly consumer: string;
};

const quiet: Log = { info: () => {}, warn: () => {}, error: () => {} };

const fingerprint = (subscription: Subscription): string =>
  JSON.stringify([subscription.topics, subscription.sink, subscription.partitions, subscription.batch_size, subscription.lease_seconds]);

const stallSchema = z.object({ seconds: z.number().nullable(), pid: z.number().nullable() });

/** The relay: one pull loop per partition of every subscription whose sink it has, delivering to sinks. */
export function createRelayService(options: RelayServiceOptions): RelayService {
  const consumer = options.consumer ?? `pgrelay-daemon-${hostname()}-${process.pid}-${randomUUID().slice(0, 6)}`;
  const log = options.log ?? quiet;
  const env = options.env ?? process.env;
  const healthTimeoutMs = options.healthTimeoutMs ?? 3000;
  const running = new Map<string, Running>();
  let pool: DatabasePool | undefined;
  // The delivery loops' own statements (fetch, complete, doorbell) on plain node-postgres: see
  // ConsumeOptions.pgPool. Sinks, drivers and the admin queries keep the slonik pool.
  let loopPool: pg.Pool | undefined;
  let waker: Waker | undefined;
  let refreshTimer: NodeJS.Timeout | undefined;
  let lagTimer: NodeJS.Timeout | undefined;
  let drivers: ReturnType<typeof startDrivers> | undefined;
  let refreshing: Promise<void> = Promise.resolve();
  let stopped = false;

  const stopOne = async (name: string): Promise<void> => {
    const entry = running.get(name);
    if (entry === undefined) return;
    running.delete(name);
    await entry.consumer.stop();
    await entry.sink.close();
    log.info({ subscription: name }, 'stopped serving subscription');
  };

  const startOne = async (db: DatabasePool, subscription: Subscription): Promise<void> => {
    const factory = options.sinks[String(subscription.sink.type)]!;
    const sink = await factory(subscription, env);
    const metrics = options.metrics;
    const deliverMany = subscription.sink.batch_publish === true ? sink.deliverMany?.bind(sink) : undefined;
    const started = startConsumer(db, subscription.name, (message, delivery) => sink.deliver(message, delivery), {
      consumer,
      pgPool: loopPool,
      deliverBatch: deliverMany === undefined ? undefined : batchPublisher({ deliverMany }),
      concurrency: subscription.partitions,
      waker,
      idlePollMs: options.idlePollMs ?? 1000,
      // A third of the lease: a slow batch (a sink taking its time) keeps its partition.
      heartbeatMs: Math.max(100, Math.floor((subscription.lease_seconds * 1000) / 3)),
      keyConcurrency: Number(subscription.sink.concurrency ?? 16),
      onBatch: (outcome, deliveries) => {
        if (metrics === undefined) return;
        metrics.delivered(subscription.name, outcome.acked.length);
        metrics.failed(subscription.name, outcome.failed.length);
        const dead = deliveries.filter(
          (d) => outcome.failed.includes(d.message.position) && d.attempt >= subscription.max_attempts,
        ).length;
        if (dead > 0) metrics.deadLettered(subscription.name, dead);
        for (const ms of outcome.latenciesMs) metrics.deliveryLatency(subscription.name, ms / 1000);
      },
      onError: (error) => log.warn({ subscription: subscription.name, err: String(error) }, 'delivery loop error'),
    });
    running.set(subscription.name, { subscription, fingerprint: fingerprint(subscription), sink, consumer: started });
    log.info({ subscription: subscription.name, sink: subscription.sink.type, partitions: subscription.partitions }, 'serving subscription');
  };

  const refresh = async (db: DatabasePool): Promise<void> => {
    const all = await subscriptionMethods(db).list();
    const wanted = all.filter(
      (s) => String(s.sink.type) in options.sinks && (options.only === undefined || options.only.includes(s.name)),
    );
    const wantedNames = new Set(wanted.map((s) => s.name));
    for (const name of [...running.keys()]) {
      if (!wantedNames.has(name)) await stopOne(name);
    }
    for (const subscription of wanted) {
      const current = running.get(subscription.name);
      if (current !== undefined && current.fingerprint === fingerprint(subscription)) continue;
      if (current !== undefined) await stopOne(subscription.name);
      if (stopped) return;
      try {
        await startOne(db, subscription);
      } catch (error) {
        log.error({ subscription: subscription.name, err: String(error) }, 'cannot start sink');
      }
    }
  };

  const refreshLag = async (db: DatabasePool): Promise<void> => {
    const metrics = options.metrics;
    if (metrics === undefined) return;
    for (const row of await subscriptionMethods(db).lag()) {
      if (!running.has(row.subscription_name)) continue;
      metrics.setLag(row.subscription_name, row.partition_index, Number(row.pending), row.lag_seconds);
    }
    const stall = await db.maybeOne(sql.type(stallSchema)`
      SELECT seconds, pid FROM pgrelay.log_stall() ORDER BY seconds DESC NULLS LAST LIMIT 1`);
    metrics.setHorizonStall(stall?.seconds ?? 0, stall?.pid ?? null);
  };

  const schedule = (db: DatabasePool): void => {
    refreshTimer = setInterval(() => {
      refreshing = refreshing
        .then(() => (stopped ? undefined : refresh(db)))
        .catch((error) => log.warn({ err: String(error) }, 'subscription refresh failed'));
    }, options.refreshMs ?? 2000);
    lagTimer = setInterval(() => {
      refreshLag(db).catch((error) => log.warn({ err: String(error) }, 'lag refresh failed'));
    }, options.lagRefreshMs ?? 5000);
  };

  return {
    consumer,
    start: async () => {
      const status = await migrationStatus(options.connectionString);
      if (status.unknown.length > 0) {
        throw new Error(
          `pgrelay daemon: the database was migrated by a newer pgrelay (${status.unknown.join(', ')}); upgrade this daemon`,
        );
      }
      if (status.pending.length > 0 || status.installedVersion === null) {
        throw new Error('pgrelay daemon: pgrelay is not installed or not up to date here: run `pgrelay migrate up` first');
      }
      pool = await createPgrelayPool(options.connectionString, {
        maximumPoolSize: options.maximumPoolSize ?? 10,
        applicationName: 'pgrelay-daemon',
      });
      loopPool = createBarePool(options.connectionString, {
        maximumPoolSize: options.maximumPoolSize ?? 10,
        applicationName: 'pgrelay-daemon',
      });
      waker = await createWaker(options.connectionString, {
        onError: (error) => log.warn({ err: String(error) }, 'listen connection error'),
        onReconnect: () => log.warn({}, 'listen connection lost: reconnecting'),
      });
      await refresh(pool);
      await refreshLag(pool).catch((error) => log.warn({ err: String(error) }, 'lag refresh failed'));
      schedule(pool);
      if (options.drivers !== false) drivers = startDrivers({ pool, waker, log, env, metrics: options.metrics });
      log.info({ consumer, subscriptions: [...running.keys()] }, 'relay started');
    },
    stop: async () => {
      stopped = true;
      clearInterval(refreshTimer);
      clearInterval(lagTimer);
      // Each step on its own: a connection that died just before (a LISTEN connection in the
      // middle of reconnecting, say) must not keep the rest from being released.
      const step = async (what: string, fn: () => Promise<unknown> | undefined): Promise<void> => {
        try {
          await fn();
        } catch (error) {
          log.warn({ err: String(error) }, `stop: ${what} failed`);
        }
      };
      await step('subscription refresh', () => refreshing);
      await Promise.all([...running.keys()].map((name) => step(`stopping ${name}`, () => stopOne(name))));
      await step('drivers', () => drivers?.stop());
      await step('listen connection', () => waker?.close());
      await step('loop pool', () => loopPool?.end());
      await step('pool', () => pool?.end());
      log.info({ consumer }, 'relay stopped');
    },
    health: async () => {
      const subscriptions = [...running.keys()];
      if (pool === undefined || stopped) return { ok: false, subscriptions, consumer, error: 'not running' };
      try {
        // Bounded: an unreachable server must turn into a 503, not a probe that hangs.
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          pool.oneFirst(sql.type(z.object({ ok: z.number() }))`SELECT 1 AS ok`),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`database did not answer within ${healthTimeoutMs} ms`)), healthTimeoutMs);
          }),
        ]).finally(() => clearTimeout(timer));
        return { ok: true, subscriptions, consumer };
      } catch (error) {
        return { ok: false, subscriptions, consumer, error: String(error) };
      }
    },
  };
}
