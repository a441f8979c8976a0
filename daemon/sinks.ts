import type { SinkRegistry } from './sink.js';
import { createStdoutSink } from './stdout-sink.js';
import { createWebhookSink } from './webhook-sink.js';

/** The sinks the daemon has by default; a subscription with another sink type is not served. */
export const defaultSinks: SinkRegistry = {
  webhook: createWebhookSink,
  stdout: createStdoutSink,
};
