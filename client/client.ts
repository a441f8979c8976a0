import { sql, type CommonQueryMethods, type DatabasePool } from 'slonik';
import { createPgrelayPool, type PoolOptions } from './pool.js';
import { publish, publishMany, read, versionSchema, type ReadOptions } from './log.js';
import type { Cursor, Message, PublishInput, PublishOptions } from './schemas.js';
import { subscriptionMethods, type SubscriptionMethods } from './subscriptions.js';
import { startConsumer, type ConsumeOptions, type Consumer, type Handler } from './consume.js';
import { createWaker, type Waker } from './waker.js';
import { syncMethods, type SyncMethods } from './sync.js';

export type ClientOptions =
  | ({ connectionString: string } & PoolOptions)
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
  consume(subscription: string, handler: Handler, options?: ConsumeOptions): Promise<Consumer>;
  /** The installed pgrelay version (pgrelay.version()). */
  version(): Promise<string>;
  /** Closes the pool if this client created it. */
  end(): Promise<void>;
};

function bind(
  connection: CommonQueryMethods,
  end: () => Promise<void>,
  waker: () => Promise<Waker | undefined> = async () => undefined,
): PgrelayClient {
  const client: PgrelayClient = {
    connection,
    publish: (input, options) => publish(connection, input, options),
    publishMany: (inputs, options) => publishMany(connection, inputs, options),
    read: (cursor, options) => read(connection, cursor, options),
    transaction: (fn) => connection.transaction((tx) => fn(bind(tx, async () => {}))),
    subscriptions: subscriptionMethods(connection),
    syncs: syncMethods(connection),
    consume: async (subscription, handler, options = {}) =>
      startConsumer(connection, subscription, handler, { waker: options.waker ?? (await waker()), ...options }),
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
    const pool = await createPgrelayPool(options.connectionString, options);
    let waker: Promise<Waker> | undefined;
    const getWaker = (): Promise<Waker> => (waker ??= createWaker(options.connectionString));
    return bind(
      pool,
      async () => {
        if (waker !== undefined) await (await waker).close();
        await pool.end();
      },
      getWaker,
    );
  }
  if ('pool' in options) return bind(options.pool, async () => {});
  return bind(options.connection, async () => {});
}
