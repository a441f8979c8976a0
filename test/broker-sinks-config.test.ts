// Broker sink descriptions without a broker: pgrelay.subscribe refuses malformed nats and amqp
// sinks with PR001 naming the sink (and writes nothing), the sink factories refuse what the
// database cannot check (missing credential variables, empty credential files) without printing
// secrets, and the batch outcome of batch_publish keeps the per-key rules of one-at-a-time delivery.
import t, { type Test } from 'tap';
import pg from 'pg';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import type { Delivery, Message, Subscription } from '../client/index.ts';
import { createNatsSink } from '../daemon/nats-sink.ts';
import { createAmqpSink } from '../daemon/amqp-sink.ts';
import { batchPublisher } from '../daemon/batch-publish.ts';
import { freshDatabase, query } from './helpers/db.ts';

async function connect(t: Test, connectionString: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: 15_000 });
  client.on('error', () => {});
  await client.connect();
  t.teardown(() => client.end().catch(() => {}));
  return client;
}

const nats = { type: 'nats', servers: 'nats://127.0.0.1:4222', subject: 'pgrelay.{topic}.{key}' };
const amqp = { type: 'amqp', url: 'amqp://127.0.0.1:5672', exchange: 'events', routing_key: '{topic}.{type}' };

const bad: Array<[string, Record<string, unknown>, RegExp]> = [
  ['nats without servers', { ...nats, servers: undefined }, /"servers"/],
  ['nats with an empty server list', { ...nats, servers: [] }, /"servers"/],
  ['nats with a password in a server URL', { ...nats, servers: ['nats://me:hunter2@host:4222'] }, /must not hold a password/],
  ['nats without subject', { ...nats, subject: undefined }, /"subject"/],
  ['nats subject with a wildcard', { ...nats, subject: 'pgrelay.*' }, /not a valid NATS subject/],
  ['nats subject with an empty token', { ...nats, subject: 'pgrelay..{topic}' }, /not a valid NATS subject/],
  ['nats subject with an unknown placeholder', { ...nats, subject: 'pgrelay.{tenant}' }, /unknown placeholder \{tenant\}/],
  ['nats subject with an unmatched brace', { ...nats, subject: 'pgrelay.{topic' }, /unmatched brace/],
  ['nats create_stream without stream', { ...nats, create_stream: true }, /"create_stream" needs "stream"/],
  ['nats stream with a space', { ...nats, stream: 'my stream' }, /"stream"/],
  ['nats duplicate_window_ms not a number', { ...nats, stream: 'S', duplicate_window_ms: '2m' }, /duplicate_window_ms/],
  ['nats with an inline password', { ...nats, user: 'me', password: 'hunter2' }, /must not hold a credential itself/],
  ['nats with an inline token', { ...nats, token: 'abc' }, /token_env/],
  ['nats pass_env empty', { ...nats, user: 'me', pass_env: '' }, /"pass_env" must be a non-empty string/],
  ['amqp without a url', { ...amqp, url: undefined }, /exactly one of "url"/],
  ['amqp with url and url_env', { ...amqp, url_env: 'RABBIT_URL' }, /exactly one of "url"/],
  ['amqp url with a password', { ...amqp, url: 'amqp://guest:guest@host:5672' }, /must not hold a password/],
  ['amqp url of another scheme', { ...amqp, url: 'http://host' }, /amqp:\/\//],
  ['amqp without exchange', { ...amqp, exchange: undefined }, /"exchange"/],
  ['amqp without routing_key', { ...amqp, routing_key: undefined }, /"routing_key"/],
  ['amqp routing_key with an unknown placeholder', { ...amqp, routing_key: '{topic}.{id}' }, /unknown placeholder \{id\}/],
  ['amqp exchange_type unknown', { ...amqp, exchange_type: 'x-delayed' }, /exchange_type/],
  ['amqp exchange_type for the default exchange', { ...amqp, exchange: '', exchange_type: 'topic' }, /default exchange/],
  ['amqp user without a password', { ...amqp, user: 'guest' }, /"user" and "pass_env"/],
  ['amqp mandatory not a boolean', { ...amqp, mandatory: 'yes' }, /"mandatory" must be true or false/],
  ['batch_publish not a boolean', { ...nats, batch_publish: 1 }, /"batch_publish" must be true or false/],
  ['content_mode unknown', { ...amqp, content_mode: 'xml' }, /content_mode/],
];

t.test('subscribe refuses malformed broker sinks with PR001 naming the sink, and writes nothing', async (t) => {
  const db = await freshDatabase(t);
  const client = await connect(t, db.connectionString);
  for (const [label, sink, message] of bad) {
    let error: (Error & { code?: string; column?: string }) | undefined;
    try {
      await client.query(`SELECT pgrelay.subscribe('s', ARRAY['orders'], $1::jsonb)`, [JSON.stringify(sink)]);
    } catch (caught) {
      error = caught as Error & { code?: string; column?: string };
    }
    if (error === undefined) {
      t.fail(`${label}: accepted`);
      continue;
    }
    t.equal(error.code, 'PR001', `${label}: PR001 (${error.code}: ${error.message})`);
    t.equal(error.column, 'sink', `${label}: names the sink argument`);
    t.match(error.message, message, `${label}: ${error.message}`);
    if (typeof sink.password === 'string') t.notOk(error.message.includes(sink.password), `${label}: the message does not repeat the secret`);
  }
  const rows = await query<{ n: number }>(db.connectionString, 'SELECT count(*)::int AS n FROM pgrelay.subscriptions');
  t.equal(rows[0]!.n, 0, 'no subscription was written');
});

t.test('subscribe accepts well-formed broker sinks', async (t) => {
  const db = await freshDatabase(t);
  const good = [
    nats,
    { ...nats, servers: ['nats://a:4222', 'nats://b:4222'], stream: 'ORDERS', create_stream: true, duplicate_window_ms: 600000, batch_publish: true },
    { ...nats, user: 'relay', pass_file: '/run/secrets/nats', content_mode: 'binary' },
    { ...nats, token_env: 'NATS_TOKEN', subject: 'x.{subscription}.{type}' },
    amqp,
    { ...amqp, url_env: 'RABBIT_URL', url: undefined, exchange_type: 'topic', mandatory: false },
    { ...amqp, user: 'guest', pass_env: 'RABBIT_PASS', exchange: '', routing_key: 'queue-{key}' },
  ];
  for (const [i, sink] of good.entries()) {
    await query(db.connectionString, `SELECT pgrelay.subscribe($1, ARRAY['orders'], $2::jsonb)`, [`ok-${i}`, JSON.stringify(sink)]);
  }
  const rows = await query<{ n: number }>(db.connectionString, 'SELECT count(*)::int AS n FROM pgrelay.subscriptions');
  t.equal(rows[0]!.n, good.length, 'every one stored');
});

const subscription = (sink: Record<string, unknown>): Subscription =>
  ({ name: 'sub', topics: ['orders'], sink, partitions: 1, max_attempts: 3, batch_size: 10 }) as unknown as Subscription;

t.test('the sink factories read credentials from the environment or files and never print them', async (t) => {
  t.throws(() => createNatsSink(subscription({ ...nats, user: 'me', pass_env: 'NO_SUCH_VAR' }), {}), /environment variable NO_SUCH_VAR \(pass_env\) is not set/);
  const dir = mkdtempSync(join(tmpdir(), 'pgrelay-broker-'));
  writeFileSync(join(dir, 'empty'), '\n');
  t.throws(() => createAmqpSink(subscription({ ...amqp, user: 'guest', pass_file: join(dir, 'empty') }), {}), /pass_file .* is empty/);
  t.throws(() => createAmqpSink(subscription({ ...amqp, user: 'guest', pass_file: join(dir, 'missing') }), {}), /cannot read pass_file .*ENOENT/);
  const secret = 'hunter2-secret';
  let message = '';
  try {
    createAmqpSink(subscription({ ...amqp, url: `amqp://guest:${secret}@host:5672` }), {});
  } catch (error) {
    message = (error as Error).message;
  }
  t.match(message, /must not hold a password/, 'a password in the url is refused');
  t.notOk(message.includes(secret), 'and not repeated');
  t.throws(() => createNatsSink(subscription({ ...nats, subject: 'a.{nope}' }), {}), /unknown placeholder \{nope\}/, 'templates are compiled at creation');
  const sink = createAmqpSink(subscription({ ...amqp, url: undefined, url_env: 'RABBIT_URL' }), { RABBIT_URL: 'amqp://guest:guest@127.0.0.1:5672' });
  t.equal(sink.type, 'amqp', 'a full URL from the environment is accepted');
  await sink.close();
});

const message = (position: number, key: string | null): Message =>
  ({ position: String(position), xid: '1', id: `id-${position}`, topic: 'orders', key, type: 't', data: {}, metadata: {}, created_at: new Date().toISOString() }) as Message;
const delivery = (position: number, key: string | null): Delivery => ({ subscription: 'sub', partition: 0, leaseToken: '1', attempt: 1, message: message(position, key) });

t.test('batch_publish outcome: per key, acknowledged up to the first failure, which fails; the rest comes again', async (t) => {
  const deliveries = [delivery(1, 'a'), delivery(2, 'b'), delivery(3, 'a'), delivery(4, 'a'), delivery(5, null), delivery(6, 'b'), delivery(7, null)];
  const failures = new Map([[3, 'nacked'], [7, 'timeout']]);
  const outcome = await batchPublisher({
    deliverMany: async (list) => list.map((d) => (failures.has(Number(d.message.position)) ? new Error(failures.get(Number(d.message.position))!) : null)),
  })(deliveries);
  t.same(outcome.acked, ['1', '2', '5', '6'], 'acknowledged: everything before each stream’s first failure');
  t.same(outcome.failed, ['3', '7'], 'failed: the first failure of key a, and the keyless message that failed');
  t.same(outcome.errors, ['nacked', 'timeout'], 'with their reasons');
  t.notOk(outcome.acked.includes('4'), 'key a’s message after the failure is not acknowledged: it comes again behind the retry');
  const short = await batchPublisher({ deliverMany: async () => [null] })([delivery(1, 'a'), delivery(2, 'a')]);
  t.same([short.acked, short.failed], [['1'], ['2']], 'a missing result counts as a failure');
});

/** A local port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

t.test('a broker that cannot be reached: deliveries fail fast, say why without secrets, and reconnect with backoff', async (t) => {
  const port = await closedPort();
  const secret = 'Sekrit-pass-0815';
  const env = { PASS: secret, URL: `amqp://guest:${secret}@127.0.0.1:${port}` };
  const sinks = [
    createNatsSink(subscription({ ...nats, servers: `nats://127.0.0.1:${port}`, user: 'relay', pass_env: 'PASS' }), env),
    createAmqpSink(subscription({ ...amqp, url: undefined, url_env: 'URL' }), env),
  ];
  for (const sink of sinks) {
    const first = await sink.deliver(message(1, 'a'), delivery(1, 'a')).then(() => null, (error: Error) => error);
    t.ok(first instanceof Error, `${sink.type}: the delivery fails`);
    t.match(first?.message, sink.type === 'nats' ? /^NATS / : /^AMQP /, `${sink.type}: the error says which broker: ${first?.message}`);
    t.notOk(first?.message.includes(secret), `${sink.type}: and holds no secret`);
    const second = await sink.deliver(message(2, 'a'), delivery(2, 'a')).then(() => null, (error: Error) => error);
    t.match(second?.message, /next connection attempt in \d+ ms/, `${sink.type}: within the backoff the next delivery fails at once, without a new attempt`);
    await sink.close();
    await t.rejects(sink.deliver(message(3, 'a'), delivery(3, 'a')), /sink closed/, `${sink.type}: a closed sink refuses deliveries`);
  }
});
