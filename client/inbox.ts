import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { mapErrors } from './errors.js';

const receivedSchema = z.object({ received: z.boolean() });
const countSchema = z.object({ n: z.string() });

/**
 * Records that `consumer` is processing message `messageId`, inside the caller's transaction.
 * Returns true the first time (apply the side effects), false for a redelivery (skip them): the
 * record commits or rolls back with the side effects, so processing is effectively once. Call it
 * on a transaction connection; outside one the record commits at once and protects nothing.
 */
export function inboxReceive(connection: CommonQueryMethods, consumer: string, messageId: string): Promise<boolean> {
  return mapErrors(() =>
    connection.oneFirst(sql.type(receivedSchema)`
      SELECT pgrelay.inbox_receive(${consumer}, ${messageId}::uuid) AS received`),
  );
}

export type InboxExpireOptions = {
  /** A PostgreSQL interval ('7 days'); default the setting pgrelay.inbox_retention, else 7 days. */
  olderThan?: string;
  /** Rows deleted per statement; default 10,000. */
  batchSize?: number;
};

/** Forgets inbox records older than the retention. Returns how many it removed (a decimal string). */
export function inboxExpire(connection: CommonQueryMethods, options: InboxExpireOptions = {}): Promise<string> {
  return mapErrors(() =>
    connection.oneFirst(sql.type(countSchema)`
      SELECT pgrelay.inbox_expire(${options.olderThan ?? null}::interval, ${options.batchSize ?? 10_000})::text AS n`),
  );
}

export function inboxMethods(connection: CommonQueryMethods) {
  return {
    receive: (consumer: string, messageId: string) => inboxReceive(connection, consumer, messageId),
    expire: (options: InboxExpireOptions = {}) => inboxExpire(connection, options),
  };
}
export type InboxMethods = ReturnType<typeof inboxMethods>;
