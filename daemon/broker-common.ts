import { readFileSync } from 'node:fs';
import type { Delivery, Message } from '../client/index.js';
import { toCloudEvent } from './cloudevents.js';

/**
 * What the NATS and AMQP sinks share: credentials named by the sink JSON (never held in it), the
 * message envelope (body, content type, headers), redaction of URLs in error messages, and a
 * single-flight connection with reconnect backoff.
 */

export type SinkConfig = Record<string, unknown>;

/** Keys that would hold a credential in the database: refused, the sink must name env/files. */
const INLINE_CREDENTIALS = ['password', 'pass', 'token', 'creds', 'nkey', 'secret', 'url_password'];

export function refuseInlineCredentials(kind: string, sink: SinkConfig): void {
  for (const key of INLINE_CREDENTIALS) {
    if (key in sink) {
      throw new Error(
        `${kind} sink must not hold a credential itself ("${key}"): name an environment variable (${key === 'token' ? 'token_env' : 'pass_env'}) or a file (${key === 'token' ? 'token_file' : 'pass_file'})`,
      );
    }
  }
}

/** A URL's password, if any: the sink JSON must not carry one (put the URL in url_env instead). */
export function urlHasPassword(url: string): boolean {
  try {
    return new URL(url).password !== '';
  } catch {
    return /\/\/[^/@\s]*:[^/@\s]*@/.test(url);
  }
}

/**
 * A credential named by the sink: `<name>_env` (an environment variable) or `<name>_file` (a file,
 * trailing newline trimmed). Undefined when neither is given; an error naming the variable or file
 * (never the value) when the named one is missing or empty.
 */
export function readCredential(kind: string, sink: SinkConfig, name: string, env: NodeJS.ProcessEnv): string | undefined {
  const envName = sink[`${name}_env`];
  if (envName !== undefined) {
    if (typeof envName !== 'string' || envName === '') throw new Error(`${kind} sink: "${name}_env" must name an environment variable`);
    const value = env[envName];
    if (value === undefined || value === '') throw new Error(`${kind} sink: environment variable ${envName} (${name}_env) is not set`);
    return value;
  }
  const file = sink[`${name}_file`];
  if (file !== undefined) {
    if (typeof file !== 'string' || file === '') throw new Error(`${kind} sink: "${name}_file" must be a file path`);
    let value: string;
    try {
      value = readFileSync(file, 'utf8').replace(/\r?\n$/, '');
    } catch (error) {
      throw new Error(`${kind} sink: cannot read ${name}_file ${file}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    if (value === '') throw new Error(`${kind} sink: ${name}_file ${file} is empty`);
    return value;
  }
  return undefined;
}

/** `text` with every URL's userinfo and every known secret value replaced by "***". */
export function redact(text: string, secrets: readonly (string | undefined)[] = []): string {
  let out = text.replace(/([a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/gi, '$1***@');
  for (const secret of secrets) {
    if (secret !== undefined && secret.length >= 3) out = out.split(secret).join('***');
  }
  return out;
}

export const positiveNumber = (kind: string, sink: SinkConfig, key: string, fallback: number, max = 3_600_000): number => {
  const raw = sink[key];
  if (raw === undefined) return fallback;
  if (typeof raw !== 'number' || !Number.isFinite(raw) || raw <= 0 || raw > max) {
    throw new Error(`${kind} sink: "${key}" must be a positive number up to ${max}`);
  }
  return raw;
};

export const optionalString = (kind: string, sink: SinkConfig, key: string): string | undefined => {
  const raw = sink[key];
  if (raw === undefined) return undefined;
  if (typeof raw !== 'string' || raw === '') throw new Error(`${kind} sink: "${key}" must be a non-empty string`);
  return raw;
};

export type ContentMode = 'structured' | 'binary';

export function contentMode(kind: string, sink: SinkConfig): ContentMode {
  const mode = sink.content_mode ?? 'structured';
  if (mode !== 'structured' && mode !== 'binary') throw new Error(`${kind} sink: "content_mode" must be "structured" or "binary"`);
  return mode;
}

export type Envelope = {
  body: Buffer;
  contentType: string;
  /** CloudEvents attributes by name (specversion, id, source, type, subject, time, ...). */
  cloudEvent: Record<string, string>;
  /** pgrelay's own headers: pgrelay-topic, -key (keyed messages only), -type, -position, -subscription, -attempt. */
  pgrelay: Record<string, string>;
};

/**
 * The message as the broker sinks send it. Structured mode (default): the body is the CloudEvent
 * in JSON, exactly as the webhook sink posts it (application/cloudevents+json). Binary mode: the
 * body is the message data as JSON (application/json). In both modes the CloudEvents attributes
 * and pgrelay's own fields also travel as headers, so brokers and consumers can route and filter
 * without parsing the body.
 */
export function envelope(message: Message, subscription: string, source: string, attempt: number, mode: ContentMode): Envelope {
  const event = toCloudEvent(message, source);
  const cloudEvent: Record<string, string> = {
    specversion: event.specversion,
    id: event.id,
    source: event.source,
    type: event.type,
    ...(event.subject === undefined ? {} : { subject: event.subject }),
    time: event.time,
    datacontenttype: event.datacontenttype,
    pgrelaytopic: event.pgrelaytopic,
    pgrelayposition: event.pgrelayposition,
  };
  const pgrelay: Record<string, string> = {
    'pgrelay-topic': message.topic,
    ...(message.key === null ? {} : { 'pgrelay-key': message.key }),
    'pgrelay-type': message.type,
    'pgrelay-position': message.position,
    'pgrelay-subscription': subscription,
    'pgrelay-attempt': String(attempt),
  };
  if (mode === 'binary') {
    return { body: Buffer.from(JSON.stringify(message.data ?? null)), contentType: 'application/json', cloudEvent, pgrelay };
  }
  return { body: Buffer.from(JSON.stringify(event)), contentType: 'application/cloudevents+json; charset=utf-8', cloudEvent, pgrelay };
}

/** A header value safe for NATS headers: %-encoding of "%", control and non-ASCII characters. */
export function headerValue(value: string): string {
  return /^[\x20-\x24\x26-\x7e]*$/.test(value) ? value : encodeURIComponent(value).replace(/%20/g, ' ');
}

export type Reconnector<T> = {
  /**
   * The live connection, or a new one: one attempt at a time, shared by every caller. After a
   * failed attempt, calls within the backoff delay reject at once with that failure (so a broker
   * that is down makes deliveries fail fast and retry with the subscription's backoff).
   */
  get(): Promise<T>;
  /** Forgets `connection` (it broke); the next get() connects again. */
  drop(connection: T): void;
  /** Closes the connection; get() rejects from now on. */
  close(): Promise<void>;
};

export function createReconnector<T>(options: {
  connect: () => Promise<T>;
  close: (connection: T) => Promise<void>;
  describe: (error: unknown) => string;
  initialDelayMs?: number;
  maxDelayMs?: number;
}): Reconnector<T> {
  const initial = options.initialDelayMs ?? 100;
  const max = options.maxDelayMs ?? 5_000;
  let current: T | undefined;
  let pending: Promise<T> | undefined;
  let delay = initial;
  let retryAt = 0;
  let lastError = '';
  let closed = false;

  const attempt = async (): Promise<T> => {
    try {
      const connection = await options.connect();
      if (closed) {
        await options.close(connection).catch(() => {});
        throw new Error('sink closed');
      }
      current = connection;
      delay = initial;
      retryAt = 0;
      return connection;
    } catch (error) {
      lastError = closed ? 'sink closed' : options.describe(error);
      retryAt = Date.now() + delay * (0.8 + Math.random() * 0.4);
      delay = Math.min(delay * 2, max);
      throw new Error(lastError);
    }
  };

  return {
    get: () => {
      if (closed) return Promise.reject(new Error('sink closed'));
      if (current !== undefined) return Promise.resolve(current);
      if (pending !== undefined) return pending;
      const wait = retryAt - Date.now();
      if (wait > 0) return Promise.reject(new Error(`${lastError} (next connection attempt in ${Math.ceil(wait)} ms)`));
      const started = attempt();
      pending = started;
      const settled = (): void => {
        if (pending === started) pending = undefined;
      };
      started.then(settled, settled);
      return started;
    },
    drop: (connection) => {
      if (current === connection) current = undefined;
    },
    close: async () => {
      closed = true;
      await pending?.catch(() => {});
      const connection = current;
      current = undefined;
      if (connection !== undefined) await options.close(connection).catch(() => {});
    },
  };
}

/** Rejects with `message` when `promise` has not settled after `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Turns any failure into the sink's error text: prefixed with the sink kind, secrets redacted. */
export function errorDescriber(kind: string, secrets: readonly (string | undefined)[]): (error: unknown) => string {
  return (error) => redact(`${kind} ${error instanceof Error ? error.message : String(error)}`, secrets);
}

/**
 * A batch sent over one channel or connection: when `acquire` fails every delivery fails with
 * that error; otherwise each is sent in order (sends start synchronously, so they go out in
 * order) and the outcomes awaited together, null for acknowledged.
 */
export async function deliverBatch<C>(
  deliveries: readonly Delivery[],
  acquire: () => Promise<C>,
  send: (channel: C, delivery: Delivery) => Promise<void>,
): Promise<Array<Error | null>> {
  let channel: C;
  try {
    channel = await acquire();
  } catch (error) {
    const failure = error instanceof Error ? error : new Error(String(error));
    return deliveries.map(() => failure);
  }
  const settled = await Promise.allSettled(deliveries.map((delivery) => send(channel, delivery)));
  return settled.map((result) => (result.status === 'fulfilled' ? null : (result.reason as Error)));
}
