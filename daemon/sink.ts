import type { Delivery, Message, Subscription } from '../client/index.js';

/**
 * Where the daemon delivers a subscription's messages. deliver() resolves when the destination
 * has acknowledged the message (any 2xx, a broker's publish confirm, a written line) and rejects
 * otherwise: the message is then retried with backoff and dead-lettered after max_attempts.
 * The daemon calls deliver() for one (topic, key) stream at a time, in order.
 */
export type Sink = {
  readonly type: string;
  deliver(message: Message, delivery: Delivery): Promise<void>;
  /**
   * Optional, used when the sink JSON has "batch_publish": true: sends a whole batch at once (one
   * round of broker confirms instead of one per message) and resolves with one result per
   * delivery, in order: null when the destination acknowledged it, else the reason it did not.
   */
  deliverMany?(deliveries: readonly Delivery[]): Promise<Array<Error | null>>;
  close(): Promise<void>;
};

/** Builds the sink for a subscription from its `sink` JSON. Secrets come from env or files. */
export type SinkFactory = (subscription: Subscription, env: NodeJS.ProcessEnv) => Sink | Promise<Sink>;

export type SinkRegistry = Readonly<Record<string, SinkFactory>>;
