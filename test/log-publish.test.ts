// pgrelay.publish / publish_batch and the read filters, through SQL and the TypeScript client:
// atomicity with business writes (DESIGN invariant 1), ids, defaults, batch order, topic and
// partition filters, and the NOTIFY doorbell.
import t, { type Test } from 'tap';
import pg from 'pg';
import { sql } from 'slonik';
import { createClient, START, type Cursor, type Message, type PgrelayClient } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

async function connect(t: Test, connectionString: string, name: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: name, connectionTimeoutMillis: 15_000 });
  client.on('error', () => {});
  await client.connect();
  await client.query(`SET statement_timeout = '20s'`);
  t.teardown(() => client.end().catch(() => {}));
  return client;
}

async function clientFor(t: Test, connectionString: string): Promise<PgrelayClient> {
  const client = await createClient({ connectionString, maximumPoolSize: 4 });
  t.teardown(() => client.end());
  return client;
}

/** The horizon is cluster-wide: wait until every transaction that ended before now is below it. */
async function settle(connectionString: string, timeoutMs = 30_000): Promise<void> {
  const [row] = await query<{ w: string }>(connectionString, 'SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS w');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [done] = await query<{ ok: boolean }>(connectionString, 'SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::xid8 AS ok', [row!.w]);
    if (done!.ok) return;
    if (Date.now() > deadline) throw new Error(`the horizon did not pass ${row!.w} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function drain(client: PgrelayClient, options: Parameters<PgrelayClient['read']>[1] = {}): Promise<Message[]> {
  let cursor: Cursor = START;
  const all: Message[] = [];
  for (let i = 0; i < 10_000; i++) {
    const batch = await client.read(cursor, options);
    if (batch.messages.length === 0) return all;
    all.push(...batch.messages);
    cursor = batch.cursor;
  }
  throw new Error('drain: the reader never ran dry');
}

const count = async (connectionString: string, from: string): Promise<number> =>
  Number((await query<{ n: string }>(connectionString, `SELECT count(*)::text AS n FROM ${from}`))[0]!.n);

t.test('publish is atomic with the business write (transaction helper)', async (t) => {
  const db = await freshDatabase(t);
  const client = await clientFor(t, db.connectionString);
  await query(db.connectionString, 'CREATE TABLE public.orders (id integer PRIMARY KEY, status text NOT NULL)');

  const id = await client.transaction(async (tx) => {
    await tx.connection.query(sql.unsafe`INSERT INTO public.orders VALUES (1, 'new')`);
    return tx.publish({ topic: 'orders', key: '1', type: 'order.created', data: { id: 1 } });
  });
  t.match(id, UUID, 'committed publish returns a uuid');
  t.same(await query(db.connectionString, 'SELECT id::text AS id FROM pgrelay.messages'), [{ id }], 'committed: the message exists');
  t.equal(await count(db.connectionString, 'public.orders'), 1, 'committed: the order exists');

  let rolledBackId: string | undefined;
  await t.rejects(
    client.transaction(async (tx) => {
      await tx.connection.query(sql.unsafe`INSERT INTO public.orders VALUES (2, 'new')`);
      rolledBackId = await tx.publish({ topic: 'orders', key: '2', type: 'order.created', data: { id: 2 } });
      await tx.publishMany([
        { topic: 'orders', key: '2', type: 'order.priced', data: {} },
        { topic: 'orders', key: '2', type: 'order.paid', data: {} },
      ]);
      throw new Error('business rule failed');
    }),
    { message: 'business rule failed' },
    'the caller sees its own error',
  );
  t.match(rolledBackId, UUID, 'publish returned an id inside the failed transaction');
  t.equal(await count(db.connectionString, 'pgrelay.messages'), 1, 'rolled back: no message of that transaction exists');
  t.equal(await count(db.connectionString, 'public.orders'), 1, 'rolled back: no order either');

  // The business write fails after the publish: the publish goes too.
  await t.rejects(
    client.transaction(async (tx) => {
      await tx.publish({ topic: 'orders', key: '1', type: 'order.created', data: { id: 1 } });
      await tx.connection.query(sql.unsafe`INSERT INTO public.orders VALUES (1, 'duplicate')`);
    }),
    'a failing business write rejects the transaction',
  );
  t.equal(await count(db.connectionString, 'pgrelay.messages'), 1, 'a failed business write takes the publish with it');

  // Outside transaction(), client.publish commits on its own.
  await client.publish({ topic: 'orders', key: '3', type: 'order.created', data: { id: 3 } });
  t.equal(await count(db.connectionString, 'pgrelay.messages'), 2, 'a publish outside a transaction commits by itself');

  await settle(db.connectionString);
  const delivered = await drain(client);
  t.same(delivered.map((m) => m.key), ['1', '3'], 'a reader sees exactly the committed messages');
});

t.test('publish stores what it was given and returns the stored id', async (t) => {
  const db = await freshDatabase(t);
  const client = await clientFor(t, db.connectionString);
  const pgc = await connect(t, db.connectionString, 'publish-sql');

  const viaSql = (await pgc.query<{ id: string }>(`SELECT pgrelay.publish('orders', 'k1', 'order.created', '{"a": 1}') AS id`)).rows[0]!.id;
  const viaNamed = (
    await pgc.query<{ id: string }>(
      `SELECT pgrelay.publish(topic => 'orders', key => NULL, type => 'order.note', data => '"text"', metadata => '{"trace": "t1"}') AS id`,
    )
  ).rows[0]!.id;
  const viaClient = await client.publish({ topic: 'billing.v2', key: 'k2', type: 'invoice.sent', data: [1, 2, { b: null }] });
  const jsonNull = (await pgc.query<{ id: string }>(`SELECT pgrelay.publish('orders', 'k1', 't', 'null'::jsonb) AS id`)).rows[0]!.id;
  for (const id of [viaSql, viaNamed, viaClient, jsonNull]) t.match(id, UUID, `${id} is a uuid`);

  const rows = await query<Record<string, unknown>>(
    db.connectionString,
    `SELECT id::text AS id, topic, key, type, data, metadata FROM pgrelay.messages ORDER BY position`,
  );
  t.same(rows, [
    { id: viaSql, topic: 'orders', key: 'k1', type: 'order.created', data: { a: 1 }, metadata: {} },
    { id: viaNamed, topic: 'orders', key: null, type: 'order.note', data: 'text', metadata: { trace: 't1' } },
    { id: viaClient, topic: 'billing.v2', key: 'k2', type: 'invoice.sent', data: [1, 2, { b: null }], metadata: {} },
    { id: jsonNull, topic: 'orders', key: 'k1', type: 't', data: null, metadata: {} },
  ], 'stored rows match the arguments; metadata defaults to {}; a JSON null is data');

  await settle(db.connectionString);
  const read = await drain(client);
  t.same(read.map((m) => m.id), [viaSql, viaNamed, viaClient, jsonNull], 'read returns the same ids in position order');
  t.same(read[0]!.metadata, {}, 'read returns metadata {}');
  t.ok(read.every((m) => /^\d+$/.test(m.position) && /^\d+$/.test(m.xid)), 'positions and xids are decimal strings');
});

t.test('publish_batch returns ids in input order', async (t) => {
  const db = await freshDatabase(t);
  const client = await clientFor(t, db.connectionString);
  const inputs = Array.from({ length: 25 }, (_, i) => ({
    topic: i % 2 ? 'orders' : 'billing',
    key: i % 3 ? `k${i % 4}` : null,
    type: 'e',
    data: { i },
    ...(i % 5 === 0 ? { metadata: { i } } : {}),
  }));
  const ids = await client.publishMany(inputs);
  t.equal(ids.length, inputs.length, 'one id per input');
  const rows = await query<{ id: string; i: number; metadata: unknown; key: string | null }>(
    db.connectionString,
    `SELECT id::text AS id, (data->>'i')::int AS i, metadata, key FROM pgrelay.messages ORDER BY position`,
  );
  t.same(rows.map((r) => r.i), inputs.map((_, i) => i), 'positions follow the input order');
  t.same(rows.map((r) => r.id), ids, 'ids[i] is the id of inputs[i]');
  t.same(rows.map((r) => r.metadata), inputs.map((input) => input.metadata ?? {}), 'metadata defaults to {}');
  t.same(rows.map((r) => r.key), inputs.map((input) => input.key), 'null keys stay null');

  t.same(await client.publishMany([]), [], 'an empty batch returns no ids');
  t.equal(await count(db.connectionString, 'pgrelay.messages'), inputs.length, 'an empty batch writes nothing');

  const sqlIds = await query<{ ids: string[] }>(
    db.connectionString,
    `SELECT pgrelay.publish_batch('[{"topic":"t","type":"a","data":1},{"topic":"t","key":"x","type":"b","data":2,"metadata":{"m":1}}]') AS ids`,
  );
  const stored = await query<{ id: string; type: string }>(
    db.connectionString,
    `SELECT id::text AS id, type FROM pgrelay.messages WHERE topic = 't' ORDER BY position`,
  );
  t.same(stored.map((r) => r.id), sqlIds[0]!.ids, 'SQL publish_batch: ids in input order');
  t.same(stored.map((r) => r.type), ['a', 'b'], 'SQL publish_batch: key and metadata are optional');
});

t.test('message ids: version-8 uuids that carry the position, distinct, the same in every writer (publish, batch, CDC, snapshot, streams, sagas)', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, 'CREATE TABLE public.accounts (id integer PRIMARY KEY, owner text NOT NULL)');
  await query(db.connectionString, `SELECT pgrelay.cdc_enable('public.accounts')`);
  await query(db.connectionString, `CREATE FUNCTION public.noop(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT ''{}''::jsonb'`);
  await query(db.connectionString, `SELECT pgrelay.saga_define('ids.saga', '{"steps": [{"name": "only", "action": {"sql": "public.noop"}}]}')`);
  const pgc = await connect(t, db.connectionString, 'publish-ids');
  // setseed makes random() repeat: the ids must stay distinct through their positions.
  for (let round = 0; round < 2; round++) {
    await pgc.query('BEGIN');
    await pgc.query('SELECT setseed(0.5)');
    await pgc.query(`SELECT pgrelay.publish('orders', 'k' || g, 'e', '{}') FROM generate_series(1, 50) g`);
    await pgc.query(`SELECT pgrelay.publish_batch(jsonb_agg(jsonb_build_object('topic', 'orders', 'type', 'b', 'data', g))) FROM generate_series(1, 50) g`);
    await pgc.query(`INSERT INTO public.accounts SELECT g + ${round * 100}, 'o' FROM generate_series(1, 20) g`);
    await pgc.query(`UPDATE public.accounts SET owner = 'p' WHERE id <= ${round * 100 + 5}`);
    await pgc.query(`DELETE FROM public.accounts WHERE id = ${round * 100 + 1}`);
    await pgc.query(`SELECT pgrelay.stream_append('account.${round}', 'a', '[{"type": "opened", "data": {}}, {"type": "closed", "data": {}}]')`);
    await pgc.query(`SELECT pgrelay.saga_start('ids.saga', '{}') FROM generate_series(1, 3)`);
    await pgc.query('COMMIT');
  }
  await query(db.connectionString, `SELECT pgrelay.cdc_snapshot('public.accounts')`);
  const rows = await query<{ id: string; position: string; type: string }>(
    db.connectionString,
    `SELECT id::text AS id, position::text AS position, type FROM pgrelay.messages ORDER BY position`,
  );
  t.ok(rows.length > 250, `${rows.length} messages from publish, publish_batch, CDC, snapshot, stream_append and saga_start`);
  const types = new Set(rows.map((r) => r.type));
  for (const type of ['b', 'delete', 'e', 'insert', 'snapshot', 'update', 'opened', 'closed', 'saga.started', 'saga.step_succeeded', 'saga.completed']) {
    t.ok(types.has(type), `the writer of ${type} messages took part`);
  }
  t.equal(new Set(rows.map((r) => r.id)).size, rows.length, 'every id is distinct');
  const v8 = /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  const bad = rows.filter((r) => !v8.test(r.id) || BigInt(`0x${r.id.slice(19).replace('-', '')}`) !== (BigInt(r.position) | (1n << 63n)));
  t.same(bad, [], 'each id is an RFC 9562 version-8 uuid whose last 62 bits are its position');
});

t.test('read filters by topic: exact names and prefixes ending in *', async (t) => {
  const db = await freshDatabase(t);
  const client = await clientFor(t, db.connectionString);
  const topics = ['orders', 'orders.v2', 'cdc.public.users', 'cdc.public.items', 'cdc.other.users', 'cdc.publicity', 'cdc.public.'];
  // Interleaved, several rounds, so a filtered reader has to skip over other topics.
  for (let round = 0; round < 3; round++) {
    await client.publishMany(topics.map((topic, i) => ({ topic, key: `k${i % 2}`, type: 'e', data: { topic, round } })));
  }
  await settle(db.connectionString);

  const topicsOf = async (filter: string[], maxMessages = 2): Promise<string[]> =>
    (await drain(client, { topics: filter, maxMessages })).map((m) => m.topic);
  const rounds = (names: string[]): string[] => [0, 1, 2].flatMap(() => names);

  t.same(await topicsOf(['orders']), rounds(['orders']), "'orders' is exact: not orders.v2");
  t.same(await topicsOf(['cdc.public.*']), rounds(['cdc.public.users', 'cdc.public.items', 'cdc.public.']), "'cdc.public.*' matches the prefix only");
  t.same(await topicsOf(['orders*']), rounds(['orders', 'orders.v2']), "'orders*' matches orders and orders.v2");
  t.same(await topicsOf(['orders', 'cdc.public.*']), rounds(['orders', 'cdc.public.users', 'cdc.public.items', 'cdc.public.']), 'several patterns');
  t.same(await topicsOf(['*']), rounds(topics), "'*' matches every topic");
  t.same(await topicsOf(['nothing.here', 'nope*']), [], 'no match: nothing');

  const viaSql = await query<{ topic: string }>(
    db.connectionString,
    `SELECT topic FROM pgrelay.read('0', 0, 100, ARRAY['cdc.public.*', 'orders.v2'])`,
  );
  t.same(viaSql.map((r) => r.topic), rounds(['orders.v2', 'cdc.public.users', 'cdc.public.items', 'cdc.public.']), 'the SQL form filters the same way');
});

t.test('read partitions: every message in exactly one partition, a key in one partition', async (t) => {
  const db = await freshDatabase(t);
  const client = await clientFor(t, db.connectionString);
  const inputs = Array.from({ length: 400 }, (_, i) => ({
    topic: 'orders',
    key: i % 10 === 0 ? null : `key-${i % 37}`,
    type: 'e',
    data: { i },
  }));
  const ids = await client.publishMany(inputs);
  await settle(db.connectionString);

  for (const partitions of [1, 3, 4, 16]) {
    const seen = new Map<string, number>();
    const partitionOfKey = new Map<string, Set<number>>();
    let total = 0;
    const sizes: number[] = [];
    for (let partition = 0; partition < partitions; partition++) {
      const messages = await drain(client, { partition, partitions, maxMessages: 50 });
      sizes.push(messages.length);
      total += messages.length;
      for (const m of messages) {
        seen.set(m.id, (seen.get(m.id) ?? 0) + 1);
        if (m.key !== null) {
          const set = partitionOfKey.get(m.key) ?? new Set();
          set.add(partition);
          partitionOfKey.set(m.key, set);
        }
      }
      const positions = messages.map((m) => BigInt(m.position));
      t.ok(positions.every((p, i) => i === 0 || p > positions[i - 1]!), `${partitions} partitions, #${partition}: in position order`);
    }
    t.equal(total, ids.length, `${partitions} partitions: ${total} messages in all (sizes ${sizes.join(', ')})`);
    t.same([...seen.values()].filter((n) => n !== 1), [], `${partitions} partitions: no message in two partitions`);
    t.same(ids.filter((id) => !seen.has(id)), [], `${partitions} partitions: no message in none`);
    t.same([...partitionOfKey].filter(([, set]) => set.size !== 1).map(([key]) => key), [], `${partitions} partitions: each key in one partition`);
    if (partitions > 1) t.ok(sizes.filter((n) => n > 0).length > 1, `${partitions} partitions: the load is spread`);
  }
});

t.test('the doorbell: one NOTIFY per arming, only on commit, never while disarmed', async (t) => {
  const db = await freshDatabase(t);
  const listener = await connect(t, db.connectionString, 'doorbell-listener');
  const producer = await connect(t, db.connectionString, 'doorbell-producer');
  const notes: Array<{ channel: string; payload: string | undefined }> = [];
  listener.on('notification', (note) => notes.push({ channel: note.channel, payload: note.payload }));
  await listener.query('LISTEN pgrelay');
  const quiet = (ms = 300): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
  const armed = async (): Promise<boolean> =>
    (await producer.query<{ armed: boolean }>('SELECT armed FROM pgrelay.doorbell')).rows[0]!.armed;
  const publish = (topic = 'orders', body = '{"secret": "body"}'): Promise<unknown> =>
    producer.query(`SELECT pgrelay.publish($1, 'k', 'e', $2::jsonb)`, [topic, body]);

  t.equal(await armed(), false, 'a fresh install starts disarmed');

  await producer.query('UPDATE pgrelay.doorbell SET armed = true');
  await publish();
  await publish();
  await quiet();
  t.same(notes, [{ channel: 'pgrelay', payload: 'orders' }], 'armed: two committed publishes send exactly one NOTIFY, with the topic only');
  t.equal(await armed(), false, 'the ring disarmed the doorbell');

  notes.length = 0;
  await publish();
  await producer.query(`SELECT pgrelay.publish_batch('[{"topic":"x","type":"e","data":1}]')`);
  await quiet();
  t.same(notes, [], 'disarmed: no NOTIFY');

  await producer.query('UPDATE pgrelay.doorbell SET armed = true');
  await producer.query('BEGIN');
  await publish();
  await quiet(150);
  t.same(notes, [], 'no NOTIFY before the commit');
  await producer.query('ROLLBACK');
  await quiet();
  t.same(notes, [], 'a rolled-back publish sends nothing');
  t.equal(await armed(), true, 'a rolled-back publish leaves the doorbell armed');

  await producer.query('BEGIN');
  await publish('billing');
  await publish('orders');
  await producer.query(`SELECT pgrelay.publish_batch('[{"topic":"x","type":"e","data":1}]')`);
  await producer.query('COMMIT');
  await quiet();
  t.same(notes, [{ channel: 'pgrelay', payload: 'billing' }], 'the next committed transaction rings once (several publishes, one NOTIFY)');
  t.equal(await armed(), false, 'and disarms it');

  notes.length = 0;
  await producer.query('SELECT pgrelay.doorbell_arm()');
  await producer.query(`SELECT pgrelay.publish_batch('[{"topic":"batch.topic","type":"e","data":1},{"topic":"y","type":"e","data":2}]')`);
  await quiet();
  t.same(notes, [{ channel: 'pgrelay', payload: 'batch.topic' }], 'doorbell_arm() then publish_batch: one NOTIFY');
});
