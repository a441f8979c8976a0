// The systems the relay suite measures side by side, behind one shape: a plain table (the floor a
// publish is compared with), pgrelay (in-process consumer and the daemon's webhook sink), pg-boss
// and graphile-worker. Each starts a consumer that calls onMessage(sentAt) per message, with
// sentAt the performance.now() the producer stamped into the payload just before its transaction.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { PgBoss } from 'pg-boss';
import { run as runGraphile, makeWorkerUtils, Logger, type Runner, type WorkerUtils } from 'graphile-worker';
import { createClient, type PgrelayClient } from '../client/index.js';
import { createRelayService, type RelayService } from '../daemon/service.js';
import { defaultSinks } from '../daemon/sinks.js';
import { percentile } from './lib.js';

export type Payload = { sentAt: number; producer: number; n: number; body: string };

/** A timer for Promise.race that does not keep the process alive once the race is won. */
export const deadline = (ms: number): Promise<void> => sleep(ms, undefined, { ref: false });

const BODY = JSON.stringify({ order: 'o-123456', customer: 'c-42', total: 129.9, currency: 'EUR', items: [{ sku: 'A-1', qty: 2 }] });
/** The same order payload for every system, stamped just before its transaction. */
export const payload = (producer: number, n: number): Payload => ({ sentAt: performance.now(), producer, n, body: BODY });

export type Latency = { p50: number; p99: number; max: number };
export const latency = (samples: number[]): Latency => {
  const sorted = [...samples].sort((a, b) => a - b);
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: percentile(sorted, 100) };
};
export type OnMessage = (sentAt: number) => void;

/** What a producer does once per message: one transaction holding one message. */
export type Producer = { send(payload: Payload): Promise<void>; close(): Promise<void> };

export type System = {
  readonly name: string;
  producer(index: number): Promise<Producer>;
  /** Starts delivering to onMessage; resolves once the consumer is running. */
  startConsumer(onMessage: OnMessage): Promise<void>;
  /** Writes `count` messages fast (not measured): the backlog for the drain benchmark. */
  fill?(count: number, payload: (n: number) => Payload): Promise<void>;
  stop(): Promise<void>;
};

export const TOPIC = 'bench.orders';
const QUEUE = 'bench_orders';

export async function pgClient(url: string, applicationName: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, application_name: applicationName });
  await client.connect();
  return client;
}

/** publish() against a plain INSERT of the same row shape, on raw pg connections for both. */
export const PLAIN_TABLE_DDL = `
  CREATE TABLE bench_plain (
    id         bigserial PRIMARY KEY,
    topic      text NOT NULL,
    key        text,
    type       text NOT NULL,
    data       jsonb NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
  )`;
export const PLAIN_INSERT = {
  name: 'bench-plain-insert',
  text: `INSERT INTO bench_plain (topic, key, type, data, metadata) VALUES ($1, $2, $3, $4, '{}')`,
};
/**
 * References for where publish's cost lies (not peers): the row publish writes, inserted by one
 * statement with none of publish's checks, doorbell read or function call, into the log itself
 * (primary key plus the two secondary indexes the readers need) and into a copy of the log with
 * its primary key only.
 */
const LOG_ROW_VALUES = `SELECT p, pg_current_xact_id(), pgrelay._next_xid(), pgrelay._message_id(p), $1, $2, $3, $4, '{}'
    FROM (SELECT nextval('pgrelay.message_position_seq') AS p) s`;
export const LOG_ROW_INSERT = {
  name: 'bench-log-row-insert',
  text: `INSERT INTO pgrelay.messages (position, xid, next_xid, id, topic, key, type, data, metadata) ${LOG_ROW_VALUES}`,
};
export const LOG_ROW_PK_ONLY_DDL = `
  CREATE TABLE bench_log_pk_only (LIKE pgrelay.messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
  ALTER TABLE bench_log_pk_only ADD PRIMARY KEY (xid, position)`;
export const LOG_ROW_PK_ONLY_INSERT = {
  name: 'bench-log-row-pk-only-insert',
  text: `INSERT INTO bench_log_pk_only (position, xid, next_xid, id, topic, key, type, data, metadata) ${LOG_ROW_VALUES}`,
};
export const PGRELAY_PUBLISH = {
  name: 'bench-pgrelay-publish',
  text: `SELECT pgrelay.publish($1, $2, $3, $4, '{}')`,
};

const keyOf = (payload: Payload): string => `customer-${payload.producer}-${payload.n % 16}`;

/** pgrelay with an in-process consumer (client.consume) on a {"type":"consumer"} subscription. */
export async function pgrelayInProcess(url: string, options: { partitions: number; batchSize: number; concurrency?: number }): Promise<System> {
  const admin = await createClient({ connectionString: url, maximumPoolSize: options.partitions + 2 });
  await admin.subscriptions.subscribe('bench', [TOPIC], { type: 'consumer' }, {
    partitions: options.partitions,
    batch_size: options.batchSize,
    start: 'earliest',
  });
  let consumer: Awaited<ReturnType<PgrelayClient['consume']>> | undefined;
  return {
    name: 'pgrelay (client.consume)',
    producer: (index) => pgrelayProducer(url, index),
    async startConsumer(onMessage) {
      consumer = await admin.consume(
        'bench',
        async (message) => onMessage((message.data as Payload).sentAt),
        { concurrency: options.concurrency ?? options.partitions },
      );
    },
    fill: (count, payload) => pgrelayFill(url, count, payload),
    async stop() {
      await consumer?.stop();
      await admin.end();
    },
  };
}

/** pgrelay's daemon service (in this process) delivering to a local HTTP server, one POST per message. */
export async function pgrelayWebhook(url: string, options: { partitions: number; batchSize: number }): Promise<System> {
  let onMessage: OnMessage = () => {};
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const event = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { data: Payload };
      onMessage(event.data.sentAt);
      response.writeHead(204).end();
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const admin = await createClient({ connectionString: url, maximumPoolSize: 2 });
  await admin.subscriptions.subscribe('bench-webhook', [TOPIC], { type: 'webhook', url: `http://127.0.0.1:${port}/hook` }, {
    partitions: options.partitions,
    batch_size: options.batchSize,
    start: 'earliest',
  });
  let service: RelayService | undefined;
  return {
    name: 'pgrelay (daemon → webhook)',
    producer: (index) => pgrelayProducer(url, index),
    async startConsumer(handler) {
      onMessage = handler;
      service = createRelayService({ connectionString: url, sinks: defaultSinks, drivers: false, maximumPoolSize: options.partitions + 2 });
      await service.start();
    },
    async stop() {
      await service?.stop();
      await admin.end();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function pgrelayProducer(url: string, index: number): Promise<Producer> {
  const client = await pgClient(url, `bench-producer-${index}`);
  return {
    async send(payload) {
      await client.query({ ...PGRELAY_PUBLISH, values: [TOPIC, keyOf(payload), 'order.placed', JSON.stringify(payload)] });
    },
    close: () => client.end(),
  };
}

async function pgrelayFill(url: string, count: number, payload: (n: number) => Payload): Promise<void> {
  const client = await pgClient(url, 'bench-fill');
  try {
    for (let start = 0; start < count; start += 5000) {
      const messages = Array.from({ length: Math.min(5000, count - start) }, (_, i) => {
        const p = payload(start + i);
        return { topic: TOPIC, key: keyOf(p), type: 'order.placed', data: p };
      });
      await client.query('SELECT pgrelay.publish_batch($1::jsonb)', [JSON.stringify(messages)]);
    }
  } finally {
    await client.end();
  }
}

/** pg-boss 12 at its fastest settings here: LISTEN/NOTIFY wake-ups, batched fetches, several workers. */
export async function pgBoss(url: string, options: { batchSize: number; workers: number }): Promise<System> {
  const boss = new PgBoss({ connectionString: url, useListenNotify: true, schedule: false, supervise: false, max: options.workers + 10 });
  boss.on('error', () => {});
  await boss.start();
  await boss.createQueue(QUEUE, { notify: true });
  return {
    name: `pg-boss 12.38.0`,
    async producer() {
      return { send: async (payload) => void (await boss.send(QUEUE, payload)), close: async () => {} };
    },
    async startConsumer(onMessage) {
      await boss.work<Payload>(
        QUEUE,
        { batchSize: options.batchSize, localConcurrency: options.workers, pollingIntervalSeconds: 0.5, notifyPollingIntervalSeconds: 0.5, burstWhenBatchFull: true },
        async (jobs) => {
          for (const job of jobs) onMessage(job.data.sentAt);
        },
      );
    },
    async fill(count, payload) {
      for (let start = 0; start < count; start += 5000) {
        await boss.insert(QUEUE, Array.from({ length: Math.min(5000, count - start) }, (_, i) => ({ data: payload(start + i) })));
      }
    },
    stop: () => boss.stop({ graceful: true, timeout: 10_000 }),
  };
}

/**
 * graphile-worker 0.18. With localQueue the pool fetches and locks jobs in batches (its documented
 * way to go fast); completeJobBatchDelay 0 batches completions too.
 */
export async function graphileWorker(url: string, options: { concurrency: number; localQueue: number }): Promise<System> {
  const utils: WorkerUtils = await makeWorkerUtils({ connectionString: url });
  await utils.migrate();
  let runner: Runner | undefined;
  return {
    name: options.localQueue > 1 ? `graphile-worker 0.18.0 (localQueue ${options.localQueue})` : 'graphile-worker 0.18.0',
    async producer() {
      return {
        send: async (payload) => void (await utils.addJob('order', payload)),
        close: async () => {},
      };
    },
    async startConsumer(onMessage) {
      runner = await runGraphile({
        connectionString: url,
        concurrency: options.concurrency,
        noHandleSignals: true,
        pollInterval: 500,
        logger: quietGraphileLogger,
        taskList: { order: async (payload) => onMessage((payload as Payload).sentAt) },
        preset: {
          worker: {
            ...(options.localQueue > 1 ? { localQueue: { size: options.localQueue } } : {}),
            completeJobBatchDelay: 0,
            failJobBatchDelay: 0,
          },
        },
      });
    },
    async fill(count, payload) {
      const client = await pgClient(url, 'bench-fill');
      try {
        for (let start = 0; start < count; start += 5000) {
          const specs = Array.from({ length: Math.min(5000, count - start) }, (_, i) => ({ identifier: 'order', payload: payload(start + i) }));
          await client.query('SELECT graphile_worker.add_jobs(ARRAY(SELECT json_populate_recordset(NULL::graphile_worker.job_spec, $1::json)))', [JSON.stringify(specs)]);
        }
      } finally {
        await client.end();
      }
    },
    async stop() {
      await runner?.stop();
      await utils.release();
    },
  };
}

const quietGraphileLogger = new Logger(() => () => {});
