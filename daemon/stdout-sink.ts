import type { Subscription } from '../client/index.js';
import { toCloudEvent } from './cloudevents.js';
import type { Sink } from './sink.js';

/** One JSON line per message (the CloudEvent plus the subscription), honouring backpressure. */
export function createStdoutSink(subscription: Subscription, _env: NodeJS.ProcessEnv, stream: NodeJS.WritableStream = process.stdout): Sink {
  const source = `pgrelay://${subscription.name}`;
  return {
    type: 'stdout',
    deliver: (message) =>
      new Promise<void>((resolve, reject) => {
        const line = `${JSON.stringify({ subscription: subscription.name, ...toCloudEvent(message, source) })}\n`;
        const flushed = stream.write(line, (error) => (error ? reject(error) : undefined));
        if (flushed) resolve();
        else stream.once('drain', () => resolve());
      }),
    close: async () => {},
  };
}
