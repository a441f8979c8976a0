// Fair share of a subscription's partitions between consumers (DESIGN "Scaling out"): a consumer
// takes a new lease only while it holds fewer than ceil(partitions / live consumers); one over its
// share (a newcomer arrived) gets nothing more, so the partitions its batches release go to the
// others; a consumer not seen for lease_seconds stops counting. Driven through fetch_batch,
// complete_batch and extend_lease on real connections, one message per batch so no partition
// runs dry.
import t from 'tap';
import type pg from 'pg';
import { freshDatabase } from './helpers/db.ts';
import { completeBatch, connect, fetchBatch, publish, subscribe, waitFor, type Batch } from './helpers/subscriptions.ts';

/** Publishes enough keyed messages that each of four partitions has plenty of work. */
async function backlog(client: pg.Client, topic: string): Promise<void> {
  await client.query('BEGIN');
  for (let i = 0; i < 80; i += 1) await publish(client, topic, `k${i}`);
  await client.query('COMMIT');
  const { rows } = await client.query<{ n: number }>(
    `SELECT count(DISTINCT pgrelay._partition_of(key, id, 4))::int AS n FROM pgrelay.messages WHERE topic = $1`,
    [topic],
  );
  if (rows[0]!.n !== 4) throw new Error('the backlog does not reach every partition');
}

/** Live leases per consumer: { consumer: [partition, ...] }. */
async function leases(client: pg.Client, subscription: string): Promise<Record<string, number[]>> {
  const { rows } = await client.query<{ owner: string; parts: number[] }>(
    `SELECT lease_owner AS owner, array_agg(partition_index ORDER BY partition_index) AS parts
       FROM pgrelay.subscription_partitions
      WHERE subscription = $1 AND lease_owner IS NOT NULL AND lease_expires_at > clock_timestamp()
      GROUP BY lease_owner ORDER BY lease_owner`,
    [subscription],
  );
  return Object.fromEntries(rows.map((row) => [row.owner, row.parts]));
}

const fetchOne = (client: pg.Client, subscription: string, consumer: string, partition: number | null = null) =>
  fetchBatch(client, subscription, consumer, 1, partition);

const ack = (client: pg.Client, subscription: string, batch: Batch) =>
  completeBatch(client, subscription, batch, batch.deliveries.map((d) => d.position));

t.test('two consumers, four partitions: two each, and no more while the other is alive', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await subscribe(c, 'fair', ['orders'], { start: 'earliest', partitions: 4, lease_seconds: 60 });
  await backlog(c, 'orders');

  t.ok(await fetchOne(c, 'fair', 'A'), 'A leases a partition');
  t.ok(await fetchOne(c, 'fair', 'B'), 'B leases a partition');
  t.ok(await fetchOne(c, 'fair', 'A'), 'A leases a second one');
  t.equal(await fetchOne(c, 'fair', 'A'), null, 'A at its share (2 of 4) gets nothing although a partition is free');
  t.equal(Object.values(await leases(c, 'fair')).flat().length, 3, 'one partition is still free');
  t.ok(await fetchOne(c, 'fair', 'B'), 'B takes the free one');
  t.equal(await fetchOne(c, 'fair', 'B'), null, 'B at its share gets nothing more');
  const held = await leases(c, 'fair');
  t.same(Object.keys(held), ['A', 'B']);
  t.equal(held.A!.length, 2, 'A holds two');
  t.equal(held.B!.length, 2, 'B holds two');
  t.same([...held.A!, ...held.B!].sort(), [0, 1, 2, 3], 'different partitions');

  // An explicit partition_index is an assignment, not held to the share.
  const [mine] = held.A!;
  t.equal(await fetchOne(c, 'fair', 'A'), null, 'A still gets nothing without a partition_index');
  const { rows } = await c.query<{ lease_token: string }>(
    `SELECT lease_token FROM pgrelay.subscription_partitions WHERE subscription = 'fair' AND partition_index = $1`,
    [mine],
  );
  await c.query(`SELECT pgrelay.release_batch('fair', $1, $2)`, [mine, rows[0]!.lease_token]);
  t.ok(await fetchOne(c, 'fair', 'B', mine!), 'B leases a named free partition over its share');
  t.equal((await leases(c, 'fair')).B!.length, 3, 'B holds three');
});

t.test('a newcomer gets its share as the batches of the others complete', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await subscribe(c, 'fair', ['orders'], { start: 'earliest', partitions: 4, lease_seconds: 60 });
  await backlog(c, 'orders');

  const a: Batch[] = [];
  for (let i = 0; i < 4; i += 1) a.push((await fetchOne(c, 'fair', 'A'))!);
  t.same(a.map((b) => b.partition).sort(), [0, 1, 2, 3], 'alone, A leases every partition');
  t.equal(await fetchOne(c, 'fair', 'B'), null, 'B arrives: nothing is free');

  // A is over its share now (4 of ceil(4 / 2) = 2): a completed batch hands the partition over.
  await ack(c, 'fair', a.shift()!);
  t.equal(await fetchOne(c, 'fair', 'A'), null, 'A, over its share, does not take the partition it just released');
  const b1 = (await fetchOne(c, 'fair', 'B'))!;
  t.ok(b1, 'B takes it');
  await ack(c, 'fair', a.shift()!);
  t.equal(await fetchOne(c, 'fair', 'A'), null, 'A, at its share, takes nothing');
  const b2 = (await fetchOne(c, 'fair', 'B'))!;
  t.ok(b2, 'B takes the second one');
  let held = await leases(c, 'fair');
  t.same([held.A?.length, held.B?.length], [2, 2], 'two each');

  // A third consumer: ceil(4 / 3) = 2, so it gets the next partition that a batch frees, and
  // nobody goes over two.
  t.equal(await fetchOne(c, 'fair', 'C'), null, 'C arrives: nothing is free');
  await ack(c, 'fair', a.shift()!);
  const c1 = (await fetchOne(c, 'fair', 'C'))!;
  t.ok(c1, 'C takes the partition A released');
  await ack(c, 'fair', b1);
  t.ok(await fetchOne(c, 'fair', 'C'), 'C takes the one B released: it holds two');
  t.equal(await fetchOne(c, 'fair', 'B'), null, 'nothing is free for B');
  await ack(c, 'fair', b2);
  t.equal(await fetchOne(c, 'fair', 'C'), null, 'C at its share does not take a third');
  t.ok(await fetchOne(c, 'fair', 'B'), 'B takes it again');
  held = await leases(c, 'fair');
  t.same([held.A?.length, held.B?.length, held.C?.length], [1, 1, 2], 'every partition held, nobody over ceil(4 / 3)');
});

t.test('a consumer that vanished stops counting after lease_seconds; heartbeats keep one counted', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await subscribe(c, 'fair', ['orders'], { start: 'earliest', partitions: 4, lease_seconds: 1 });
  await backlog(c, 'orders');

  const a = [(await fetchOne(c, 'fair', 'A'))!];
  t.ok(await fetchOne(c, 'fair', 'B'), 'B leases a partition, then vanishes');
  a.push((await fetchOne(c, 'fair', 'A'))!);
  // A holds its leases far longer than lease_seconds: only its liveness is in question below.
  const beat = () => Promise.all(a.map((b) => c.query(`SELECT pgrelay.extend_lease('fair', $1, $2, 3600)`, [b.partition, b.token])));
  await beat();
  t.equal(await fetchOne(c, 'fair', 'A'), null, 'while B counts, A stays at two although a partition is free');

  // Only heartbeats from A from here on: they keep it alive while B's mark grows old.
  await waitFor('B to be unseen for lease_seconds', async () => {
    await beat();
    const { rows } = await c.query<{ gone: boolean }>(
      `SELECT seen_at <= clock_timestamp() - interval '1 second'
              AND NOT EXISTS (SELECT 1 FROM pgrelay.subscription_partitions
                               WHERE subscription = 'fair' AND lease_owner = 'B' AND lease_expires_at >= clock_timestamp()) AS gone
         FROM pgrelay.subscription_consumers WHERE subscription = 'fair' AND consumer = 'B'`,
    );
    return rows[0]?.gone === true ? true : undefined;
  });
  await beat();
  const { rows } = await c.query<{ fresh: boolean }>(
    `SELECT seen_at > clock_timestamp() - interval '1 second' AS fresh FROM pgrelay.subscription_consumers
      WHERE subscription = 'fair' AND consumer = 'A'`,
  );
  t.equal(rows[0]?.fresh, true, "A's heartbeats kept it counted");

  a.push((await fetchOne(c, 'fair', 'A'))!);
  t.ok(a[2], 'B no longer counts: A takes the free partition');
  a.push((await fetchOne(c, 'fair', 'A'))!);
  t.ok(a[3], "and B's expired one");
  await beat();
  t.same(await leases(c, 'fair'), { A: [0, 1, 2, 3] }, 'A, alone now, holds all four');

  t.equal(await fetchOne(c, 'fair', 'B'), null, 'B comes back: nothing is free');
  const [first] = a;
  await ack(c, 'fair', first!);
  const { rows: after } = await c.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pgrelay.subscription_consumers WHERE subscription = 'fair' AND seen_at > clock_timestamp() - interval '1 second'`,
  );
  t.equal(after[0]!.n, 2, 'B counts again');
  t.equal(await fetchOne(c, 'fair', 'A'), null, 'A, over its share again, does not retake what it released');
  t.ok(await fetchOne(c, 'fair', 'B'), 'B takes it');
});

t.test('unsubscribe removes the consumer marks; migrate down is covered by test/migrate.test.ts', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await subscribe(c, 'gone', ['orders'], { start: 'earliest' });
  await fetchOne(c, 'gone', 'A');
  const before = await c.query(`SELECT consumer FROM pgrelay.subscription_consumers WHERE subscription = 'gone'`);
  t.same(before.rows, [{ consumer: 'A' }], 'a fetch marks the consumer');
  await c.query(`SELECT pgrelay.unsubscribe('gone')`);
  const after = await c.query(`SELECT consumer FROM pgrelay.subscription_consumers WHERE subscription = 'gone'`);
  t.same(after.rows, [], 'unsubscribe takes them along');
});
