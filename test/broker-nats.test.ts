// The NATS JetStream sink against a real NATS server, through the real daemon (the process, or the
// in-process service where nothing is killed): every message lands in the stream exactly once
// (Nats-Msg-Id dedupe) even when the daemon is SIGKILLed mid-batch, per key in log order, with the
// CloudEvents and pgrelay headers; a broker that goes away (a TCP proxy we close) makes messages
// wait and arrive once it is back.
// Without a NATS server these tests skip; with PGRELAY_REQUIRE_BROKERS=1 that is a failure.
import t, { type Test } from 'tap';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { freshDatabase, query } from './helpers/db.ts';
import { createNatsSink } from '../daemon/nats-sink.ts';
import type { Delivery, Subscription } from '../client/index.ts';
import { startRelay, brokerSkip, daemon, increasing, lag, natsTarget, NATS_URL, publish, settled, subscribe, uniqueName, waitFor } from './helpers/brokers.ts';
import { startTcpProxy } from './helpers/tcp-proxy.ts';

const skip = await brokerSkip('NATS', NATS_URL, 4222);

type Stream = { name: string; jsm: JetStreamManager; nc: NatsConnection };

/** A JetStream stream of its own capturing "<name>.>", deleted when the test ends. */
async function testStream(t: Test, options: { create?: boolean } = {}): Promise<Stream> {
  const nc = await connect({ servers: NATS_URL });
  const jsm = await jetstreamManager(nc);
  const name = uniqueName('PGRELAY_T');
  if (options.create !== false) await jsm.streams.add({ name, subjects: [`${name}.>`], duplicate_window: 120 * 1e9 });
  t.teardown(async () => {
    await jsm.streams.delete(name).catch(() => {});
    await nc.close();
  });
  return { name, jsm, nc };
}

const streamCount = async (stream: Stream): Promise<number> => (await stream.jsm.streams.info(stream.name)).state.messages;

type Stored = { seq: number; subject: string; data: Uint8Array; header(name: string): string };

/** Every message in the stream, in stream order, read with an ordered consumer. */
async function readStream(stream: Stream): Promise<Stored[]> {
  const count = await streamCount(stream);
  const out: Stored[] = [];
  if (count === 0) return out;
  const consumer = await jetstream(stream.nc).consumers.get(stream.name);
  while (out.length < count) {
    const batch = await consumer.fetch({ max_messages: count - out.length, expires: 5_000 });
    let got = 0;
    for await (const m of batch) {
      got += 1;
      out.push({ seq: m.seq, subject: m.subject, data: m.data, header: (name) => m.headers?.get(name) ?? '' });
      if (m.info.pending === 0) break;
    }
    if (got === 0) throw new Error(`read ${out.length} of ${count} stream messages, then nothing`);
  }
  return out;
}

const header = (message: Stored, name: string): string => message.header(name);

/** Every stored message's Nats-Msg-Id, and per key the seq values in stream order. */
function summarise(messages: Stored[]) {
  const ids = messages.map((m) => header(m, 'Nats-Msg-Id'));
  const perKey = new Map<string, number[]>();
  for (const m of messages) {
    const key = header(m, 'pgrelay-key');
    const seq = (JSON.parse(new TextDecoder().decode(m.data)) as { data: { seq: number } }).data.seq;
    perKey.set(key, [...(perKey.get(key) ?? []), seq]);
  }
  return { ids, perKey };
}

t.test('publishes each message once with its headers, in key order, and acknowledges after the publish ack', { skip }, async (t) => {
  const db = await freshDatabase(t);
  const stream = await testStream(t, { create: false });
  await subscribe(db.connectionString, 'to-nats', {
    type: 'nats',
    servers: NATS_URL,
    subject: `${stream.name}.{topic}.{type}.{key}`,
    stream: stream.name,
    create_stream: true,
  });
  const published = await publish(db.connectionString, 60, 4);
  await daemon(t, db.connectionString, 'to-nats');
  await waitFor('60 messages in the stream', async () => ((await streamCount(stream)) >= 60 ? true : undefined));
  await waitFor('every message acknowledged', async () => ((await lag(db.connectionString, 'to-nats')).pending === 0 ? true : undefined));
  const info = await stream.jsm.streams.info(stream.name);
  t.same(info.config.subjects, [`${stream.name}.>`], 'create_stream made the stream with the template’s fixed prefix');
  const stored = await readStream(stream);
  t.equal(stored.length, 60, 'exactly 60 messages stored');
  t.same(stored.map((m) => header(m, 'Nats-Msg-Id')).sort(), published.map((p) => p.id).sort(), 'Nats-Msg-Id is the message id, each once');
  const first = stored.find((m) => header(m, 'Nats-Msg-Id') === published[0]!.id)!;
  t.equal(first.subject, `${stream.name}.orders.order.created.${published[0]!.key}`, 'the subject is the rendered template ({type} keeps its dots as subject tokens)');
  const [row] = await query<{ position: string; created_at: string }>(db.connectionString, `SELECT position::text, created_at FROM pgrelay.messages WHERE id = $1`, [published[0]!.id]);
  t.match(
    {
      'ce-id': header(first, 'ce-id'),
      'ce-type': header(first, 'ce-type'),
      'ce-subject': header(first, 'ce-subject'),
      'ce-source': header(first, 'ce-source'),
      'ce-specversion': header(first, 'ce-specversion'),
      'pgrelay-topic': header(first, 'pgrelay-topic'),
      'pgrelay-key': header(first, 'pgrelay-key'),
      'pgrelay-type': header(first, 'pgrelay-type'),
      'pgrelay-position': header(first, 'pgrelay-position'),
      'Content-Type': header(first, 'Content-Type'),
    },
    {
      'ce-id': published[0]!.id,
      'ce-type': 'order.created',
      'ce-subject': published[0]!.key,
      'ce-source': 'pgrelay://to-nats',
      'ce-specversion': '1.0',
      'pgrelay-topic': 'orders',
      'pgrelay-key': published[0]!.key,
      'pgrelay-type': 'order.created',
      'pgrelay-position': row!.position,
      'Content-Type': /^application\/cloudevents\+json/,
    },
    'headers carry the CloudEvents attributes and pgrelay’s topic, key, type and position',
  );
  const body = JSON.parse(new TextDecoder().decode(first.data)) as Record<string, unknown>;
  t.match(body, { specversion: '1.0', id: published[0]!.id, data: { seq: 1 }, pgrelaytopic: 'orders' }, 'the body is the CloudEvent');
  const { perKey } = summarise(stored);
  t.equal(perKey.size, 4, 'four keys');
  for (const [key, seqs] of perKey) t.ok(increasing(seqs), `key ${key} is stored in log order`);
});

t.test('SIGKILL mid-batch, one at a time and with batch_publish: every message is in the stream exactly once', { skip }, async (t) => {
  const db = await freshDatabase(t);
  // Two subscriptions of the same messages, one per publishing mode, served by one daemon. Each
  // reaches NATS through its own proxy. After 300 publishes a proxy stops passing the broker's
  // replies: publishes still land in the stream, their acks never reach the daemon, so the batch
  // in flight is in the stream but not acknowledged in PostgreSQL when the daemon is killed.
  const target = natsTarget();
  const modes = [];
  for (const batchPublish of [false, true]) {
    const stream = await testStream(t);
    const proxy = await startTcpProxy(t, target.host, target.port);
    const name = batchPublish ? 'nats-kill-batch' : 'nats-kill';
    await subscribe(
      db.connectionString,
      name,
      { type: 'nats', servers: `nats://127.0.0.1:${proxy.port}`, subject: `${stream.name}.{topic}.{key}`, stream: stream.name, batch_publish: batchPublish },
      { batch_size: 200, lease_seconds: 2, partitions: 2 },
    );
    modes.push({ batchPublish, stream, proxy, name, label: batchPublish ? 'batch_publish' : 'one at a time' });
  }
  const total = 1200;
  const published = await publish(db.connectionString, total, 25);
  const holding = modes.map((m) => m.proxy.holdRepliesAfter(`PUB ${m.stream.name}.`, 300));
  const relay = await daemon(t, db.connectionString, modes.map((m) => m.name).join(','));
  await Promise.all(holding);
  const unacked = await Promise.all(
    modes.map((m) =>
      waitFor(`${m.label}: publishes in the stream that the daemon has no ack for`, async () => {
        const inStream = await streamCount(m.stream);
        const acked = (await lag(db.connectionString, m.name)).delivered;
        return inStream >= acked + 20 ? inStream : undefined;
      }, 30_000, 20),
    ),
  );
  await relay.kill('SIGKILL');
  for (const [i, m] of modes.entries()) {
    await m.proxy.open();
    const acked = (await lag(db.connectionString, m.name)).delivered;
    t.comment(`${m.label}, at the kill: ${unacked[i]} in the stream, ${acked} acknowledged in pgrelay`);
    t.ok(acked < unacked[i]! && acked < total, `${m.label}: the kill landed mid-batch: messages in the stream are not acknowledged, so they are delivered again`);
  }
  await daemon(t, db.connectionString, modes.map((m) => m.name).join(','));
  for (const m of modes) {
    await settled(db.connectionString, m.name, 50_000);
    const stored = await readStream(m.stream);
    const { ids, perKey } = summarise(stored);
    t.equal(stored.length, total, `${m.label}: exactly ${total} messages stored`);
    t.equal(new Set(ids).size, total, `${m.label}: no message id twice`);
    t.same([...ids].sort(), published.map((p) => p.id).sort(), `${m.label}: every published message is there`);
    t.equal((await lag(db.connectionString, m.name)).dead, 0, `${m.label}: nothing dead-lettered`);
    if (!m.batchPublish) {
      const unordered = [...perKey].filter(([, seqs]) => !increasing(seqs)).map(([key]) => key);
      t.same(unordered, [], `${m.label}: every key is stored in log order`);
    }
  }
});

t.test('a broker that goes away: messages wait, fail and retry, then arrive once it is back', { skip }, async (t) => {
  const db = await freshDatabase(t);
  const stream = await testStream(t);
  const target = natsTarget();
  const proxy = await startTcpProxy(t, target.host, target.port);
  await subscribe(db.connectionString, 'nats-outage', {
    type: 'nats',
    servers: `nats://127.0.0.1:${proxy.port}`,
    subject: `${stream.name}.{topic}`,
    stream: stream.name,
    timeout_ms: 1000,
  });
  const first = await publish(db.connectionString, 10, 3);
  await startRelay(t, db.connectionString, 'nats-outage');
  await waitFor('the first 10 in the stream', async () => ((await streamCount(stream)) === 10 ? true : undefined));
  await proxy.close();
  const second = await publish(db.connectionString, 20, 3, 11);
  const failed = await waitFor('a failed delivery recorded while the broker is away', async () => {
    const [row] = await query<{ attempts: number; last_error: string }>(
      db.connectionString,
      `SELECT attempts, last_error FROM pgrelay.retries WHERE subscription = 'nats-outage' ORDER BY attempts DESC LIMIT 1`,
    );
    return row !== undefined && row.attempts >= 2 ? row : undefined;
  });
  t.match(failed.last_error, /NATS/, `the failure says why: ${failed.last_error}`);
  t.equal(await streamCount(stream), 10, 'nothing new reached the stream while the broker was away');
  t.equal((await lag(db.connectionString, 'nats-outage')).dead, 0, 'nothing dead-lettered');
  await proxy.open();
  await waitFor('all 30 in the stream', async () => ((await streamCount(stream)) >= 30 ? true : undefined), 40_000, 100);
  await settled(db.connectionString, 'nats-outage', 30_000);
  const stored = await readStream(stream);
  t.same(
    stored.map((m) => header(m, 'Nats-Msg-Id')).sort(),
    [...first, ...second].map((p) => p.id).sort(),
    'all 30 messages arrived, each exactly once (publishes timed out during the outage were deduplicated)',
  );
  const { perKey } = summarise(stored);
  for (const [key, seqs] of perKey) t.ok(increasing(seqs), `key ${key} is stored in log order across the outage`);
});

t.test('a missing stream without create_stream: deliveries fail with a clear error and nothing is lost', { skip }, async (t) => {
  const db = await freshDatabase(t);
  const stream = await testStream(t, { create: false });
  await subscribe(db.connectionString, 'nats-nostream', { type: 'nats', servers: NATS_URL, subject: `${stream.name}.{topic}`, stream: stream.name });
  const published = await publish(db.connectionString, 5, 1);
  await startRelay(t, db.connectionString, 'nats-nostream');
  const failed = await waitFor('a failed delivery', async () => {
    const [row] = await query<{ last_error: string }>(db.connectionString, `SELECT last_error FROM pgrelay.retries WHERE subscription = 'nats-nostream' LIMIT 1`);
    return row;
  });
  t.match(failed.last_error, new RegExp(`stream ${stream.name} does not exist`), 'the error names the missing stream');
  await stream.jsm.streams.add({ name: stream.name, subjects: [`${stream.name}.>`] });
  await waitFor('the 5 messages once the stream exists', async () => ((await streamCount(stream)) === 5 ? true : undefined), 30_000, 100);
  t.same((await readStream(stream)).map((m) => header(m, 'Nats-Msg-Id')), published.map((p) => p.id), 'all five, in order');
});

t.test('a subject no stream captures fails with a clear error instead of vanishing', { skip }, async (t) => {
  const name = uniqueName('pgrelay_nowhere');
  const sink = createNatsSink({ name: 'nowhere', sink: { type: 'nats', servers: NATS_URL, subject: `${name}.{topic}`, timeout_ms: 2000 } } as unknown as Subscription, {});
  t.teardown(() => sink.close());
  const message = { position: '1', xid: '1', id: '00000000-0000-4000-8000-000000000001', topic: 'orders', key: 'k', type: 't', data: {}, metadata: {}, created_at: new Date().toISOString() };
  const delivery = { subscription: 'nowhere', partition: 0, leaseToken: '1', attempt: 1, message } as Delivery;
  await t.rejects(sink.deliver(message, delivery), new RegExp(`no JetStream stream captures subject ${name}\\.orders`), 'the publish fails and says why');
});
