import amqp, { type ChannelModel, type ConfirmChannel, type Options } from 'amqplib';
import type { Delivery, Subscription } from '../client/index.js';
import {
  contentMode,
  createReconnector,
  deliverBatch,
  envelope,
  errorDescriber,
  optionalString,
  positiveNumber,
  readCredential,
  refuseInlineCredentials,
  urlHasPassword,
  withTimeout,
  type SinkConfig,
} from './broker-common.js';
import type { Sink } from './sink.js';
import { compileTemplate } from './templates.js';

/**
 * RabbitMQ (AMQP 0-9-1) sink: {"type":"amqp", "url": "amqp://host:5672/vhost" (no password) |
 * "url_env"|"url_file" (a full URL, credentials included), "user"?, "pass_env"|"pass_file"?,
 * "exchange": name ("" is the default exchange), "exchange_type"?: declared durable when given,
 * otherwise the exchange must exist, "routing_key": "<template>", "mandatory"?: default true,
 * "timeout_ms"?, "content_mode"?, "source"?, "batch_publish"?}.
 *
 * Messages are persistent, carry message_id = the message uuid, and deliver() resolves only on the
 * broker's publisher confirm. Each partition of the subscription publishes on its own confirm
 * channel, so a key's messages (always in one partition) are confirmed in the order they were sent.
 * With "mandatory" (the default) a message no queue would take is returned by the broker and the
 * delivery fails (retried, then dead-lettered) instead of vanishing.
 */

const KIND = 'AMQP';
const EXCHANGE_TYPES = ['direct', 'topic', 'fanout', 'headers'];

type Connection = {
  model: ChannelModel;
  /** One confirm channel per partition, opened on first use. */
  channels: Map<number, Promise<PartitionChannel>>;
};

type PartitionChannel = {
  channel: ConfirmChannel;
  /** Message ids the broker returned as unroutable, until their confirm arrives. */
  returned: Set<string>;
};

export type AmqpSinkSettings = {
  exchange: string;
  exchangeType?: string;
  routingKey: string;
  mandatory: boolean;
  timeoutMs: number;
  source: string;
};

export function amqpSettings(subscription: Subscription): AmqpSinkSettings {
  const sink = subscription.sink as SinkConfig;
  refuseInlineCredentials(KIND, sink);
  if (typeof sink.exchange !== 'string') throw new Error(`${KIND} sink: "exchange" is required (a name, or "" for the default exchange)`);
  const routingKey = sink.routing_key;
  if (typeof routingKey !== 'string') throw new Error(`${KIND} sink: "routing_key" is required (a template such as "{topic}.{type}")`);
  const exchangeType = optionalString(KIND, sink, 'exchange_type');
  if (exchangeType !== undefined && !EXCHANGE_TYPES.includes(exchangeType)) {
    throw new Error(`${KIND} sink: "exchange_type" must be one of ${EXCHANGE_TYPES.join(', ')}`);
  }
  if (exchangeType !== undefined && sink.exchange === '') throw new Error(`${KIND} sink: the default exchange "" cannot be declared`);
  if (sink.mandatory !== undefined && typeof sink.mandatory !== 'boolean') throw new Error(`${KIND} sink: "mandatory" must be true or false`);
  return {
    exchange: sink.exchange,
    exchangeType,
    routingKey,
    mandatory: sink.mandatory !== false,
    timeoutMs: positiveNumber(KIND, sink, 'timeout_ms', 10_000),
    source: optionalString(KIND, sink, 'source') ?? `pgrelay://${subscription.name}`,
  };
}

/** The URL and credentials to connect with; the URL in the sink JSON never holds a password. */
function connectionTarget(sink: SinkConfig, env: NodeJS.ProcessEnv): { url: string; socket: Options.Connect & Record<string, unknown>; secrets: string[] } {
  const inline = optionalString(KIND, sink, 'url');
  const secretUrl = readCredential(KIND, sink, 'url', env);
  if ((inline === undefined) === (secretUrl === undefined)) {
    throw new Error(`${KIND} sink: give exactly one of "url" (without a password), "url_env" or "url_file"`);
  }
  if (inline !== undefined && urlHasPassword(inline)) {
    throw new Error(`${KIND} sink: "url" must not hold a password: use "user" with "pass_env"/"pass_file", or put the whole URL in "url_env"/"url_file"`);
  }
  const url = (inline ?? secretUrl)!;
  if (!/^amqps?:\/\//.test(url)) throw new Error(`${KIND} sink: the URL must start with amqp:// or amqps://`);
  const user = optionalString(KIND, sink, 'user');
  const pass = readCredential(KIND, sink, 'pass', env);
  if ((user === undefined) !== (pass === undefined)) throw new Error(`${KIND} sink: "user" and "pass_env"/"pass_file" go together`);
  const socket = user !== undefined && pass !== undefined ? { credentials: amqp.credentials.plain(user, pass) } : {};
  const secrets = [pass, secretUrl === undefined ? undefined : safePassword(secretUrl)].filter((s): s is string => s !== undefined);
  return { url, socket, secrets };
}

function safePassword(url: string): string | undefined {
  try {
    const password = decodeURIComponent(new URL(url).password);
    return password === '' ? undefined : password;
  } catch {
    return undefined;
  }
}

export function createAmqpSink(subscription: Subscription, env: NodeJS.ProcessEnv): Sink {
  const sink = subscription.sink as SinkConfig;
  const settings = amqpSettings(subscription);
  const mode = contentMode(KIND, sink);
  const target = connectionTarget(sink, env);
  const render = compileTemplate(settings.routingKey, 'amqp', subscription.name);
  const describe = errorDescriber(KIND, target.secrets);

  const connections = createReconnector<Connection>({
    connect: async () => {
      const model = await amqp.connect(target.url, { ...target.socket, timeout: Math.min(settings.timeoutMs, 5_000) });
      const connection: Connection = { model, channels: new Map() };
      model.on('error', () => {}); // 'close' follows, and the failures reach the deliveries
      model.on('close', () => connections.drop(connection));
      try {
        if (settings.exchange !== '') {
          const setup = await model.createChannel();
          setup.on('error', () => {});
          if (settings.exchangeType !== undefined) await setup.assertExchange(settings.exchange, settings.exchangeType, { durable: true });
          else await setup.checkExchange(settings.exchange);
          await setup.close();
        }
      } catch (error) {
        await model.close().catch(() => {});
        throw error;
      }
      return connection;
    },
    close: async ({ model }) => {
      await model.close();
    },
    describe,
  });

  const channelFor = (connection: Connection, partition: number): Promise<PartitionChannel> => {
    const existing = connection.channels.get(partition);
    if (existing !== undefined) return existing;
    const opened = (async () => {
      const channel = await connection.model.createConfirmChannel();
      const entry: PartitionChannel = { channel, returned: new Set() };
      channel.on('error', () => {});
      channel.on('close', () => {
        if (connection.channels.get(partition) === opened) connection.channels.delete(partition);
      });
      channel.on('return', (returned: amqp.Message) => {
        const id = returned.properties.messageId;
        if (typeof id === 'string') entry.returned.add(id);
      });
      return entry;
    })();
    opened.catch(() => connection.channels.delete(partition));
    connection.channels.set(partition, opened);
    return opened;
  };

  /** Sends one message; the promise settles on its confirm (or return, nack, channel loss). */
  const send = (entry: PartitionChannel, delivery: Delivery): Promise<void> => {
    const { message } = delivery;
    const env = envelope(message, subscription.name, settings.source, delivery.attempt, mode);
    const routingKey = render(message);
    const headers: Record<string, string> = { ...env.pgrelay };
    for (const [name, value] of Object.entries(env.cloudEvent)) headers[`cloudEvents:${name}`] = value;
    return new Promise<void>((resolve, reject) => {
      entry.channel.publish(
        settings.exchange,
        routingKey,
        env.body,
        {
          persistent: true,
          mandatory: settings.mandatory,
          messageId: message.id,
          contentType: env.contentType.split(';')[0],
          contentEncoding: 'utf-8',
          type: message.type,
          timestamp: Math.floor(Date.parse(message.created_at) / 1000),
          appId: 'pgrelay',
          headers,
        },
        (error: unknown) => {
          const wasReturned = entry.returned.delete(message.id);
          if (error !== null && error !== undefined) reject(new Error(`${describe(error)}: not confirmed (routing key ${routingKey})`));
          else if (wasReturned) reject(new Error(`${KIND} broker returned the message as unroutable: no queue is bound for routing key ${routingKey} on exchange ${JSON.stringify(settings.exchange)}`));
          else resolve();
        },
      );
    });
  };

  const confirmed = async (entry: PartitionChannel, pending: Promise<void>): Promise<void> => {
    try {
      await withTimeout(pending, settings.timeoutMs, `${KIND} no publisher confirm within ${settings.timeoutMs} ms`);
    } catch (error) {
      // A confirm that never came leaves the channel in an unknown state: start a fresh one.
      if (error instanceof Error && error.message.includes('no publisher confirm')) await entry.channel.close().catch(() => {});
      throw error;
    }
  };

  const entryFor = async (partition: number): Promise<PartitionChannel> => {
    const connection = await connections.get();
    try {
      return await channelFor(connection, partition);
    } catch (error) {
      throw new Error(describe(error));
    }
  };

  return {
    type: 'amqp',
    deliver: async (_message, delivery) => {
      const entry = await entryFor(delivery.partition);
      let pending: Promise<void>;
      try {
        pending = send(entry, delivery);
      } catch (error) {
        throw new Error(describe(error)); // the channel closed under us, or the routing key is invalid
      }
      await confirmed(entry, pending);
    },
    deliverMany: async (deliveries) => {
      if (deliveries.length === 0) return [];
      return deliverBatch(deliveries, () => entryFor(deliveries[0]!.partition), (entry, delivery) => {
        let pending: Promise<void>;
        try {
          pending = send(entry, delivery);
        } catch (error) {
          return Promise.reject(new Error(describe(error)));
        }
        return confirmed(entry, pending);
      });
    },
    close: () => connections.close(),
  };
}
