import { sql, type CommonQueryMethods, type DatabasePool } from 'slonik';
import { createLeanQuery, createPgrelayPool, type LeanQuery, type PoolOptions } from './pool.js';
import { horizonStall, publish, publishMany, read, versionSchema, type HorizonStall, type ReadOptions } from './log.js';
import type { Cursor, Message, PublishInput, PublishOptions } from './schemas.js';
import { subscriptionMethods, type SubscriptionMethods } from './subscriptions.js';
import { consume, type ConsumeOptions, type Consumer, type Handler, type PgQueryable } from './consume.js';
import { createWaker, type Waker } from './waker.js';
import { syncMethods, type SyncMethods } from './sync.js';
import { inboxMethods, type InboxMethods } from './inbox.js';
import { createInboxHandler, type InboxHandler } from './inbox-handler.js';
import { idempotencyMethods, idempotent, type IdempotencyMethods, type IdempotentOptions } from './idempotency.js';
import { streamMethods, type StreamMethods } from './events.js';
import { projectionMethods, type ProjectionMethods } from './projections.js';
import { sagaMethods, type SagaMethods } from './sagas.js';
import { sagaStartGrouping, type SagaStartGrouping, type SagaStartGroupingOption } from './saga-start-group.js';
import { cdcMethods, type CdcMethods } from './cdc.js';

export type ClientOptions =
  | ({
      connectionString: string;
      /**
       * Group concurrent sagas.start calls into one statement (one transaction) each: true (the
       * default), false (one statement per start), or { maxGroupSize, maxInFlight }. See README, Sagas.
       */
      sagaStartGrouping?: SagaStartGroupingOption;
    } & PoolOptions)
  | { pool: DatabasePool }
  | { connection: CommonQueryMethods };

export type PgrelayClient = {
  /** The slonik connection every method uses: the pool, or the transaction inside transaction(). */
  readonly connection: CommonQueryMethods;
  publish(input: PublishInput, options?: PublishOptions): Promise<string>;
  publishMany(inputs: readonly PublishInput[], options?: PublishOptions): Promise<string[]>;
  read(cursor?: Cursor, options?: ReadOptions): Promise<{ messages: Message[]; cursor: Cursor }>;
  /** Runs fn in one transaction: business writes through tx.connection and tx.publish commit together. */
  transaction<T>(fn: (tx: PgrelayClient) => Promise<T>): Promise<T>;
  /** Subscriptions, dead letters and retention. */
  readonly subscriptions: SubscriptionMethods;
  /** Syncs: define/drop in the source database, run same-database ones, read checkpoints and lag. */
  readonly syncs: SyncMethods;
  /**
   * Pulls a subscription (sink {"type":"consumer"}) in process: handler runs once per message,
   * a (topic, key) stream in order and never concurrently; a throw is a failed delivery (retried
   * with backoff, dead-lettered after max_attempts). Resolve stop() for a clean shutdown.
   */
  consume(subscription: string, handler: Handler, options?: ConsumeOptions & { inbox?: false }): Promise<Consumer>;
  /**
   * With { inbox: true } each message's handler runs in a transaction that first records the
   * message in the inbox (consumer name: the subscription): a redelivered message is skipped, and
   * side effects written through delivery.transaction commit once, together with the record.
   */
  consume(subscription: string, handler: InboxHandler, options: ConsumeOptions & { inbox: true }): Promise<Consumer>;
  /** Inbox records (effectively-once processing) and their expiry. */
  readonly inbox: InboxMethods;
  /** Idempotency keys: begin / complete / abandon / expire. */
  readonly idempotency: IdempotencyMethods;
  /** Runs fn once per key (see idempotent() in idempotency.ts); duplicates get the stored response. */
  idempotent<T>(key: string, request: unknown, fn: () => Promise<T> | T, options?: IdempotentOptions<T>): Promise<T>;
  /** Event-store streams: append with expected version, read, last, version, fold, snapshot. */
  readonly streams: StreamMethods;
  /** Projections (read models fed by the log): define, run, catchUp, rebuild, drop, lag. */
  readonly projections: ProjectionMethods;
  /** Sagas: define, start, status, cancel, retry, skip, resolve, tick; lease/complete/fail/heartbeat for workers. */
  readonly sagas: SagaMethods;
  /** Change data capture: enable/disable/list captured tables, resumable snapshot backfills. */
  readonly cdc: CdcMethods;
  /** What holds the read horizon back (pgrelay.log_stall()): long open transactions stall every reader. */
  horizonStall(): Promise<HorizonStall[]>;
  /** The installed pgrelay version (pgrelay.version()). */
  version(): Promise<string>;
  /** Closes the pool if this client created it. */
  end(): Promise<void>;
};

function bind(
  connection: CommonQueryMethods,
  end: () => Promise<void>,
  waker: () => Promise<Waker | undefined> = async () => undefined,
  loopPool: () => PgQueryable | undefined = () => undefined,
  lean?: LeanQuery,
  grouping?: SagaStartGrouping,
): PgrelayClient {
  const client: PgrelayClient = {
    connection,
    publish: (input, options) => publish(connection, input, options),
    publishMany: (inputs, options) => publishMany(connection, inputs, options),
    read: (cursor, options) => read(connection, cursor, options),
    transaction: (fn) => connection.transaction((tx) => fn(bind(tx, async () => {}))),
    subscriptions: subscriptionMethods(connection),
    syncs: syncMethods(connection),
    // Without inbox the overloads only admit a plain Handler, hence the cast.
    consume: async (subscription: string, handler: Handler | InboxHandler, options: ConsumeOptions & { inbox?: boolean } = {}) =>
      consume(connection, subscription, options.inbox === true ? createInboxHandler(connection, subscription, handler) : (handler as Handler), {
        waker: options.waker ?? (await waker()),
        pgPool: options.pgPool ?? loopPool(),
        ...options,
      }),
    inbox: inboxMethods(connection),
    idempotency: idempotencyMethods(connection),
    idempotent: (key, request, fn, options) => idempotent(connection, key, request, fn, options),
    streams: streamMethods(connection),
    projections: projectionMethods(connection),
    sagas: sagaMethods(connection, lean, grouping),
    cdc: cdcMethods(connection),
    horizonStall: () => horizonStall(connection),
    version: () => connection.oneFirst(sql.type(versionSchema)`SELECT pgrelay.version() AS version`),
    end,
  };
  return client;
}

/**
 * createClient({ connectionString }) makes its own pool (closed by end());
 * createClient({ pool }) or createClient({ connection }) uses yours (a pool or a transaction).
 */
export async function createClient(options: ClientOptions): Promise<PgrelayClient> {
  if ('connectionString' in options) {
    const grouping = sagaStartGrouping(options.sagaStartGrouping, options.maximumPoolSize ?? 10);
    const pool = await createPgrelayPool(options.connectionString, options);
    // One bare node-postgres pool, opened on first use, for the hot paths: consume()'s loop
    // statements (see ConsumeOptions.pgPool) and sagas.start.
    const lean = createLeanQuery(options.connectionString, options);
    let waker: Promise<Waker> | undefined;
    const getWaker = (): Promise<Waker> => (waker ??= createWaker(options.connectionString));
    return bind(
      pool,
      async () => {
        if (waker !== undefined) await (await waker).close();
        await lean.end();
        await pool.end();
      },
      getWaker,
      lean.pool,
      lean,
      grouping,
    );
  }
  if ('pool' in options) return bind(options.pool, async () => {});
  return bind(options.connection, async () => {});
}
