import type { SinkRegistry } from './sink.js';
import { createStdoutSink } from './stdout-sink.js';
import { createWebhookSink } from './webhook-sink.js';

/**
 * The sinks the daemon has by default; a subscription with another sink type is not served.
 * The broker clients are loaded only when a subscription uses them.
 */
export const defaultSinks: SinkRegistry = {
  webhook: createWebhookSink,
  stdout: createStdoutSink,
  nats: async (subscription, env) => (await import('./nats-sink.js')).createNatsSink(subscription, env),
  amqp: async (subscription, env) => (await import('./amqp-sink.js')).createAmqpSink(subscription, env),
};
