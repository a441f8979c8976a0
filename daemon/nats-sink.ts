import { readFileSync } from 'node:fs';
import { connect, credsAuthenticator, headers as natsHeaders, type NatsConnection, type MsgHdrs } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamClient } from '@nats-io/jetstream';
import type { Delivery, Subscription } from '../client/index.js';
import {
  contentMode,
  createReconnector,
  deliverBatch,
  envelope,
  errorDescriber,
  headerValue,
  optionalString,
  positiveNumber,
  readCredential,
  refuseInlineCredentials,
  urlHasPassword,
  withTimeout,
  type Envelope,
  type SinkConfig,
} from './broker-common.js';
import type { Sink } from './sink.js';
import { compileTemplate, streamSubjectsFor } from './templates.js';

/**
 * NATS JetStream sink: {"type":"nats", "servers": "nats://host:4222" | [...], "subject": "<template>",
 * "stream"?: name, "create_stream"?: bool, "stream_subjects"?: [...], "duplicate_window_ms"?: n,
 * "user"?, "pass_env"|"pass_file"?, "token_env"|"token_file"?, "creds_file"?, "timeout_ms"?,
 * "content_mode"?, "source"?, "batch_publish"?}.
 *
 * Each message is published with its uuid as Nats-Msg-Id, so a redelivery (a retry, or a batch
 * sent again after the daemon died before recording it) is dropped by the stream's duplicate
 * window. deliver() resolves only on the stream's publish ack. With "stream", the publish must
 * land in that stream (expect.streamName); the stream is checked at connection time and, with
 * "create_stream", created when missing.
 */

type Connection = { nc: NatsConnection; js: JetStreamClient };

const KIND = 'NATS';

function serversOf(sink: SinkConfig): string[] {
  const raw = sink.servers;
  const list = typeof raw === 'string' ? [raw] : Array.isArray(raw) ? raw : [];
  if (list.length === 0 || !list.every((s): s is string => typeof s === 'string' && s !== '')) {
    throw new Error(`${KIND} sink: "servers" must be a server URL or a non-empty list of them`);
  }
  for (const server of list) {
    if (urlHasPassword(server)) throw new Error(`${KIND} sink: "servers" must not hold a password: use "user" with "pass_env" or "pass_file"`);
  }
  return list;
}

export type NatsSinkSettings = {
  servers: string[];
  subject: string;
  stream?: string;
  createStream: boolean;
  streamSubjects?: string[];
  duplicateWindowMs: number;
  timeoutMs: number;
  source: string;
};

/** The sink JSON checked and read; credentials are read separately, at connection time. */
export function natsSettings(subscription: Subscription): NatsSinkSettings {
  const sink = subscription.sink as SinkConfig;
  refuseInlineCredentials(KIND, sink);
  const subject = optionalString(KIND, sink, 'subject');
  if (subject === undefined) throw new Error(`${KIND} sink: "subject" is required (a template such as "pgrelay.{topic}.{type}")`);
  const streamSubjects = sink.stream_subjects;
  if (streamSubjects !== undefined && (!Array.isArray(streamSubjects) || !streamSubjects.every((s) => typeof s === 'string' && s !== ''))) {
    throw new Error(`${KIND} sink: "stream_subjects" must be a list of subjects`);
  }
  return {
    servers: serversOf(sink),
    subject,
    stream: optionalString(KIND, sink, 'stream'),
    createStream: sink.create_stream === true,
    streamSubjects: streamSubjects as string[] | undefined,
    duplicateWindowMs: positiveNumber(KIND, sink, 'duplicate_window_ms', 120_000, 7 * 24 * 3_600_000),
    timeoutMs: positiveNumber(KIND, sink, 'timeout_ms', 10_000),
    source: optionalString(KIND, sink, 'source') ?? `pgrelay://${subscription.name}`,
  };
}

function authOptions(sink: SinkConfig, env: NodeJS.ProcessEnv) {
  const user = optionalString(KIND, sink, 'user');
  const pass = readCredential(KIND, sink, 'pass', env);
  const token = readCredential(KIND, sink, 'token', env);
  const credsFile = optionalString(KIND, sink, 'creds_file');
  let authenticator;
  if (credsFile !== undefined) {
    let creds: Uint8Array;
    try {
      creds = readFileSync(credsFile);
    } catch (error) {
      throw new Error(`${KIND} sink: cannot read creds_file ${credsFile}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    authenticator = credsAuthenticator(creds);
  }
  return { user, pass, token, authenticator, secrets: [pass, token] };
}

async function ensureStream(nc: NatsConnection, settings: NatsSinkSettings): Promise<void> {
  if (settings.stream === undefined) return;
  const jsm = await jetstreamManager(nc);
  try {
    const info = await jsm.streams.info(settings.stream);
    if (info.config.duplicate_window <= 0) {
      throw new Error(`${KIND} sink: stream ${settings.stream} has no duplicate window, so redeliveries would be stored twice`);
    }
    return;
  } catch (error) {
    if ((error as { name?: string }).name !== 'StreamNotFoundError' && (error as { code?: number }).code !== 10059) throw error;
  }
  if (!settings.createStream) {
    throw new Error(`${KIND} sink: stream ${settings.stream} does not exist (create it, or set "create_stream": true)`);
  }
  const subjects = settings.streamSubjects ?? streamSubjectsFor(settings.subject);
  if (subjects === null) {
    throw new Error(`${KIND} sink: the subject template starts with a placeholder: give the stream's subjects in "stream_subjects"`);
  }
  try {
    await jsm.streams.add({ name: settings.stream, subjects, duplicate_window: settings.duplicateWindowMs * 1_000_000 });
  } catch (error) {
    // Another daemon created it first.
    await jsm.streams.info(settings.stream).catch(() => {
      throw error;
    });
  }
}

export function createNatsSink(subscription: Subscription, env: NodeJS.ProcessEnv): Sink {
  const sink = subscription.sink as SinkConfig;
  const settings = natsSettings(subscription);
  const mode = contentMode(KIND, sink);
  const auth = authOptions(sink, env);
  const render = compileTemplate(settings.subject, 'nats', subscription.name);
  const describe = errorDescriber(KIND, auth.secrets);

  const connections = createReconnector<Connection>({
    connect: async () => {
      const nc = await connect({
        servers: settings.servers,
        name: `pgrelay ${subscription.name}`,
        user: auth.user,
        pass: auth.pass,
        token: auth.token,
        authenticator: auth.authenticator,
        timeout: Math.min(settings.timeoutMs, 5_000),
        reconnect: true,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
      });
      try {
        await ensureStream(nc, settings);
      } catch (error) {
        await nc.close().catch(() => {});
        throw error;
      }
      const connection: Connection = { nc, js: jetstream(nc, { timeout: settings.timeoutMs }) };
      void nc.closed().then(() => connections.drop(connection));
      return connection;
    },
    close: async ({ nc }) => {
      await nc.drain().catch(() => nc.close());
    },
    describe,
  });

  const headersFor = (env: Envelope): MsgHdrs => {
    const h = natsHeaders();
    h.set('Content-Type', env.contentType);
    for (const [name, value] of Object.entries(env.cloudEvent)) h.set(`ce-${name}`, headerValue(value));
    for (const [name, value] of Object.entries(env.pgrelay)) h.set(name, headerValue(value));
    return h;
  };

  const publish = async (connection: Connection, delivery: Delivery): Promise<void> => {
    const { message } = delivery;
    const env = envelope(message, subscription.name, settings.source, delivery.attempt, mode);
    const subject = render(message);
    try {
      await withTimeout(
        connection.js.publish(subject, env.body, {
          msgID: message.id,
          headers: headersFor(env),
          timeout: settings.timeoutMs,
          ...(settings.stream === undefined ? {} : { expect: { streamName: settings.stream } }),
        }),
        settings.timeoutMs + 1_000,
        `no publish ack within ${settings.timeoutMs} ms`,
      );
    } catch (error) {
      // The client reports a subject that no stream captures as "jetstream is not enabled".
      if ((error as Error).name === 'JetStreamNotEnabled' || /jetstream is not enabled/i.test(String(error))) {
        throw new Error(`${KIND} no JetStream stream captures subject ${subject} (or JetStream is not enabled on the server)`);
      }
      throw new Error(`${describe(error)} (subject ${subject})`);
    }
  };

  return {
    type: 'nats',
    deliver: async (_message, delivery) => publish(await connections.get(), delivery),
    // Publishes go out in order on the one connection; the acks are awaited together.
    deliverMany: (deliveries) => deliverBatch(deliveries, () => connections.get(), publish),
    close: () => connections.close(),
  };
}
