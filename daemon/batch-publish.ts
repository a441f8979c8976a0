import type { BatchOutcome, Delivery } from '../client/index.js';
import type { Sink } from './sink.js';

/**
 * The batch handler for sinks with "batch_publish": true. The sink sends the whole batch at once
 * and reports one result per message; the outcome is then reported exactly as one-at-a-time
 * delivery would report it: for each (topic, key) stream, the messages before its first failure
 * are acknowledged, the first failure is failed (retried, then dead-lettered), and the rest of that
 * stream is left unacknowledged so it comes again behind the retry.
 *
 * The trade-off (documented in the README): those later messages already reached the broker, so
 * after a failure in the middle of a key's run the broker holds them ahead of the retried one, and
 * they arrive twice (JetStream drops the second copy within its duplicate window; RabbitMQ
 * consumers drop it by message_id). Without batch_publish a key's next message is sent only after
 * the previous one was confirmed, and per-key order in the broker is strict.
 */
export function batchPublisher(sink: Required<Pick<Sink, 'deliverMany'>>): (deliveries: readonly Delivery[]) => Promise<BatchOutcome> {
  return async (deliveries) => {
    const results = await sink.deliverMany(deliveries);
    const outcome: BatchOutcome = { acked: [], failed: [], errors: [], latenciesMs: [] };
    const stopped = new Set<string>();
    const now = Date.now();
    deliveries.forEach((delivery, index) => {
      const { message } = delivery;
      const stream = message.key === null ? `p:${message.position}` : `k:${message.topic}\u001f${message.key}`;
      if (stopped.has(stream)) return;
      const result = results[index];
      const error = result === undefined ? new Error('the sink returned no result for this message') : result;
      if (error === null) {
        outcome.acked.push(message.position);
        outcome.latenciesMs.push(now - Date.parse(message.created_at));
      } else {
        outcome.failed.push(message.position);
        outcome.errors.push(error.message.slice(0, 2000));
        stopped.add(stream);
      }
    });
    return outcome;
  };
}
