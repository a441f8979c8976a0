// Subscriptions under concurrency: lease expiry and takeover with the fencing token (the stale
// holder gets PR005), consumers and producers racing over partitions without double delivery and
// with per-key order, a consumer killed mid-batch, two sessions subscribing one name, a reset
// committed while a batch completes, and DESIGN invariant 3 through fetch_batch (an older xid
// publishes a key after a younger one while the horizon lies between them).
import t from 'tap';
import { LeaseLostError, mapError } from '../client/index.ts';
import { freshDatabase } from './helpers/db.ts';
import {
  byPosition,
  completeBatch,
  connect,
  count,
  drain,
  failure,
  fetchBatch,
  positionsOf,
  publish,
  subscribe,
  waitFor,
} from './helpers/subscriptions.ts';

t.test('an expired lease is taken over; the stale holder gets PR005 and cannot acknowledge', async (t) => {
  const db = await freshDatabase(t);
  const a = await connect(t, db.connectionString, 'consumer-a');
  const b = await connect(t, db.connectionString, 'consumer-b');
  await subscribe(a, 'lease', ['orders'], { start: 'earliest', lease_seconds: 1 });
  const positions = [await publish(a, 'orders', 'x'), await publish(a, 'orders', 'y')];
  const held = (await fetchBatch(a, 'lease', 'A'))!;
  // Hold it long enough that the check cannot race the expiry on a slow machine, then shorten it.
  await a.query(`SELECT pgrelay.extend_lease('lease', 0, $1, 3600)`, [held.token]);
  t.equal(await fetchBatch(b, 'lease', 'B'), null, 'B gets nothing while A holds the lease');
  await a.query(`SELECT pgrelay.extend_lease('lease', 0, $1, 1)`, [held.token]);
  const taken = await waitFor('the lease to expire and B to take it over', () => fetchBatch(b, 'lease', 'B').then((x) => x ?? undefined));
  t.same(positionsOf(taken.deliveries), positions, 'B gets the same batch again (at least once)');
  t.ok(BigInt(taken.token) > BigInt(held.token), 'with a higher fencing token');
  for (const [label, run] of [
    ['complete_batch', () => completeBatch(a, 'lease', held, positions)],
    ['extend_lease', () => a.query(`SELECT pgrelay.extend_lease('lease', 0, $1)`, [held.token])],
    ['release_batch', () => a.query(`SELECT pgrelay.release_batch('lease', 0, $1)`, [held.token])],
  ] as const) {
    const error = await failure(run);
    t.equal(error?.code, 'PR005', `A's ${label} with the stale token is PR005`);
    t.equal(error?.column, 'lease_token', 'naming lease_token');
  }
  const owner = (await a.query(`SELECT lease_owner, cursor_position FROM pgrelay.subscription_partitions WHERE subscription = 'lease'`)).rows[0];
  t.same([owner.lease_owner, owner.cursor_position], ['B', '0'], 'A changed nothing: B still holds it, the cursor has not moved');
  await completeBatch(b, 'lease', taken, positions);
  t.equal((await a.query(`SELECT cursor_position FROM pgrelay.subscription_partitions WHERE subscription = 'lease'`)).rows[0].cursor_position, positions[1], 'B completes');

  // The client maps PR005 to LeaseLostError carrying the argument.
  const mapped = mapError(await failure(() => completeBatch(a, 'lease', held, positions)));
  t.ok(mapped instanceof LeaseLostError, 'the client maps PR005 to LeaseLostError');
  t.equal((mapped as LeaseLostError).argument, 'lease_token', 'with .argument lease_token');
});

t.test('several consumers and concurrent producers share partitions without double delivery, per key in order', async (t) => {
  const db = await freshDatabase(t);
  const admin = await connect(t, db.connectionString, 'admin');
  await subscribe(admin, 'shared', ['orders'], { start: 'earliest', partitions: 4, batch_size: 7 });
  const producers = await Promise.all([0, 1, 2].map((i) => connect(t, db.connectionString, `producer-${i}`)));
  const consumers = await Promise.all([0, 1, 2, 3].map((i) => connect(t, db.connectionString, `consumer-${i}`)));
  const perProducer = 60;
  const keysPerProducer = 5;
  const total = producers.length * perProducer;
  const published = new Map<string, string[]>();
  let producing = true;
  const produce = Promise.all(
    producers.map(async (p, i) => {
      for (let n = 0; n < perProducer; n += 1) {
        const key = `p${i}-k${n % keysPerProducer}`;
        // A few messages per transaction, so commits interleave with the consumers' reads.
        await p.query('BEGIN');
        const position = await publish(p, 'orders', key, { n });
        await p.query('COMMIT');
        published.set(key, [...(published.get(key) ?? []), position]);
      }
    }),
  ).finally(() => {
    producing = false;
  });
  const delivered = new Map<string, number>();
  const orderOfKey = new Map<string, string[]>();
  let sequence = 0;
  const consume = Promise.all(
    consumers.map(async (c, i) => {
      let idle = 0;
      while (producing || idle < 3) {
        const batch = await fetchBatch(c, 'shared', `consumer-${i}`, null, null, { settle: producing ? false : true });
        if (batch === null) {
          idle += producing ? 0 : 1;
          await new Promise((r) => setTimeout(r, 5));
          continue;
        }
        idle = 0;
        sequence += 1;
        for (const d of batch.deliveries) {
          delivered.set(d.position, (delivered.get(d.position) ?? 0) + 1);
          orderOfKey.set(d.key!, [...(orderOfKey.get(d.key!) ?? []), d.position]);
        }
        await completeBatch(c, 'shared', batch, positionsOf(batch.deliveries));
      }
    }),
  );
  await produce;
  await consume;
  t.equal(sequence > 4, true, 'many batches ran');
  t.equal(delivered.size, total, 'every message delivered');
  t.same([...delivered.entries()].filter(([, n]) => n !== 1), [], 'none delivered twice');
  for (const [key, positions] of published) {
    t.same(orderOfKey.get(key), positions, `key ${key}: delivered in publish order`);
  }
  t.equal(await count(admin, `SELECT sum(pending) AS n FROM pgrelay.subscription_lag('shared')`), 0, 'nothing pending');
  t.equal(await count(admin, `SELECT sum(delivered) AS n FROM pgrelay.subscription_lag('shared')`), total, 'lag counts the deliveries');
});

t.test('a consumer killed mid-batch (pg_terminate_backend) loses nothing: its lease expires and is taken over', async (t) => {
  const db = await freshDatabase(t);
  const admin = await connect(t, db.connectionString, 'admin');
  const victim = await connect(t, db.connectionString, 'victim');
  const survivor = await connect(t, db.connectionString, 'survivor');
  await subscribe(admin, 'crash', ['orders'], { start: 'earliest', lease_seconds: 1, batch_size: 3 });
  const positions: string[] = [];
  for (let i = 0; i < 5; i += 1) positions.push(await publish(admin, 'orders', `k${i}`));
  const held = (await fetchBatch(victim, 'crash', 'victim'))!;
  t.equal(held.deliveries.length, 3, 'the victim holds a batch');
  const pid = (await victim.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  await admin.query('SELECT pg_terminate_backend($1)', [pid]);
  t.ok(await failure(() => victim.query('SELECT 1')), 'the victim connection is gone');
  const delivered: string[] = [];
  await waitFor('the survivor to take the batch over and drain', async () => {
    const batch = await fetchBatch(survivor, 'crash', 'survivor');
    if (batch !== null) {
      delivered.push(...positionsOf(batch.deliveries));
      await completeBatch(survivor, 'crash', batch, positionsOf(batch.deliveries));
    }
    return delivered.length >= positions.length ? true : undefined;
  });
  t.same([...new Set(delivered)].sort(byPosition), positions, 'every message delivered by the survivor');
  t.same(delivered, [...delivered].sort(byPosition), 'in order');
});

t.test('two sessions subscribing one new name at once: one creates, the other updates', async (t) => {
  const db = await freshDatabase(t);
  const a = await connect(t, db.connectionString, 'session-a');
  const b = await connect(t, db.connectionString, 'session-b');
  await a.query('BEGIN');
  await subscribe(a, 'race', ['orders'], { partitions: 3, max_attempts: 5 });
  const second = subscribe(b, 'race', ['orders', 'payments'], { max_attempts: 7 });
  await waitFor('session b to wait for a', async () => {
    const { rows } = await a.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'session-b' AND wait_event_type = 'Lock'`);
    return rows[0].n > 0 ? true : undefined;
  });
  await a.query('COMMIT');
  await second;
  const [row] = (await a.query(`SELECT topics, partitions, max_attempts FROM pgrelay.subscriptions WHERE name = 'race'`)).rows;
  t.same(row, { topics: ['orders', 'payments'], partitions: 3, max_attempts: 7 }, 'the second call updated the row the first created');
  t.equal(await count(a, `SELECT count(*) AS n FROM pgrelay.subscription_partitions WHERE subscription = 'race'`), 3, 'partitions created once');
});

t.test('a reset committed while a consumer completes: the consumer waits, then gets PR005', async (t) => {
  const db = await freshDatabase(t);
  const a = await connect(t, db.connectionString, 'resetter');
  const b = await connect(t, db.connectionString, 'completer');
  await subscribe(a, 'rc', ['orders'], { start: 'earliest' });
  const positions = [await publish(a, 'orders', 'x'), await publish(a, 'orders', 'y')];
  const batch = (await fetchBatch(b, 'rc', 'b'))!;
  await a.query('BEGIN');
  await a.query(`SELECT pgrelay.subscription_reset('rc')`);
  const completing = failure(() => completeBatch(b, 'rc', batch, positions));
  await waitFor('the completer to wait for the reset', async () => {
    const { rows } = await a.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'completer' AND wait_event_type = 'Lock'`);
    return rows[0].n > 0 ? true : undefined;
  });
  await a.query('COMMIT');
  t.equal((await completing)?.code, 'PR005', 'the complete lost its lease to the reset');
  // The error reaches the client before the backend has aborted and dropped its row lock; a
  // fetch in that moment skips the locked partition (SKIP LOCKED). Wait for b to be idle.
  await b.query('SELECT 1');
  const replayed = positionsOf(await drain(a, 'rc'));
  t.same(replayed, positions, 'and everything is delivered again from the beginning');
});

t.test('per-key order through fetch_batch when an older xid publishes a key after a younger one, with the horizon between them', async (t) => {
  const db = await freshDatabase(t);
  const main = await connect(t, db.connectionString, 'main');
  const older = await connect(t, db.connectionString, 'tx-a-older');
  const horizon = await connect(t, db.connectionString, 'tx-c-horizon');
  const younger = await connect(t, db.connectionString, 'tx-b-younger');
  await subscribe(main, 'order', ['orders'], { start: 'earliest', partitions: 2, max_attempts: 5, backoff: { initial_ms: 3_600_000, max_ms: 3_600_000 } });
  // xid order: A < C < B. B publishes K first and commits; A publishes K after (serialised by
  // the key lock) and commits; C stays open, so the horizon lies between A and B.
  await older.query('BEGIN');
  await older.query('SELECT pg_current_xact_id()');
  await horizon.query('BEGIN');
  await horizon.query('SELECT pg_current_xact_id()');
  await younger.query('BEGIN');
  await younger.query(`SELECT pgrelay.publish('orders', 'K', 'test.event', '{"n":1}', '{}', lock_key => true)`);
  await younger.query('COMMIT');
  await older.query(`SELECT pgrelay.publish('orders', 'K', 'test.event', '{"n":2}', '{}', lock_key => true)`);
  await older.query('COMMIT');
  const [k1, k2] = (await main.query<{ position: string }>(`SELECT position FROM pgrelay.messages ORDER BY position`)).rows.map((r) => r.position);

  const batch = await waitFor('a batch while C holds the horizon', () =>
    fetchBatch(main, 'order', 'w', null, null, { settle: false }).then((b) => b ?? undefined),
  );
  t.same(batch.deliveries.map((d) => [d.position, (d.data as { n: number }).n]), [[k1, 1], [k2, 2]], 'K1 (younger xid, above the horizon) is pulled forward and comes before K2');
  // K1 fails: K2 must wait behind it even though the walk already passed K2.
  await completeBatch(main, 'order', batch, [], [k1!], ['down']);
  t.same(
    (await main.query(`SELECT position, attempts FROM pgrelay.retries WHERE position = $1`, [k1])).rows,
    [{ position: k1, attempts: 1 }],
    'K1 waits for its retry',
  );
  t.equal(await fetchBatch(main, 'order', 'w', null, null, { settle: false }), null, 'K2 is not delivered ahead of K1 (horizon still held)');
  t.same(
    (await main.query(`SELECT position, attempts, next_attempt_at IS NULL AS parked FROM pgrelay.retries ORDER BY position`)).rows,
    [{ position: k1, attempts: 1, parked: false }, { position: k2, attempts: 0, parked: true }],
    'K2 is parked behind K1',
  );
  await horizon.query('COMMIT');
  t.equal(await fetchBatch(main, 'order', 'w'), null, 'after the horizon passes, the walk does not deliver K1 or K2 again');
  await main.query(`UPDATE pgrelay.retries SET next_attempt_at = clock_timestamp() WHERE position = $1`, [k1]);
  const retry = (await fetchBatch(main, 'order', 'w'))!;
  t.same(retry.deliveries.map((d) => [d.position, d.attempt]), [[k1, 2]], 'K1 alone on its second attempt');
  await completeBatch(main, 'order', retry, [k1!]);
  const rest = (await fetchBatch(main, 'order', 'w'))!;
  t.same(positionsOf(rest.deliveries), [k2], 'then K2');
  await completeBatch(main, 'order', rest, [k2!]);
  t.equal(await fetchBatch(main, 'order', 'w'), null, 'nothing twice');
});
