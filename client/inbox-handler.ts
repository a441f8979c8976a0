import type { CommonQueryMethods } from 'slonik';
import type { Delivery, Handler } from './consume.js';
import { inboxReceive } from './inbox.js';
import type { Message } from './schemas.js';

/**
 * What an inbox handler receives: the ordinary Delivery plus `transaction`, the connection of the
 * transaction that also records the message in the inbox. Write the side effects through it so
 * they commit (or roll back) together with the record.
 *
 * Design: rather than widening Delivery or Handler for every consumer, an inbox consumer's handler
 * takes this subtype. A plain Handler (which ignores `transaction`) is still accepted, because a
 * function of Delivery also accepts an InboxDelivery.
 */
export type InboxDelivery = Delivery & { transaction: CommonQueryMethods };

export type InboxHandler = (message: Message, delivery: InboxDelivery) => Promise<void>;

/**
 * Wraps an inbox handler into a Handler for startConsumer: each message runs in its own
 * transaction that first records (consumer, message id) with pgrelay.inbox_receive. A message
 * seen before is skipped (and acknowledged); a throw rolls back the record with the side effects,
 * so the retry runs the handler again. `consumer` is the inbox's consumer name (the subscription).
 */
export function createInboxHandler(connection: CommonQueryMethods, consumer: string, handler: InboxHandler): Handler {
  return async (message, delivery) => {
    await connection.transaction(async (transaction) => {
      if (await inboxReceive(transaction, consumer, message.id)) {
        await handler(message, { ...delivery, transaction });
      }
    });
  };
}
