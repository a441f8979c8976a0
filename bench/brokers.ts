// The brokers suite: how many messages per second the relay moves from the log into a webhook, NATS
// JetStream and RabbitMQ, each measured end to end: a backlog of N messages is published, the relay
// starts, and the clock stops when the destination's own consumer has received (and, for the
// brokers, acknowledged to the broker) every message and pgrelay has acknowledged them all.
// Same backlog, partitions, batch size and key spread for every peer, in alternating rounds.
import { createServer, type Server } from 'node:http';
import { connect as natsConnect } from '@nats-io/transport-node';
import { AckPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import amqp from 'amqplib';
import { connect as tcpConnect } from 'node:net';
import { createRelayService } from '../daemon/service.js';
import { defaultSinks } from '../daemon/sinks.js';
import { perSecond, ratio, timed, withPg, type BenchContext, type BenchSuite } from './lib.js';

const NATS_URL = process.env.PGRELAY_BENCH_NATS_URL ?? 'nats://127.0.0.1:4222';
const AMQP_URL = process.env.PGRELAY_BENCH_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const KEYS = 100;
const PARTITIONS = 4;
const BATCH_SIZE = 200;

type Receiver = {
  sink: Record<string, unknown>;
  /** Distinct message ids received and confirmed so far. */
  received(): number;
  close(): Promise<void>;
};

type Peer = { name: string; available: () => Promise<boolean>; receiver: (run: string) => Promise<Receiver> };

function reachable(url: string, defaultPort: number): Promise<boolean> {
  const parsed = new URL(url);
  return new Promise((resolve) => {
    const socket = tcpConnect({ host: parsed.hostname, port: parsed.port === '' ? defaultPort : Number(parsed.port) });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(2000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** A local HTTP server answering 204 to every POST, counting distinct CloudEvent ids. */
async function webhookReceiver(): Promise<Receiver> {
  const ids = new Set<string>();
  const server: Server = createServer((request, response) => {
    const id = request.headers['x-pgrelay-id'];
    request.resume();
    request.on('end', () => {
      if (typeof id === 'string') ids.add(id);
      response.writeHead(204).end();
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    sink: { type: 'webhook', url: `http://127.0.0.1:${port}/events` },
    received: () => ids.size,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** A JetStream stream of its own and a durable pull consumer acknowledging every message. */
async function natsReceiver(run: string, batchPublish: boolean): Promise<Receiver> {
  const nc = await natsConnect({ servers: NATS_URL });
  const jsm = await jetstreamManager(nc);
  const stream = `PGRELAY_BENCH_${run}`;
  await jsm.streams.add({ name: stream, subjects: [`${stream}.>`] });
  await jsm.consumers.add(stream, { durable_name: 'bench', ack_policy: AckPolicy.Explicit });
  const consumer = await jetstream(nc).consumers.get(stream, 'bench');
  const messages = await consumer.consume({ max_messages: 1000 });
  const ids = new Set<string>();
  const loop = (async () => {
    for await (const message of messages) {
      ids.add(message.headers?.get('Nats-Msg-Id') ?? '');
      message.ack();
    }
  })();
  return {
    sink: { type: 'nats', servers: NATS_URL, subject: `${stream}.{topic}.{key}`, stream, batch_publish: batchPublish },
    received: () => ids.size,
    close: async () => {
      await messages.close();
      await loop.catch(() => {});
      await jsm.streams.delete(stream).catch(() => {});
      await nc.close();
    },
  };
}

/** A topic exchange and a queue of its own, consumed with manual acks. */
async function amqpReceiver(run: string, batchPublish: boolean): Promise<Receiver> {
  const model = await amqp.connect(AMQP_URL);
  const channel = await model.createChannel();
  const exchange = `pgrelay_bench_${run}`;
  await channel.assertExchange(exchange, 'topic', { durable: true });
  await channel.assertQueue(exchange, { durable: true });
  await channel.bindQueue(exchange, exchange, '#');
  await channel.prefetch(1000);
  const ids = new Set<string>();
  await channel.consume(exchange, (message) => {
    if (message === null) return;
    ids.add(String(message.properties.messageId));
    channel.ack(message);
  });
  const url = new URL(AMQP_URL);
  const user = decodeURIComponent(url.username);
  url.username = '';
  url.password = '';
  return {
    sink: {
      type: 'amqp',
      url: url.toString(),
      user,
      pass_env: 'PGRELAY_BENCH_AMQP_PASS',
      exchange,
      routing_key: '{topic}.{key}',
      batch_publish: batchPublish,
    },
    received: () => ids.size,
    close: async () => {
      await channel.deleteQueue(exchange).catch(() => {});
      await channel.deleteExchange(exchange).catch(() => {});
      await model.close();
    },
  };
}

const PEERS: Peer[] = [
  { name: 'webhook', available: async () => true, receiver: () => webhookReceiver() },
  { name: 'nats', available: () => reachable(NATS_URL, 4222), receiver: (run) => natsReceiver(run, false) },
  { name: 'nats_batch', available: () => reachable(NATS_URL, 4222), receiver: (run) => natsReceiver(run, true) },
  { name: 'rabbitmq', available: () => reachable(AMQP_URL, 5672), receiver: (run) => amqpReceiver(run, false) },
  { name: 'rabbitmq_batch', available: () => reachable(AMQP_URL, 5672), receiver: (run) => amqpReceiver(run, true) },
];

async function waitUntil(what: string, check: () => Promise<boolean> | boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** One measurement: N messages in the log, then the relay drains them into the peer. */
async function relayInto(context: BenchContext, peer: Peer, round: number, count: number): Promise<number> {
  const run = `${peer.name}_${round}_${process.pid}`;
  const url = await context.server.database(`pgrelay_bench_brokers_${peer.name}_${round}`);
  const receiver = await peer.receiver(run);
  try {
    await withPg(url, async (client) => {
      await client.query(`SELECT pgrelay.subscribe('bench', ARRAY['orders'], $1::jsonb, $2::jsonb)`, [
        JSON.stringify(receiver.sink),
        JSON.stringify({ start: 'earliest', partitions: PARTITIONS, batch_size: BATCH_SIZE }),
      ]);
      await client.query(
        `SELECT count(pgrelay.publish('orders', 'k' || (i % ${KEYS}), 'order.placed',
                  jsonb_build_object('order', 'o-' || i, 'total', 129.9, 'items', jsonb_build_array(jsonb_build_object('sku', 'A-1', 'qty', 2)))))
         FROM generate_series(1, $1::int) AS i`,
        [count],
      );
    });
    const service = createRelayService({
      connectionString: url,
      sinks: defaultSinks,
      drivers: false,
      idlePollMs: 100,
      env: { ...process.env, PGRELAY_BENCH_AMQP_PASS: decodeURIComponent(new URL(AMQP_URL).password) },
    });
    const { ms } = await timed(async () => {
      await service.start();
      await waitUntil(`${peer.name} to receive ${count}`, () => receiver.received() >= count, 300_000);
      await withPg(url, (client) =>
        waitUntil('pgrelay to acknowledge everything', async () => {
          const { rows } = await client.query<{ pending: string }>(`SELECT sum(pending)::text AS pending FROM pgrelay.subscription_lag('bench')`);
          return rows[0]!.pending === '0';
        }, 60_000),
      );
    });
    await service.stop();
    return perSecond(count, ms);
  } finally {
    await receiver.close();
  }
}

const suite: BenchSuite = {
  name: 'brokers',
  async run(context) {
    const count = context.quick ? 2000 : 10_000;
    const rounds = context.quick ? 1 : 5;
    const peers: Peer[] = [];
    const skipped: string[] = [];
    for (const peer of PEERS) {
      if (await peer.available()) peers.push(peer);
      else skipped.push(peer.name);
    }
    if (skipped.length > 0) context.log(`brokers: not reachable, skipped: ${skipped.join(', ')}`);
    const perPeer = new Map<string, number[]>(peers.map((p) => [p.name, []]));
    for (let round = 1; round <= rounds; round++) {
      for (const peer of peers) {
        const rate = await relayInto(context, peer, round, count);
        perPeer.get(peer.name)!.push(rate);
        context.log(`round ${round}: ${peer.name} ${rate} msg/s`);
      }
    }
    const median = (rates: number[]): number => [...rates].sort((a, b) => a - b)[Math.floor((rates.length - 1) / 2)]!;
    const medians = Object.fromEntries([...perPeer].map(([name, rates]) => [name, median(rates)]));
    const best = Object.fromEntries([...perPeer].map(([name, rates]) => [name, Math.max(...rates)]));
    const webhook = medians.webhook!;
    const ratios = Object.fromEntries(
      Object.entries(medians).filter(([name]) => name !== 'webhook').map(([name, rate]) => [`${name}_to_webhook`, ratio(rate, webhook)]),
    );
    for (const [name, rate] of Object.entries(medians)) context.log(`${name}: median ${rate} msg/s, best ${best[name]} (${rounds} rounds)`);
    return {
      messages: count,
      keys: KEYS,
      partitions: PARTITIONS,
      batch_size: BATCH_SIZE,
      rounds,
      msg_per_s_median: medians,
      msg_per_s_best: best,
      all_rounds: Object.fromEntries(perPeer),
      ratios_of_medians: ratios,
      skipped,
    };
  },
};

export default suite;
