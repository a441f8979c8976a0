import type { Subscription } from '../client/index.js';
import { toCloudEvent } from './cloudevents.js';
import { readSecret } from './secrets.js';
import { signatureHeader } from './signature.js';
import type { Sink } from './sink.js';

/**
 * One HTTP POST per message, CloudEvents 1.0 structured JSON. Any 2xx acknowledges; another
 * status, a network error or a timeout (sink timeout_ms, default 10 s) rejects, and the message is
 * retried with backoff. With a secret the request is signed (see signature.ts).
 */
export function createWebhookSink(subscription: Subscription, env: NodeJS.ProcessEnv): Sink {
  const sink = subscription.sink as Record<string, unknown>;
  const url = String(sink.url);
  const timeoutMs = typeof sink.timeout_ms === 'number' ? sink.timeout_ms : 10_000;
  const secret = readSecret(sink, env);
  const extraHeaders = (typeof sink.headers === 'object' && sink.headers !== null ? sink.headers : {}) as Record<string, string>;
  const source = typeof sink.source === 'string' ? sink.source : `pgrelay://${subscription.name}`;
  return {
    type: 'webhook',
    async deliver(message, delivery) {
      const body = JSON.stringify(toCloudEvent(message, source));
      const headers: Record<string, string> = {
        ...extraHeaders,
        'content-type': 'application/cloudevents+json; charset=utf-8',
        'x-pgrelay-id': message.id,
        'x-pgrelay-attempt': String(delivery.attempt),
        'x-pgrelay-subscription': subscription.name,
      };
      if (secret !== undefined) headers['x-pgrelay-signature'] = signatureHeader(secret, body);
      let response: Response;
      try {
        response = await fetch(url, { method: 'POST', headers, body, signal: AbortSignal.timeout(timeoutMs) });
      } catch (error) {
        const name = (error as Error).name;
        if (name === 'TimeoutError' || name === 'AbortError') throw new Error(`webhook timeout after ${timeoutMs} ms`);
        throw new Error(`webhook request failed: ${(error as Error).message}`);
      }
      if (response.status >= 200 && response.status < 300) {
        await response.body?.cancel();
        return;
      }
      const text = (await response.text().catch(() => '')).slice(0, 200);
      throw new Error(`webhook answered HTTP ${response.status}${text ? `: ${text}` : ''}`);
    },
    close: async () => {},
  };
}
