// The RabbitMQ sink against a real RabbitMQ, through the real daemon (the process, or the
// in-process service where nothing is killed and no log is read): persistent messages with
// message_id, CloudEvents and pgrelay headers, confirmed before pgrelay acknowledges; every message
// at least once and in per-key order through a SIGKILL mid-batch; a broker that goes away (a TCP
// proxy we close) makes messages wait and arrive when it is back; unroutable messages fail and are
// dead-lettered; credentials never reach the logs or the database.
// Without RabbitMQ these tests skip; with PGRELAY_REQUIRE_BROKERS=1 that is a failure.
import t, { type Test } from 'tap';
import amqp, { type Channel, type ConsumeMessage } from 'amqplib';
import { freshDatabase, query } from './helpers/db.ts';
import { startRelay, AMQP_PASS, AMQP_URL, AMQP_USER, amqpTarget, brokerSkip, daemon, increasing, lag, publish, settled, subscribe, uniqueName, waitFor } from './helpers/brokers.ts';
import { startTcpProxy } from './helpers/tcp-proxy.ts';

const skip = await brokerSkip('RabbitMQ', AMQP_URL, 5672);

type Received = { messages: ConsumeMessage[]; exchange: string; queue: string; channel: Channel };

/** A durable topic exchange and a queue bound to it with "#", consumed into `messages`; deleted when the test ends. */
async function testQueue(t: Test, options: { bind?: boolean } = {}): Promise<Received> {
  const model = await amqp.connect(AMQP_URL, { credentials: amqp.credentials.plain(AMQP_USER, AMQP_PASS) });
  const channel = await model.createChannel();
  const exchange = uniqueName('pgrelay_t_x');
  const queue = uniqueName('pgrelay_t_q');
  await channel.assertExchange(exchange, 'topic', { durable: true });
  await channel.assertQueue(queue, { durable: true });
  if (options.bind !== false) await channel.bindQueue(queue, exchange, '#');
  const messages: ConsumeMessage[] = [];
  await channel.consume(queue, (message) => {
    if (message === null) return;
    messages.push(message);
    channel.ack(message);
  });
  t.teardown(async () => {
    await channel.deleteQueue(queue).catch(() => {});
    await channel.deleteExchange(exchange).catch(() => {});
    await model.close().catch(() => {});
  });
  return { messages, exchange, queue, channel };
}

const seqOf = (message: ConsumeMessage): number => (JSON.parse(message.content.toString()) as { data: { seq: number } }).data.seq;

/** Per key, the seq values in the order first received (a consumer dropping redeliveries by message_id). */
function firstOccurrences(messages: readonly ConsumeMessage[]): { perKey: Map<string, number[]>; ids: Set<string>; duplicates: number } {
  const ids = new Set<string>();
  const perKey = new Map<string, number[]>();
  let duplicates = 0;
  for (const message of messages) {
    const id = message.properties.messageId as string;
    if (ids.has(id)) {
      duplicates += 1;
      continue;
    }
    ids.add(id);
    const key = String(message.properties.headers?.['pgrelay-key']);
    perKey.set(key, [...(perKey.get(key) ?? []), seqOf(message)]);
  }
  return { perKey, ids, duplicates };
}

t.test('persistent, confirmed messages with message_id and headers, in key order; credentials from the environment', { skip }, async (t) => {
  const db = await freshDatabase(t);
  const received = await testQueue(t);
  await subscribe(db.connectionString, 'to-rabbit', {
    type: 'amqp',
    url: AMQP_URL,
    user: AMQP_USER,
    pass_env: 'PGRELAY_TEST_RABBIT_PASS',
    exchange: received.exchange,
    exchange_type: 'topic',
    routing_key: '{topic}.{type}.{key}',
  });
  const published = await publish(db.connectionString, 60, 4);
  await daemon(t, db.connectionString, 'to-rabbit', { PGRELAY_TEST_RABBIT_PASS: AMQP_PASS });
  await waitFor('60 messages consumed', async () => (received.messages.length >= 60 ? true : undefined));
  await settled(db.connectionString, 'to-rabbit');
  t.equal(received.messages.length, 60, 'exactly 60 messages (no failure, so no redelivery)');
  t.same(received.messages.map((m) => m.properties.messageId).sort(), published.map((p) => p.id).sort(), 'message_id is the message id, each once');
  const first = received.messages.find((m) => m.properties.messageId === published[0]!.id)!;
  const [row] = await query<{ position: string }>(db.connectionString, `SELECT position::text FROM pgrelay.messages WHERE id = $1`, [published[0]!.id]);
  t.equal(first.fields.routingKey, `orders.order.created.${published[0]!.key}`, 'the routing key is the rendered template');
  t.equal(first.properties.deliveryMode, 2, 'persistent');
  t.equal(first.properties.contentType, 'application/cloudevents+json', 'content type');
  t.equal(first.properties.type, 'order.created', 'the AMQP type property is the message type');
  t.match(
    first.properties.headers,
    {
      'cloudEvents:id': published[0]!.id,
      'cloudEvents:type': 'order.created',
      'cloudEvents:subject': published[0]!.key,
      'cloudEvents:source': 'pgrelay://to-rabbit',
      'cloudEvents:specversion': '1.0',
      'pgrelay-topic': 'orders',
      'pgrelay-key': published[0]!.key,
      'pgrelay-type': 'order.created',
      'pgrelay-position': row!.position,
      'pgrelay-attempt': '1',
    },
    'headers carry the CloudEvents attributes and pgrelay’s topic, key, type and position',
  );
  t.match(JSON.parse(first.content.toString()), { specversion: '1.0', id: published[0]!.id, data: { seq: 1 } }, 'the body is the CloudEvent');
  const { perKey } = firstOccurrences(received.messages);
  for (const [key, seqs] of perKey) t.ok(increasing(seqs), `key ${key} arrives in log order`);
});

t.test('SIGKILL mid-batch, one at a time and with batch_publish: every message at least once, per-key order kept', { skip }, async (t) => {
  const db = await freshDatabase(t);
  // Two subscriptions of the same messages, one per publishing mode, served by one daemon, each
  // through its own proxy that, after 300 publishes, stops passing the broker's replies: the
  // messages reach the queue but their confirms never reach the daemon, which is then killed.
  const target = amqpTarget();
  const modes = [];
  for (const batchPublish of [false, true]) {
    const received = await testQueue(t);
    const proxy = await startTcpProxy(t, target.host, target.port);
    const name = batchPublish ? 'rabbit-kill-batch' : 'rabbit-kill';
    await subscribe(
      db.connectionString,
      name,
      {
        type: 'amqp',
        url: `amqp://127.0.0.1:${proxy.port}`,
        user: AMQP_USER,
        pass_env: 'PGRELAY_TEST_RABBIT_PASS',
        exchange: received.exchange,
        routing_key: '{topic}.{key}',
        batch_publish: batchPublish,
      },
      { batch_size: 200, lease_seconds: 2, partitions: 2 },
    );
    modes.push({ received, proxy, name, label: batchPublish ? 'batch_publish' : 'one at a time' });
  }
  const total = 1200;
  const published = await publish(db.connectionString, total, 25);
  const holding = modes.map((m) => m.proxy.holdRepliesAfter(m.received.exchange, 300));
  const names = modes.map((m) => m.name).join(',');
  const relay = await daemon(t, db.connectionString, names, { PGRELAY_TEST_RABBIT_PASS: AMQP_PASS });
  await Promise.all(holding);
  const unconfirmed = await Promise.all(
    modes.map((m) =>
      waitFor(`${m.label}: messages in the queue that the daemon has no confirm for`, async () => {
        const acked = (await lag(db.connectionString, m.name)).delivered;
        return m.received.messages.length >= acked + 20 ? m.received.messages.length : undefined;
      }, 30_000, 20),
    ),
  );
  await relay.kill('SIGKILL');
  for (const [i, m] of modes.entries()) {
    await m.proxy.open();
    const acked = (await lag(db.connectionString, m.name)).delivered;
    t.comment(`${m.label}, at the kill: ${unconfirmed[i]} consumed, ${acked} acknowledged in pgrelay`);
    t.ok(acked < unconfirmed[i]! && acked < total, `${m.label}: the kill landed mid-batch: messages reached the queue unacknowledged in pgrelay`);
  }
  await daemon(t, db.connectionString, names, { PGRELAY_TEST_RABBIT_PASS: AMQP_PASS });
  for (const m of modes) {
    await settled(db.connectionString, m.name);
    await waitFor(`${m.label}: every message consumed`, async () => (firstOccurrences(m.received.messages).ids.size >= total ? true : undefined), 20_000);
    const { perKey, ids, duplicates } = firstOccurrences(m.received.messages);
    t.same([...ids].sort(), published.map((p) => p.id).sort(), `${m.label}: all ${total} messages arrived`);
    t.ok(duplicates > 0, `${m.label}: messages in flight at the kill arrived again (${duplicates} duplicates, dropped by message_id)`);
    const unordered = [...perKey].filter(([, seqs]) => !increasing(seqs)).map(([key]) => key);
    t.same(unordered, [], `${m.label}: every key’s messages first arrive in log order`);
    t.equal((await lag(db.connectionString, m.name)).dead, 0, `${m.label}: nothing dead-lettered`);
  }
});

t.test('a broker that goes away: messages wait, fail and retry, then arrive once it is back', { skip }, async (t) => {
  const db = await freshDatabase(t);
  const received = await testQueue(t);
  const target = amqpTarget();
  const proxy = await startTcpProxy(t, target.host, target.port);
  await subscribe(db.connectionString, 'rabbit-outage', {
    type: 'amqp',
    url: `amqp://127.0.0.1:${proxy.port}`,
    user: AMQP_USER,
    pass_env: 'PGRELAY_TEST_RABBIT_PASS',
    exchange: received.exchange,
    routing_key: '{topic}.{key}',
    timeout_ms: 2000,
  });
  const first = await publish(db.connectionString, 10, 3);
  await startRelay(t, db.connectionString, 'rabbit-outage', { PGRELAY_TEST_RABBIT_PASS: AMQP_PASS });
  await waitFor('the first 10 consumed', async () => (received.messages.length >= 10 ? true : undefined));
  await settled(db.connectionString, 'rabbit-outage');
  await proxy.close();
  const second = await publish(db.connectionString, 20, 3, 11);
  const failed = await waitFor('failed deliveries recorded while the broker is away', async () => {
    const [row] = await query<{ attempts: number; last_error: string }>(
      db.connectionString,
      `SELECT attempts, last_error FROM pgrelay.retries WHERE subscription = 'rabbit-outage' ORDER BY attempts DESC LIMIT 1`,
    );
    return row !== undefined && row.attempts >= 2 ? row : undefined;
  });
  t.match(failed.last_error, /AMQP/, `the failure says why: ${failed.last_error}`);
  t.equal(received.messages.length, 10, 'nothing new arrived while the broker was away');
  t.equal((await lag(db.connectionString, 'rabbit-outage')).dead, 0, 'nothing dead-lettered');
  await proxy.open();
  await settled(db.connectionString, 'rabbit-outage');
  await waitFor('all 30 consumed', async () => (firstOccurrences(received.messages).ids.size >= 30 ? true : undefined));
  const { perKey, ids } = firstOccurrences(received.messages);
  t.same([...ids].sort(), [...first, ...second].map((p) => p.id).sort(), 'all 30 messages arrived');
  for (const [key, seqs] of perKey) t.ok(increasing(seqs), `key ${key} arrives in log order across the outage`);
});

t.test('an unroutable message fails, is retried, then dead-lettered with the reason; later keys flow', { skip }, async (t) => {
  const db = await freshDatabase(t);
  const received = await testQueue(t, { bind: false });
  await received.channel.bindQueue(received.queue, received.exchange, 'orders.routed');
  await subscribe(
    db.connectionString,
    'rabbit-unroutable',
    { type: 'amqp', url: AMQP_URL, user: AMQP_USER, pass_env: 'PGRELAY_TEST_RABBIT_PASS', exchange: received.exchange, routing_key: '{topic}.{key}' },
    { max_attempts: 3, backoff: { initial_ms: 20, max_ms: 50 } },
  );
  const [lost] = await query<{ id: string }>(db.connectionString, `SELECT pgrelay.publish('orders', 'nowhere', 'order.created', '{}') AS id`);
  const [routed] = await query<{ id: string }>(db.connectionString, `SELECT pgrelay.publish('orders', 'routed', 'order.created', '{}') AS id`);
  await startRelay(t, db.connectionString, 'rabbit-unroutable', { PGRELAY_TEST_RABBIT_PASS: AMQP_PASS });
  const dead = await waitFor('the unroutable message dead-lettered', async () => {
    const [row] = await query<{ id: string; attempts: number; last_error: string }>(
      db.connectionString,
      `SELECT (message).id::text AS id, attempts, last_error FROM pgrelay.dead_letters WHERE subscription = 'rabbit-unroutable'`,
    );
    return row;
  });
  t.equal(dead.id, lost!.id, 'the message no queue takes is the one dead-lettered');
  t.equal(dead.attempts, 3, 'after max_attempts');
  t.match(dead.last_error, /unroutable.*orders\.nowhere/, 'the reason names the routing key');
  await waitFor('the routed message consumed', async () => (received.messages.length >= 1 ? true : undefined));
  t.same(received.messages.map((m) => m.properties.messageId), [routed!.id], 'the routable message arrived');
});

t.test('credentials come from the environment and never reach the logs or the database', { skip }, async (t) => {
  const db = await freshDatabase(t);
  const received = await testQueue(t);
  const secret = 'wrong-Sekrit-4711';
  await subscribe(db.connectionString, 'rabbit-badpass', {
    type: 'amqp',
    url_env: 'PGRELAY_TEST_RABBIT_URL',
    exchange: received.exchange,
    routing_key: '{topic}',
  });
  await publish(db.connectionString, 3, 1);
  const url = new URL(AMQP_URL);
  url.username = AMQP_USER;
  url.password = secret;
  const relay = await daemon(t, db.connectionString, 'rabbit-badpass', { PGRELAY_TEST_RABBIT_URL: url.toString() });
  const failed = await waitFor('a failed delivery', async () => {
    const [row] = await query<{ last_error: string }>(db.connectionString, `SELECT last_error FROM pgrelay.retries WHERE subscription = 'rabbit-badpass' AND attempts >= 2 LIMIT 1`);
    return row;
  });
  t.match(failed.last_error, /ACCESS.REFUSED|403/, `the login was refused: ${failed.last_error}`);
  const errors = await query<{ e: string }>(db.connectionString, `SELECT coalesce(string_agg(last_error, ' '), '') AS e FROM pgrelay.retries`);
  const sinks = await query<{ s: string }>(db.connectionString, `SELECT sink::text AS s FROM pgrelay.subscriptions`);
  t.notOk(errors[0]!.e.includes(secret), 'the password is not in the recorded errors');
  t.notOk(sinks[0]!.s.includes(secret), 'nor in the subscription');
  await relay.kill('SIGTERM');
  t.notOk(JSON.stringify(relay.logs).includes(secret), 'nor in the daemon’s logs');
  t.equal(received.messages.length, 0, 'nothing was delivered with the wrong password');
});
