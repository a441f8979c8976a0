// The subscription SQL API, adversarially: subscribe/unsubscribe, topic prefixes, partitions,
// start earliest/latest with transactions committing out of order, pause/resume, reset to a
// position and to a time (with a transaction open across it), the pull API (fetch/complete/
// extend/release), retry with backoff then dead letter with per-key order kept, dead-letter
// list/retry/discard, lag, and retention that only deletes what every matching reader has passed.
// Leases, takeovers, racing consumers and two-session interleavings: subscriptions-concurrency.
import t from 'tap';
import { NotFoundError } from '../client/index.ts';
import { freshDatabase } from './helpers/db.ts';
import {
  byPosition,
  completeBatch,
  connect,
  count,
  drain,
  failure,
  fetchBatch,
  newClient,
  positionsOf,
  publish,
  subscribe,
  waitFor,
  type Delivery,
} from './helpers/subscriptions.ts';

t.test('subscribe creates, updates in place keeping cursors, and unsubscribe removes everything', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await subscribe(c, 'billing', ['orders'], { partitions: 3, start: 'earliest', max_attempts: 4, batch_size: 7, lease_seconds: 12 });
  const [row] = (await c.query(`SELECT * FROM pgrelay.subscriptions WHERE name = 'billing'`)).rows;
  t.same(
    [row.topics, row.partitions, row.max_attempts, row.batch_size, Number(row.lease_seconds), row.paused],
    [['orders'], 3, 4, 7, 12, false],
    'the row holds the options',
  );
  t.same(row.backoff, { initial_ms: 1000, max_ms: 300000, multiplier: 2, jitter: 0.2 }, 'backoff defaults are filled in');
  t.equal(await count(c, `SELECT count(*) AS n FROM pgrelay.subscription_partitions WHERE subscription = 'billing'`), 3, 'one row per partition');

  await publish(c, 'orders', 'a');
  await publish(c, 'orders', 'b');
  t.equal((await drain(c, 'billing')).length, 2, 'both delivered');
  const cursorsBefore = (await c.query(`SELECT partition_index, cursor_xid::text, cursor_position FROM pgrelay.subscription_partitions WHERE subscription = 'billing' ORDER BY 1`)).rows;
  t.ok(cursorsBefore.some((r) => r.cursor_position !== '0'), 'a cursor moved');

  await c.query(`SELECT pgrelay.subscribe('billing', '{orders,payments.*}', '{"type":"webhook","url":"http://127.0.0.1:1/x"}', '{"max_attempts":2,"start":"earliest"}')`);
  const [updated] = (await c.query(`SELECT * FROM pgrelay.subscriptions WHERE name = 'billing'`)).rows;
  t.same([updated.topics, updated.sink.type, updated.max_attempts, updated.partitions, updated.batch_size], [['orders', 'payments.*'], 'webhook', 2, 3, 100], 'update replaces topics, sink and options; partitions stay');
  const cursorsAfter = (await c.query(`SELECT partition_index, cursor_xid::text, cursor_position FROM pgrelay.subscription_partitions WHERE subscription = 'billing' ORDER BY 1`)).rows;
  t.same(cursorsAfter, cursorsBefore, 'updating keeps every cursor (start applies on creation only)');
  t.equal(await drain(c, 'billing').then((d) => d.length), 0, 'nothing is delivered again after the update');

  const changed = await failure(() => subscribe(c, 'billing', ['orders'], { partitions: 4 }));
  t.equal(changed?.code, 'PR007', 'changing partitions of an existing subscription is PR007');
  t.equal((await c.query(`SELECT partitions FROM pgrelay.subscriptions WHERE name = 'billing'`)).rows[0].partitions, 3, 'and changes nothing');

  // Unsubscribe takes partitions, retries, dead letters and delivered_ahead along.
  await c.query(`SELECT pgrelay.subscribe('billing', '{orders}', $1::jsonb, '{"max_attempts":1}')`, ['{"type":"consumer"}']);
  await publish(c, 'orders', 'dead');
  const batch = await waitFor('a batch', () => fetchBatch(c, 'billing', 'w').then((b) => b ?? undefined));
  await completeBatch(c, 'billing', batch, [], positionsOf(batch.deliveries), batch.deliveries.map(() => 'nope'));
  t.ok((await count(c, `SELECT count(*) AS n FROM pgrelay.dead_letters WHERE subscription = 'billing'`)) > 0, 'a dead letter exists');
  await c.query(`SELECT pgrelay.unsubscribe('billing')`);
  for (const table of ['subscriptions', 'subscription_partitions', 'retries', 'dead_letters', 'delivered_ahead']) {
    const column = table === 'subscriptions' ? 'name' : 'subscription';
    t.equal(await count(c, `SELECT count(*) AS n FROM pgrelay.${table} WHERE ${column} = 'billing'`), 0, `unsubscribe leaves nothing in ${table}`);
  }
  t.equal((await failure(() => c.query(`SELECT pgrelay.unsubscribe('billing')`)))?.code, 'PR003', 'unsubscribing twice is PR003');
});

t.test('topic patterns: exact names and prefixes ending in *', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await subscribe(c, 'mixed', ['orders.*', 'payments'], { start: 'earliest' });
  await subscribe(c, 'everything', ['*'], { start: 'earliest' });
  const topics = ['orders.created', 'orders.', 'orders', 'ordersX', 'orders.eu.paid', 'payments', 'payments.refund', 'other'];
  const position: Record<string, string> = {};
  for (const topic of topics) position[topic] = await publish(c, topic, 'k');
  const mixed = (await drain(c, 'mixed')).map((d) => d.topic).sort();
  t.same(mixed, ['orders.', 'orders.created', 'orders.eu.paid', 'payments'].sort(), 'a prefix matches what starts with it; an exact topic only itself');
  t.same((await drain(c, 'everything')).map((d) => d.topic).sort(), [...topics].sort(), '"*" matches every topic');
});

t.test('partitions: a key always lands in one partition, each partition in order, nothing twice', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await subscribe(c, 'parts', ['orders'], { partitions: 4, start: 'earliest', batch_size: 5 });
  const keys = Array.from({ length: 12 }, (_, i) => `key-${i}`);
  const published: Array<{ key: string; position: string }> = [];
  for (let round = 0; round < 5; round += 1) {
    for (const key of keys) published.push({ key, position: await publish(c, 'orders', key, { round }) });
  }
  const seen = new Map<string, number>();
  const keyPartition = new Map<string, number>();
  for (let partition = 0; partition < 4; partition += 1) {
    const lastOfKey = new Map<string, string>();
    for (;;) {
      const batch = await fetchBatch(c, 'parts', 'w', null, partition);
      if (batch === null) break;
      t.equal(batch.partition, partition, 'fetch with partition_index leases that partition');
      for (const d of batch.deliveries) {
        seen.set(d.position, (seen.get(d.position) ?? 0) + 1);
        const before = keyPartition.get(d.key!);
        if (before !== undefined && before !== partition) t.fail(`key ${d.key} in partitions ${before} and ${partition}`);
        keyPartition.set(d.key!, partition);
        const last = lastOfKey.get(d.key!);
        if (last !== undefined && byPosition(last, d.position) >= 0) t.fail(`key ${d.key}: ${d.position} after ${last}`);
        lastOfKey.set(d.key!, d.position);
      }
      await completeBatch(c, 'parts', batch, positionsOf(batch.deliveries));
    }
  }
  t.equal(seen.size, published.length, 'every message delivered');
  t.ok([...seen.values()].every((n) => n === 1), 'none twice');
  const expected = await c.query<{ key: string; p: number }>(`SELECT k AS key, pgrelay._partition_of(k, NULL, 4) AS p FROM unnest($1::text[]) AS k`, [keys]);
  t.same(Object.fromEntries(expected.rows.map((r) => [r.key, r.p])), Object.fromEntries(keyPartition), 'the partition is the hash of the key');
  t.ok(new Set(keyPartition.values()).size > 1, 'the keys spread over several partitions');
});

t.test('start latest skips what committed before, even above the horizon; earliest delivers everything', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString, 'main');
  const open = await connect(t, db.connectionString, 'open-transaction');
  const before = await publish(c, 'orders', 'a', { n: 'before' });
  // A transaction with an older xid stays open, holding the horizon back ...
  await open.query('BEGIN');
  const inFlight = await publish(open, 'orders', 'b', { n: 'in flight' });
  // ... while a younger one commits: it is above the horizon but already history.
  const committedAbove = await publish(c, 'orders', 'c', { n: 'committed above the horizon' });
  await subscribe(c, 'late', ['orders'], { start: 'latest', partitions: 2 });
  await subscribe(c, 'early', ['orders'], { start: 'earliest' });
  const lagNow = await c.query(`SELECT sum(pending)::int AS pending, max(lag_seconds) AS lag FROM pgrelay.subscription_lag('late')`);
  t.equal(lagNow.rows[0].pending, 0, 'latest: nothing pending right after subscribing');
  t.equal(lagNow.rows[0].lag, 0, 'latest: no lag from skipped messages');
  await open.query('COMMIT');
  const after = await publish(c, 'orders', 'd', { n: 'after' });
  const late = positionsOf(await drain(c, 'late')).sort(byPosition);
  t.same(late, [inFlight, after].sort(byPosition), 'latest: the open transaction and later messages, not what had committed');
  t.notOk(late.includes(committedAbove), 'latest: a message committed above the horizon is not delivered');
  const early = positionsOf(await drain(c, 'early')).sort(byPosition);
  t.same(early, [before, inFlight, committedAbove, after].sort(byPosition), 'earliest: everything');
});

t.test('pause and resume', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await subscribe(c, 'p', ['orders'], { start: 'earliest' });
  const pos = await publish(c, 'orders', 'k');
  await c.query(`SELECT pgrelay.subscription_pause('p')`);
  t.equal(await fetchBatch(c, 'p', 'w'), null, 'a paused subscription fetches nothing');
  const lag = (await c.query(`SELECT * FROM pgrelay.subscription_lag('p')`)).rows[0];
  t.same([lag.paused, Number(lag.pending)], [true, 1], 'lag says paused, with the message pending');
  await c.query(`SELECT pgrelay.subscription_resume('p')`);
  t.same(positionsOf(await drain(c, 'p')), [pos], 'after resume it is delivered');
});

t.test('reset to a position replays exactly from it, skipping earlier messages of younger transactions', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString, 'main');
  const older = await connect(t, db.connectionString, 'older-xid');
  await subscribe(c, 'r', ['orders'], { start: 'earliest', partitions: 2 });
  const first = [await publish(c, 'orders', 'a'), await publish(c, 'orders', 'b')];
  // older takes its xid first but its position last: xid order and position order disagree.
  await older.query('BEGIN');
  await older.query('SELECT pg_current_xact_id()');
  const youngerXidLowerPosition = await publish(c, 'orders', 'c');
  const olderXidHigherPosition = await publish(older, 'orders', 'd');
  await older.query('COMMIT');
  const last = await publish(c, 'orders', 'e');
  const all = positionsOf(await drain(c, 'r'));
  t.equal(all.length, 5, 'all five delivered once');

  await c.query(`SELECT pgrelay.subscription_reset('r', from_position => $1)`, [olderXidHigherPosition]);
  const replay = positionsOf(await drain(c, 'r')).sort(byPosition);
  t.same(replay, [olderXidHigherPosition, last], 'exactly the messages at or after the position come again');
  t.notOk(replay.includes(youngerXidLowerPosition), 'a message before the point with a younger xid is not replayed');

  await c.query(`SELECT pgrelay.subscription_reset('r', from_position => $1)`, [first[1]]);
  t.same(positionsOf(await drain(c, 'r')).sort(byPosition), [first[1], youngerXidLowerPosition, olderXidHigherPosition, last].sort(byPosition), 'an earlier point');

  await c.query(`SELECT pgrelay.subscription_reset('r')`);
  t.equal((await drain(c, 'r')).length, 5, 'no point: from the beginning');

  const next = String(BigInt(last) + 1n);
  await c.query(`SELECT pgrelay.subscription_reset('r', from_position => $1)`, [next]);
  t.same(await drain(c, 'r'), [], 'reset to the next position: nothing old comes');
  const fresh = await publish(c, 'orders', 'f');
  t.same(positionsOf(await drain(c, 'r')), [fresh], 'and what is published next does');

  // A transaction open across the reset holds a message before the point: it was never
  // delivered, so it must come when it commits (the cursor may not pass its older xid).
  const open = await connect(t, db.connectionString, 'open-across-reset');
  await open.query('BEGIN');
  const openPosition = await publish(open, 'orders', 'g');
  const afterPoint = [await publish(c, 'orders', 'h'), await publish(c, 'orders', 'i')];
  await c.query(`SELECT pgrelay.subscription_reset('r', from_position => $1)`, [afterPoint[0]]);
  await open.query('COMMIT');
  t.same(positionsOf(await drain(c, 'r')).sort(byPosition), [openPosition, ...afterPoint].sort(byPosition), 'the open transaction\'s earlier message comes too, once it commits');

  const past = await failure(() => c.query(`SELECT pgrelay.subscription_reset('r', from_position => $1)`, [String(BigInt(fresh) + 1000n)]));
  t.equal(past?.code, 'PR001', 'a position past the end of the log is PR001');
  t.equal(past?.column, 'from_position', 'naming from_position');
});

t.test('reset to a time replays what was created from then on; a reset drops the lease', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await subscribe(c, 'rt', ['orders'], { start: 'earliest' });
  for (let i = 0; i < 3; i += 1) await publish(c, 'orders', `old-${i}`);
  const boundary = await waitFor('the clock to move past the old messages', async () => {
    const { rows } = await c.query(`SELECT clock_timestamp() AS now, (SELECT max(created_at) FROM pgrelay.messages) AS newest`);
    return rows[0].now > rows[0].newest ? (rows[0].now as Date) : undefined;
  });
  await waitFor('the clock to move past the boundary', async () =>
    (await c.query(`SELECT clock_timestamp() > $1::timestamptz AS past`, [boundary])).rows[0].past ? true : undefined,
  );
  const recent = [await publish(c, 'orders', 'new-0'), await publish(c, 'orders', 'new-1')];
  t.equal((await drain(c, 'rt')).length, 5, 'everything delivered once');

  const leased = await fetchBatch(c, 'rt', 'w');
  t.equal(leased, null, 'nothing left');
  await publish(c, 'orders', 'z');
  const inFlight = await waitFor('a batch', () => fetchBatch(c, 'rt', 'holder').then((b) => b ?? undefined));
  await c.query(`SELECT pgrelay.subscription_reset('rt', from_time => $1)`, [boundary]);
  const stale = await failure(() => completeBatch(c, 'rt', inFlight, positionsOf(inFlight.deliveries)));
  t.equal(stale?.code, 'PR005', 'a batch leased before the reset cannot be completed after it');
  const replay = positionsOf(await drain(c, 'rt')).sort(byPosition);
  t.same(replay, [...recent, inFlight.deliveries[0]!.position].sort(byPosition), 'exactly the messages created at or after the time');
});

t.test('fetch, complete, extend_lease and release_batch', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await subscribe(c, 'pull', ['orders'], { start: 'earliest', batch_size: 3 });
  const positions: string[] = [];
  for (let i = 0; i < 7; i += 1) positions.push(await publish(c, 'orders', `k${i % 3}`, { i }));

  const b1 = (await fetchBatch(c, 'pull', 'w1'))!;
  t.same(positionsOf(b1.deliveries), positions.slice(0, 3), 'batch_size bounds the batch, in position order');
  t.ok(b1.deliveries.every((d) => d.attempt === 1 && d.lease_token === b1.token), 'first attempt, one token for the batch');
  t.equal(await fetchBatch(c, 'pull', 'w2'), null, 'the only partition is leased: another consumer gets nothing');

  const lease = (await c.query(`SELECT lease_expires_at FROM pgrelay.subscription_partitions WHERE subscription = 'pull'`)).rows[0].lease_expires_at as Date;
  const extended = (await c.query(`SELECT pgrelay.extend_lease('pull', 0, $1, 600) AS e`, [b1.token])).rows[0].e as Date;
  t.ok(extended.getTime() > lease.getTime(), 'extend_lease moves the expiry later and returns it');
  t.equal(
    ((await c.query(`SELECT lease_expires_at FROM pgrelay.subscription_partitions WHERE subscription = 'pull'`)).rows[0].lease_expires_at as Date).getTime(),
    extended.getTime(),
    'as stored',
  );

  await c.query(`SELECT pgrelay.release_batch('pull', 0, $1)`, [b1.token]);
  const again = (await fetchBatch(c, 'pull', 'w2', 2))!;
  t.same(positionsOf(again.deliveries), positions.slice(0, 2), 'a released batch comes again (max_messages bounds it)');
  t.ok(BigInt(again.token) > BigInt(b1.token), 'with a new token');
  t.equal((await failure(() => c.query(`SELECT pgrelay.release_batch('pull', 0, $1)`, [b1.token])))?.code, 'PR005', 'the released token no longer holds');

  await completeBatch(c, 'pull', again, positionsOf(again.deliveries));
  t.equal((await failure(() => completeBatch(c, 'pull', again, positionsOf(again.deliveries))))?.code, 'PR005', 'completing twice is PR005');
  const b3 = (await fetchBatch(c, 'pull', 'w1'))!;
  t.same(positionsOf(b3.deliveries), positions.slice(2, 5), 'the cursor moved over the completed batch');
  // Acknowledge only a prefix: the rest comes again.
  await completeBatch(c, 'pull', b3, [positions[2]!]);
  const b4 = (await fetchBatch(c, 'pull', 'w1'))!;
  t.same(positionsOf(b4.deliveries), positions.slice(3, 6), 'positions neither acked nor failed come again');
  await completeBatch(c, 'pull', b4, positionsOf(b4.deliveries));
  t.same(positionsOf(await drain(c, 'pull')), [positions[6]], 'and the rest follows');
});

t.test('a failing message is retried with backoff, then dead-lettered; its key waits behind it, others flow', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  // Long backoffs, so nothing falls due by itself while the test runs on a slow machine; the
  // test makes a retry due by moving its next_attempt_at (and checks one real expiry at the end).
  await subscribe(c, 'retry', ['orders'], {
    start: 'earliest',
    max_attempts: 3,
    backoff: { initial_ms: 60_000, max_ms: 90_000, multiplier: 2, jitter: 0 },
  });
  const waitOf = async (position: string): Promise<number> =>
    Number((await c.query(`SELECT extract(epoch FROM next_attempt_at - clock_timestamp()) AS s FROM pgrelay.retries WHERE position = $1`, [position])).rows[0].s);
  const makeDue = (position: string) => c.query(`UPDATE pgrelay.retries SET next_attempt_at = clock_timestamp() WHERE position = $1`, [position]);
  const k1 = await publish(c, 'orders', 'K', { n: 1 });
  const k2 = await publish(c, 'orders', 'K', { n: 2 });
  const l1 = await publish(c, 'orders', 'L', { n: 1 });
  const first = (await fetchBatch(c, 'retry', 'w'))!;
  t.same(positionsOf(first.deliveries), [k1, k2, l1], 'one batch in position order');
  // K1 fails, K2 was not attempted (a handler stops a key at its first failure), L1 is acked.
  await completeBatch(c, 'retry', first, [l1], [k1], ['boom 1']);
  const retries = (await c.query(`SELECT position, attempts, last_error, next_attempt_at FROM pgrelay.retries ORDER BY position`)).rows;
  t.same(retries.map((r) => [r.position, r.attempts, r.last_error, r.next_attempt_at === null]), [[k1, 1, 'boom 1', false], [k2, 0, null, true]], 'K1 waits for its backoff, K2 is parked behind it');
  const firstWait = await waitOf(k1);
  t.ok(firstWait > 40 && firstWait <= 60, `the first backoff is initial_ms (60 s; ${firstWait.toFixed(1)} s left)`);
  t.equal((await c.query(`SELECT cursor_position FROM pgrelay.subscription_partitions WHERE subscription = 'retry'`)).rows[0].cursor_position, l1, 'the cursor moved on over the failure');

  const k3 = await publish(c, 'orders', 'K', { n: 3 });
  const m1 = await publish(c, 'orders', 'M', { n: 1 });
  const meanwhile = (await fetchBatch(c, 'retry', 'w'))!;
  t.same(positionsOf(meanwhile.deliveries), [m1], 'other keys flow; K1 is not due, and a new message of K is parked, not delivered');
  await completeBatch(c, 'retry', meanwhile, [m1]);
  t.equal(await count(c, `SELECT count(*) AS n FROM pgrelay.retries WHERE position = $1 AND next_attempt_at IS NULL`, [k3]), 1, 'K3 is parked');
  t.equal(await fetchBatch(c, 'retry', 'w'), null, 'nothing is delivered before K1 is due');

  await makeDue(k1);
  const second = (await fetchBatch(c, 'retry', 'w'))!;
  t.same(second.deliveries.map((d) => [d.position, d.attempt]), [[k1, 2]], 'once due, K1 alone on attempt 2');
  await completeBatch(c, 'retry', second, [], [k1], ['boom 2']);
  const secondWait = await waitOf(k1);
  t.ok(secondWait > 70 && secondWait <= 90, `the second backoff grew and was capped at max_ms (90 s; ${secondWait.toFixed(1)} s left)`);
  t.equal(await fetchBatch(c, 'retry', 'w'), null, 'K waits again');
  await makeDue(k1);
  const third = (await fetchBatch(c, 'retry', 'w'))!;
  t.same(third.deliveries.map((d) => [d.position, d.attempt]), [[k1, 3]], 'attempt 3');
  await completeBatch(c, 'retry', third, [], [k1], ['boom 3']);

  const dead = (await c.query(`SELECT position, attempts, last_error, (message).key AS key FROM pgrelay.dead_letters`)).rows;
  t.same(dead, [{ position: k1, attempts: 3, last_error: 'boom 3', key: 'K' }], 'after max_attempts K1 is a dead letter with its last error and attempts');
  const next = (await fetchBatch(c, 'retry', 'w'))!;
  t.same(next.deliveries.map((d) => [d.position, d.attempt]), [[k2, 1]], 'K moves on: K2 (the next of the chain) is due at once');
  await completeBatch(c, 'retry', next, [k2]);
  const last = (await fetchBatch(c, 'retry', 'w'))!;
  t.same(positionsOf(last.deliveries), [k3], 'then K3: per-key order kept through the failure');
  await completeBatch(c, 'retry', last, [k3]);
  t.equal(await fetchBatch(c, 'retry', 'w'), null, 'nothing left');
  const lag = (await c.query(`SELECT * FROM pgrelay.subscription_lag('retry')`)).rows[0];
  t.same([Number(lag.pending), Number(lag.retrying), Number(lag.dead), Number(lag.delivered)], [0, 0, 1, 4], 'lag: nothing pending or retrying, one dead, the other four delivered');

  // A short backoff expires by itself.
  await subscribe(c, 'quick', ['quick'], { start: 'earliest', backoff: { initial_ms: 200, max_ms: 200, jitter: 0 } });
  const q = await publish(c, 'quick', 'Q');
  const attempt1 = (await fetchBatch(c, 'quick', 'w'))!;
  await completeBatch(c, 'quick', attempt1, [], [q], ['flaky']);
  const dueAt = (await c.query(`SELECT next_attempt_at FROM pgrelay.retries WHERE position = $1`, [q])).rows[0].next_attempt_at as Date;
  const attempt2 = await waitFor('the short backoff to expire', () => fetchBatch(c, 'quick', 'w').then((b) => b ?? undefined));
  const fetchedAt = (await c.query(`SELECT clock_timestamp() AS now`)).rows[0].now as Date;
  t.same(attempt2.deliveries.map((d) => [d.position, d.attempt]), [[q, 2]], 'the retry comes by itself as attempt 2');
  t.ok(fetchedAt.getTime() >= dueAt.getTime(), 'not before it was due');
  await completeBatch(c, 'quick', attempt2, [q]);
});

t.test('dead letters: list, retry one and all (counting what was retried), discard', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  const client = await newClient(t, db.connectionString);
  await subscribe(c, 'dl', ['orders'], { start: 'earliest', max_attempts: 1, partitions: 2 });
  const positions: string[] = [];
  for (const key of ['a', 'b', 'c', 'd']) positions.push(await publish(c, 'orders', key, { key }));
  for (;;) {
    const batch = await fetchBatch(c, 'dl', 'w');
    if (batch === null) break;
    await completeBatch(c, 'dl', batch, [], positionsOf(batch.deliveries), batch.deliveries.map((d) => `failed ${d.key}`));
  }
  const listed = await client.subscriptions.deadLetters('dl');
  t.same(
    listed.map((d) => [d.position, d.key, d.attempts, d.last_error]),
    [
      [positions[0], 'a', 1, 'failed a'],
      [positions[1], 'b', 1, 'failed b'],
      [positions[2], 'c', 1, 'failed c'],
      [positions[3], 'd', 1, 'failed d'],
    ],
    'the client lists every dead letter with its attempts and last error',
  );

  t.equal(await client.subscriptions.retryDeadLetters('dl', positions[0]), 1, 'retrying one returns 1');
  const retried = (await c.query(`SELECT attempts, last_error, next_attempt_at IS NOT NULL AS due FROM pgrelay.retries WHERE position = $1`, [positions[0]])).rows[0];
  t.same(retried, { attempts: 0, last_error: 'failed a', due: true }, 'it waits as a retry, due now, with its last error kept');
  t.equal(await client.subscriptions.retryDeadLetters('dl'), 3, 'retrying all returns the three still dead, not the one retried before');
  t.equal((await client.subscriptions.deadLetters('dl')).length, 0, 'no dead letters left');
  t.equal(await client.subscriptions.retryDeadLetters('dl'), 0, 'retrying all with none returns 0');
  const redelivered: Delivery[] = [];
  for (;;) {
    const batch = await fetchBatch(c, 'dl', 'w');
    if (batch === null) break;
    redelivered.push(...batch.deliveries);
    // a fails again (back to dead letters with attempts 1), the others succeed
    const failed = batch.deliveries.filter((d) => d.key === 'a').map((d) => d.position);
    await completeBatch(c, 'dl', batch, positionsOf(batch.deliveries).filter((p) => !failed.includes(p)), failed, failed.map(() => 'again'));
  }
  t.same(positionsOf(redelivered).sort(byPosition), positions, 'every retried dead letter is delivered again');
  t.ok(redelivered.every((d) => d.attempt === 1), 'as a first attempt (fresh attempt count)');
  const again = await client.subscriptions.deadLetters('dl');
  t.same(again.map((d) => [d.position, d.last_error, d.attempts]), [[positions[0], 'again', 1]], 'a retried dead letter that fails again is dead again');

  // Three more dead letters, then discard one and all.
  for (const key of ['e', 'f']) await publish(c, 'orders', key);
  for (;;) {
    const batch = await fetchBatch(c, 'dl', 'w');
    if (batch === null) break;
    await completeBatch(c, 'dl', batch, [], positionsOf(batch.deliveries), batch.deliveries.map(() => 'x'));
  }
  t.equal(await client.subscriptions.discardDeadLetters('dl', positions[0]), 1, 'discarding one returns 1');
  t.equal((await failure(() => client.subscriptions.discardDeadLetters('dl', positions[0])) as { sqlState?: string })?.sqlState, 'PR003', 'discarding it again is PR003');
  t.equal((await failure(() => client.subscriptions.retryDeadLetters('dl', positions[0])) as { sqlState?: string })?.sqlState, 'PR003', 'retrying a discarded one is PR003');
  t.equal(await client.subscriptions.discardDeadLetters('dl'), 2, 'discarding all returns how many');
  t.equal(await count(c, `SELECT count(*) AS n FROM pgrelay.dead_letters`), 0, 'none left');
  t.equal(await fetchBatch(c, 'dl', 'w'), null, 'discarded messages are not delivered');
});

t.test('subscription_lag: pending, seconds behind, retrying, dead; typed in the client', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  const client = await newClient(t, db.connectionString);
  await subscribe(c, 'lag', ['orders'], { start: 'earliest', partitions: 2 });
  await subscribe(c, 'other', ['payments'], { start: 'earliest' });
  t.same((await client.subscriptions.lag('lag')).map((l) => [l.partition_index, l.pending, l.lag_seconds]), [[0, '0', 0], [1, '0', 0]], 'caught up: zero');
  for (let i = 0; i < 6; i += 1) await publish(c, 'orders', `k${i}`);
  await publish(c, 'payments', 'x');
  const lag = await client.subscriptions.lag('lag');
  t.equal(lag.reduce((sum, l) => sum + Number(l.pending), 0), 6, 'six pending over the partitions (other topics not counted)');
  t.ok(lag.filter((l) => l.pending !== '0').every((l) => l.lag_seconds > 0), 'a partition with pending messages is seconds behind');
  t.same((await client.subscriptions.lag()).map((l) => l.subscription_name), ['lag', 'lag', 'other'], 'no name: every subscription');
  await drain(c, 'lag');
  t.same((await client.subscriptions.lag('lag')).map((l) => [l.pending, l.lag_seconds, l.delivered]).sort(), lag.map((l) => ['0', 0, l.pending]).sort(), 'drained: zero, delivered counted');
  const unknown = await failure(() => client.subscriptions.lag('no-such'));
  t.ok(unknown instanceof NotFoundError, 'an unknown subscription is NotFoundError (PR003), not an empty answer');
});

t.test('retention deletes only what every matching reader passed, in batches', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  const client = await newClient(t, db.connectionString);
  await subscribe(c, 'stuck-a', ['a'], { start: 'earliest' });
  await subscribe(c, 'reader-b', ['b.*'], { start: 'earliest', partitions: 2 });
  await c.query(`CREATE FUNCTION public.apply_c(jsonb) RETURNS void LANGUAGE sql AS 'SELECT NULL'`);
  await c.query(`SELECT pgrelay.projection_define('proj-c', '{c}', 'public.apply_c(jsonb)')`);

  const a = [await publish(c, 'a', 'k1'), await publish(c, 'a', 'k2')];
  const b: Array<{ position: string; partition: number }> = [];
  for (let i = 0; i < 10; i += 1) {
    const key = `bk${i}`;
    b.push({ position: await publish(c, 'b.x', key), partition: (await c.query(`SELECT pgrelay._partition_of($1, NULL, 2) AS p`, [key])).rows[0].p });
  }
  const cMessages = [await publish(c, 'c', 'x'), await publish(c, 'c', 'y')];
  const unread = [await publish(c, 'nobody', 'x'), await publish(c, 'nobody', 'y'), await publish(c, 'nobody', 'z')];
  await c.query(`SELECT pgrelay.stream_append('account', 'acc-1', '[{"type":"opened","data":{}}]'::jsonb)`);
  t.ok(new Set(b.map((m) => m.partition)).size === 2, 'b messages fall in both partitions');

  // reader-b passes partition 0 only; an in-flight batch on partition 1 holds its messages.
  for (;;) {
    const batch = await fetchBatch(c, 'reader-b', 'w', null, 0);
    if (batch === null) break;
    await completeBatch(c, 'reader-b', batch, positionsOf(batch.deliveries));
  }
  const inFlight = (await fetchBatch(c, 'reader-b', 'w', null, 1))!;
  t.ok(inFlight.deliveries.length > 0, 'partition 1 has a batch in flight');

  t.equal(await client.subscriptions.runRetention('1 hour'), '0', 'nothing younger than the retention goes');
  const deleted = await client.subscriptions.runRetention('0 seconds', 1);
  const passedB = b.filter((m) => m.partition === 0).map((m) => m.position);
  t.equal(deleted, String(passedB.length + unread.length), 'batch size 1: every deletable message goes, over many batches');
  const left = new Set((await c.query<{ position: string }>(`SELECT position FROM pgrelay.messages`)).rows.map((r) => r.position));
  t.ok(a.every((p) => left.has(p)), 'a stuck subscription keeps its own topic');
  t.ok(passedB.every((p) => !left.has(p)), 'messages the reader of b passed in their partition are gone, though stuck-a is behind them');
  t.ok(b.filter((m) => m.partition === 1).every((m) => left.has(m.position)), 'messages of the unpassed partition (in flight) stay');
  t.ok(cMessages.every((p) => left.has(p)), 'a projection that has not passed its topic keeps it');
  t.ok(unread.every((p) => !left.has(p)), 'messages no reader wants go');
  t.equal(await count(c, `SELECT count(*) AS n FROM pgrelay.messages WHERE stream_version IS NOT NULL`), 1, 'event-store events are never deleted');

  await completeBatch(c, 'reader-b', inFlight, positionsOf(inFlight.deliveries));
  await drain(c, 'reader-b');
  await c.query(`SELECT pgrelay.projection_run('proj-c')`);
  await drain(c, 'stuck-a');
  t.equal(await client.subscriptions.runRetention('0 seconds', 3), String(a.length + b.length - passedB.length + cMessages.length), 'once every reader passed, the rest goes');
  t.equal(await count(c, `SELECT count(*) AS n FROM pgrelay.messages`), 1, 'only the event remains');
  t.equal(await drain(c, 'reader-b').then((d) => d.length), 0, 'and no reader is redelivered anything');
});
