// DESIGN invariant 6 for subscriptions and the pull API: every bad argument of subscribe,
// unsubscribe, pause/resume, reset, fetch/complete/extend/release, dead letters, lag and
// retention raises a stable SQLSTATE (PR001 invalid argument, PR003 not found, PR005 lease lost)
// with a message and COLUMN field naming the argument, never XX000 or a generic error, and
// leaves every pgrelay table exactly as it was (checked row by row before and after each call).
import t, { type Test } from 'tap';
import pg from 'pg';
import { createClient, InvalidArgumentError, NotFoundError } from '../client/index.ts';
import { freshDatabase } from './helpers/db.ts';
import { completeBatch, connect, failure, fetchBatch, positionsOf, publish, waitFor, type Batch } from './helpers/subscriptions.ts';

type Expected = { code: 'PR001' | 'PR003' | 'PR005' | 'PR007'; fn: string; argument: string };
type Case = [label: string, text: string, params: unknown[], expected: Expected];

const TABLES = ['subscriptions', 'subscription_partitions', 'retries', 'dead_letters', 'delivered_ahead', 'messages'];

/** Every row of every table the functions write, as one comparable value. */
async function tableState(client: pg.Client): Promise<Record<string, string>> {
  const state: Record<string, string> = {};
  for (const table of TABLES) {
    const { rows } = await client.query<{ digest: string | null; n: string }>(
      `SELECT md5(string_agg(r::text, '|' ORDER BY r::text)) AS digest, count(*) AS n FROM pgrelay.${table} AS r`,
    );
    state[table] = `${rows[0]!.n}:${rows[0]!.digest ?? ''}`;
  }
  return state;
}

async function expectError(t: Test, client: pg.Client, [label, text, params, expected]: Case): Promise<void> {
  const before = await tableState(client);
  const error = await failure(() => client.query(text, params));
  if (error === undefined) {
    t.fail(`${label}: succeeded, expected ${expected.code} naming ${expected.argument}`);
    return;
  }
  t.equal(error.code, expected.code, `${label}: SQLSTATE ${expected.code} (got ${error.code}: ${error.message})`);
  t.equal(error.column, expected.argument, `${label}: the COLUMN field names ${expected.argument}`);
  t.ok(
    error.message.startsWith(`${expected.fn}: argument ${expected.argument} `),
    `${label}: the message names the function and argument: ${JSON.stringify(error.message.slice(0, 160))}`,
  );
  t.same(await tableState(client), before, `${label}: nothing written`);
}

/** A subscription with a batch in flight, a retry waiting and a dead letter: state to spoil. */
async function richState(t: Test, client: pg.Client): Promise<{ batch: Batch; dead: string; retrying: string }> {
  await client.query(
    `SELECT pgrelay.subscribe('subs', '{orders}', '{"type":"consumer"}', '{"partitions":2,"start":"earliest","max_attempts":2,"backoff":{"initial_ms":3600000,"max_ms":3600000}}')`,
  );
  await client.query(`SELECT pgrelay.subscribe('one-shot', '{orders}', '{"type":"consumer"}', '{"start":"earliest","max_attempts":1}')`);
  for (let i = 0; i < 8; i += 1) await publish(client, 'orders', `key-${i}`, { i });
  // one-shot: everything fails once, so every message is a dead letter there.
  const shot = await waitFor('a one-shot batch', () => fetchBatch(client, 'one-shot', 'w').then((b) => b ?? undefined));
  await completeBatch(client, 'one-shot', shot, [], positionsOf(shot.deliveries), shot.deliveries.map(() => 'boom'));
  // subs: one partition fails a message (a retry waiting an hour), the other is leased.
  const first = (await fetchBatch(client, 'subs', 'w', null, 0))!;
  const retrying = first.deliveries[0]!.position;
  await completeBatch(client, 'subs', first, positionsOf(first.deliveries).slice(1), [retrying], ['boom']);
  const batch = (await fetchBatch(client, 'subs', 'holder', null, 1))!;
  t.ok(batch.deliveries.length > 0, 'setup: a batch is in flight on partition 1');
  const dead = (await client.query<{ position: string }>(`SELECT min(position)::text AS position FROM pgrelay.dead_letters`)).rows[0]!.position;
  return { batch, dead, retrying };
}

t.test('subscribe: bad name, topics, sink and options', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await richState(t, c);
  const fn = 'pgrelay.subscribe';
  const call = `SELECT pgrelay.subscribe($1, $2::text[], $3::jsonb, $4::jsonb)`;
  const ok = { name: 'new-sub', topics: ['orders'], sink: '{"type":"consumer"}', options: '{}' };
  const args = (over: Partial<Record<keyof typeof ok, unknown>>): unknown[] => {
    const merged = { ...ok, ...over };
    return [merged.name, merged.topics, merged.sink, merged.options];
  };
  const name = (label: string, value: unknown): Case => [label, call, args({ name: value }), { code: 'PR001', fn, argument: 'name' }];
  const topics = (label: string, value: unknown): Case => [label, call, args({ topics: value }), { code: 'PR001', fn, argument: 'topics' }];
  const sink = (label: string, value: unknown): Case => [label, call, args({ sink: value }), { code: 'PR001', fn, argument: 'sink' }];
  const options = (label: string, value: unknown, subscription = 'new-sub'): Case => [
    label,
    call,
    args({ name: subscription, options: value }),
    { code: 'PR001', fn, argument: 'options' },
  ];
  const cases: Case[] = [
    name('NULL name', null),
    name('empty name', ''),
    name('name with a space', 'my sub'),
    name('201-character name', 'n'.repeat(201)),
    name('SQL injection in name', "x'); DELETE FROM pgrelay.subscriptions; --"),
    topics('NULL topics', null),
    topics('empty topics', []),
    topics('a NULL topic', ['orders', null]),
    topics('an empty topic', ['']),
    topics('a topic with a space', ['order created']),
    topics('a star inside a topic', ['orders*created']),
    topics('a star first', ['*orders']),
    topics('two stars', ['orders.**']),
    topics('201-character topic', ['t'.repeat(201)]),
    topics('a 201-character prefix', [`${'t'.repeat(200)}*`]),
    sink('NULL sink', null),
    sink('JSON null sink', 'null'),
    sink('sink an array', '[]'),
    sink('sink a string', '"consumer"'),
    sink('sink without a type', '{}'),
    sink('unknown sink type', '{"type":"kafka"}'),
    sink('sink type a number', '{"type":1}'),
    sink('webhook without url', '{"type":"webhook"}'),
    sink('webhook with an ftp url', '{"type":"webhook","url":"ftp://host/x"}'),
    sink('webhook url a number', '{"type":"webhook","url":5}'),
    sink('a secret in the sink', '{"type":"webhook","url":"http://h/x","secret":"s3cret"}'),
    sink('timeout_ms a string', '{"type":"webhook","url":"http://h/x","timeout_ms":"5000"}'),
    sink('timeout_ms zero', '{"type":"webhook","url":"http://h/x","timeout_ms":0}'),
    sink('concurrency too high', '{"type":"webhook","url":"http://h/x","concurrency":1001}'),
    options('NULL options', null),
    options('JSON null options', 'null'),
    options('options an array', '[]'),
    options('options a string', '"fast"'),
    options('an unknown option', '{"partition":2}'),
    options('partitions a string', '{"partitions":"2"}'),
    options('partitions zero', '{"partitions":0}'),
    options('partitions 257', '{"partitions":257}'),
    options('fractional partitions', '{"partitions":2.5}'),
    options('fractional max_attempts', '{"max_attempts":2.5}'),
    options('max_attempts zero', '{"max_attempts":0}'),
    options('max_attempts a string', '{"max_attempts":"3"}'),
    options('max_attempts a boolean', '{"max_attempts":true}'),
    options('fractional batch_size', '{"batch_size":10.5}'),
    options('batch_size zero', '{"batch_size":0}'),
    options('batch_size 10001', '{"batch_size":10001}'),
    options('lease_seconds zero', '{"lease_seconds":0}'),
    options('lease_seconds 3601', '{"lease_seconds":3601}'),
    options('lease_seconds an object', '{"lease_seconds":{}}'),
    options('unknown start', '{"start":"newest"}'),
    options('start a number', '{"start":5}'),
    options('start an array', '{"start":["earliest"]}'),
    options('backoff a string', '{"backoff":"fast"}'),
    options('backoff with an unknown field', '{"backoff":{"speed":1}}'),
    options('negative initial_ms', '{"backoff":{"initial_ms":-1}}'),
    options('max_ms below initial_ms', '{"backoff":{"initial_ms":1000,"max_ms":10}}'),
    options('multiplier zero', '{"backoff":{"multiplier":0}}'),
    options('jitter above 1', '{"backoff":{"jitter":2}}'),
    options('initial_ms a string', '{"backoff":{"initial_ms":"1s"}}'),
    // Updating an existing subscription with bad options changes nothing either.
    options('update: fractional max_attempts', '{"max_attempts":1.5}', 'subs'),
    options('update: unknown option', '{"parts":2}', 'subs'),
    options('update: bad backoff', '{"backoff":{"initial_ms":"x"}}', 'subs'),
  ];
  for (const c_ of cases) await expectError(t, c, c_);
  await expectError(t, c, [
    'update: a different partition count',
    call,
    args({ name: 'subs', options: '{"partitions":3}' }),
    { code: 'PR007', fn, argument: 'options' },
  ]);

  // Whole numbers written as decimals are still whole.
  await c.query(call, args({ name: 'decimal-but-whole', options: '{"partitions":2.0,"max_attempts":3.0,"batch_size":10.0}' }));
  t.same(
    (await c.query(`SELECT partitions, max_attempts, batch_size FROM pgrelay.subscriptions WHERE name = 'decimal-but-whole'`)).rows,
    [{ partitions: 2, max_attempts: 3, batch_size: 10 }],
    '2.0 is accepted as 2',
  );

  // The typed client maps them to InvalidArgumentError carrying the argument.
  const client = await createClient({ connectionString: db.connectionString, maximumPoolSize: 1 });
  t.teardown(() => client.end());
  const error = await failure(() => client.subscriptions.subscribe('typed', ['orders'], { type: 'consumer' }, { max_attempts: 2.5 }));
  t.ok(error instanceof InvalidArgumentError, 'client: InvalidArgumentError');
  t.equal((error as unknown as InvalidArgumentError).argument, 'options', 'client: .argument is options');
  t.equal((error as unknown as InvalidArgumentError).sqlState, 'PR001', 'client: .sqlState is PR001');
});

t.test('unsubscribe, pause, resume, reset, lag: bad or unknown subscription, bad reset points', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await richState(t, c);
  const last = (await c.query<{ p: string }>(`SELECT max(position)::text AS p FROM pgrelay.messages`)).rows[0]!.p;
  const cases: Case[] = [];
  for (const [fn, argument] of [
    ['pgrelay.unsubscribe', 'name'],
    ['pgrelay.subscription_pause', 'subscription'],
    ['pgrelay.subscription_resume', 'subscription'],
    ['pgrelay.subscription_reset', 'subscription'],
    ['pgrelay.subscription_lag', 'subscription'],
  ] as const) {
    const call = fn === 'pgrelay.subscription_lag' ? `SELECT * FROM ${fn}($1)` : `SELECT ${fn}($1)`;
    if (fn !== 'pgrelay.subscription_lag') cases.push([`${fn}: NULL`, call, [null], { code: 'PR001', fn, argument }]);
    cases.push([`${fn}: empty`, call, [''], { code: 'PR001', fn, argument }]);
    cases.push([`${fn}: bad characters`, call, ['a;b'], { code: 'PR001', fn, argument }]);
    cases.push([`${fn}: unknown`, call, ['no-such'], { code: 'PR003', fn, argument }]);
  }
  const reset = 'pgrelay.subscription_reset';
  cases.push(
    ['reset: both a position and a time', `SELECT ${reset}('subs', 1, now())`, [], { code: 'PR001', fn: reset, argument: 'from_position' }],
    ['reset: a negative position', `SELECT ${reset}('subs', -1)`, [], { code: 'PR001', fn: reset, argument: 'from_position' }],
    ['reset: past the end of the log', `SELECT ${reset}('subs', $1::bigint + 2)`, [last], { code: 'PR001', fn: reset, argument: 'from_position' }],
    ['reset: far past the end', `SELECT ${reset}('subs', 9223372036854775807)`, [], { code: 'PR001', fn: reset, argument: 'from_position' }],
  );
  for (const c_ of cases) await expectError(t, c, c_);
  const client = await createClient({ connectionString: db.connectionString, maximumPoolSize: 1 });
  t.teardown(() => client.end());
  t.ok((await failure(() => client.subscriptions.lag('no-such'))) instanceof NotFoundError, 'client lag: NotFoundError');
  t.ok((await failure(() => client.subscriptions.reset('subs', { position: String(BigInt(last) + 5n) }))) instanceof InvalidArgumentError, 'client reset: InvalidArgumentError');
});

t.test('pull API: fetch, complete, extend and release with bad arguments or a stale token', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  const { batch } = await richState(t, c);
  const token = batch.token;
  const stale = String(BigInt(token) - 1n);
  const inBatch = positionsOf(batch.deliveries);
  const outside = (await c.query<{ p: string }>(`SELECT max(position)::text AS p FROM pgrelay.messages`)).rows[0]!.p;
  const notInBatch = inBatch.includes(outside) ? '999999' : outside;
  const fetch = 'pgrelay.fetch_batch';
  const complete = 'pgrelay.complete_batch';
  const extend = 'pgrelay.extend_lease';
  const release = 'pgrelay.release_batch';
  const fetchCall = `SELECT * FROM pgrelay.fetch_batch($1, $2, $3, $4)`;
  const completeCall = `SELECT pgrelay.complete_batch($1, $2, $3, $4::bigint[], $5::bigint[], $6::text[])`;
  const cases: Case[] = [
    ['fetch: NULL subscription', fetchCall, [null, 'w', null, null], { code: 'PR001', fn: fetch, argument: 'subscription' }],
    ['fetch: unknown subscription', fetchCall, ['no-such', 'w', null, null], { code: 'PR003', fn: fetch, argument: 'subscription' }],
    ['fetch: NULL consumer', fetchCall, ['subs', null, null, null], { code: 'PR001', fn: fetch, argument: 'consumer' }],
    ['fetch: empty consumer', fetchCall, ['subs', '', null, null], { code: 'PR001', fn: fetch, argument: 'consumer' }],
    ['fetch: consumer with a space', fetchCall, ['subs', 'worker 1', null, null], { code: 'PR001', fn: fetch, argument: 'consumer' }],
    ['fetch: max_messages zero', fetchCall, ['subs', 'w', 0, null], { code: 'PR001', fn: fetch, argument: 'max_messages' }],
    ['fetch: max_messages negative', fetchCall, ['subs', 'w', -5, null], { code: 'PR001', fn: fetch, argument: 'max_messages' }],
    ['fetch: max_messages 10001', fetchCall, ['subs', 'w', 10001, null], { code: 'PR001', fn: fetch, argument: 'max_messages' }],
    ['fetch: partition -1', fetchCall, ['subs', 'w', null, -1], { code: 'PR001', fn: fetch, argument: 'partition_index' }],
    ['fetch: partition = partitions', fetchCall, ['subs', 'w', null, 2], { code: 'PR001', fn: fetch, argument: 'partition_index' }],

    ['complete: unknown subscription', completeCall, ['no-such', 1, token, inBatch, [], []], { code: 'PR003', fn: complete, argument: 'subscription' }],
    ['complete: NULL partition', completeCall, ['subs', null, token, inBatch, [], []], { code: 'PR001', fn: complete, argument: 'partition_index' }],
    ['complete: partition out of range', completeCall, ['subs', 2, token, inBatch, [], []], { code: 'PR001', fn: complete, argument: 'partition_index' }],
    ['complete: negative partition', completeCall, ['subs', -1, token, inBatch, [], []], { code: 'PR001', fn: complete, argument: 'partition_index' }],
    ['complete: NULL token', completeCall, ['subs', 1, null, inBatch, [], []], { code: 'PR001', fn: complete, argument: 'lease_token' }],
    ['complete: stale token', completeCall, ['subs', 1, stale, inBatch, [], []], { code: 'PR005', fn: complete, argument: 'lease_token' }],
    ['complete: the other partition (not leased)', completeCall, ['subs', 0, token, inBatch, [], []], { code: 'PR005', fn: complete, argument: 'lease_token' }],
    ['complete: NULL acked', completeCall, ['subs', 1, token, null, [], []], { code: 'PR001', fn: complete, argument: 'acked' }],
    ['complete: acked outside the batch', completeCall, ['subs', 1, token, [...inBatch, notInBatch], [], []], { code: 'PR001', fn: complete, argument: 'acked' }],
    ['complete: a NULL in acked', completeCall, ['subs', 1, token, [inBatch[0], null], [], []], { code: 'PR001', fn: complete, argument: 'acked' }],
    ['complete: NULL failed', completeCall, ['subs', 1, token, [], null, []], { code: 'PR001', fn: complete, argument: 'failed' }],
    ['complete: failed outside the batch', completeCall, ['subs', 1, token, [], [notInBatch], ['x']], { code: 'PR001', fn: complete, argument: 'failed' }],
    ['complete: failed without errors', completeCall, ['subs', 1, token, [], [inBatch[0]], []], { code: 'PR001', fn: complete, argument: 'errors' }],
    ['complete: NULL errors', completeCall, ['subs', 1, token, [], [inBatch[0]], null], { code: 'PR001', fn: complete, argument: 'errors' }],
    ['complete: more errors than failures', completeCall, ['subs', 1, token, [], [], ['x']], { code: 'PR001', fn: complete, argument: 'errors' }],
    ['complete: acked and failed at once', completeCall, ['subs', 1, token, [inBatch[0]], [inBatch[0]], ['x']], { code: 'PR001', fn: complete, argument: 'failed' }],

    ['extend: NULL token', `SELECT pgrelay.extend_lease('subs', 1, NULL)`, [], { code: 'PR001', fn: extend, argument: 'lease_token' }],
    ['extend: stale token', `SELECT pgrelay.extend_lease('subs', 1, $1)`, [stale], { code: 'PR005', fn: extend, argument: 'lease_token' }],
    ['extend: partition out of range', `SELECT pgrelay.extend_lease('subs', 7, $1)`, [token], { code: 'PR001', fn: extend, argument: 'partition_index' }],
    ['extend: zero seconds', `SELECT pgrelay.extend_lease('subs', 1, $1, 0)`, [token], { code: 'PR001', fn: extend, argument: 'lease_seconds' }],
    ['extend: negative seconds', `SELECT pgrelay.extend_lease('subs', 1, $1, -5)`, [token], { code: 'PR001', fn: extend, argument: 'lease_seconds' }],
    ['extend: 3601 seconds', `SELECT pgrelay.extend_lease('subs', 1, $1, 3601)`, [token], { code: 'PR001', fn: extend, argument: 'lease_seconds' }],
    ['extend: unknown subscription', `SELECT pgrelay.extend_lease('no-such', 1, $1)`, [token], { code: 'PR003', fn: extend, argument: 'subscription' }],

    ['release: NULL partition', `SELECT pgrelay.release_batch('subs', NULL, $1)`, [token], { code: 'PR001', fn: release, argument: 'partition_index' }],
    ['release: stale token', `SELECT pgrelay.release_batch('subs', 1, $1)`, [stale], { code: 'PR005', fn: release, argument: 'lease_token' }],
    ['release: NULL subscription', `SELECT pgrelay.release_batch(NULL, 1, $1)`, [token], { code: 'PR001', fn: release, argument: 'subscription' }],
  ];
  for (const c_ of cases) await expectError(t, c, c_);

  // After all that, the real holder's batch is intact and completes.
  await completeBatch(c, 'subs', batch, inBatch);
  const moved = (await c.query(`SELECT cursor_position::text AS p, lease_owner FROM pgrelay.subscription_partitions WHERE subscription = 'subs' AND partition_index = 1`)).rows[0];
  t.same(moved, { p: batch.deliveries.map((d) => d.position).sort((a, b) => Number(BigInt(a) - BigInt(b))).at(-1), lease_owner: null }, 'the batch completes after the failed calls');
});

t.test('dead letters and retention: bad arguments', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  const { retrying } = await richState(t, c);
  const dlRetry = 'pgrelay.dead_letter_retry';
  const dlDiscard = 'pgrelay.dead_letter_discard';
  const retention = 'pgrelay.retention_run';
  const cases: Case[] = [
    ['retry: NULL subscription', `SELECT ${dlRetry}(NULL)`, [], { code: 'PR001', fn: dlRetry, argument: 'subscription' }],
    ['retry: unknown subscription', `SELECT ${dlRetry}('no-such')`, [], { code: 'PR003', fn: dlRetry, argument: 'subscription' }],
    ['retry: a position that is no dead letter', `SELECT ${dlRetry}('one-shot', 999999)`, [], { code: 'PR003', fn: dlRetry, argument: 'position' }],
    ['retry: a message that is retrying, not dead', `SELECT ${dlRetry}('subs', $1)`, [retrying], { code: 'PR003', fn: dlRetry, argument: 'position' }],
    ['discard: NULL subscription', `SELECT ${dlDiscard}(NULL)`, [], { code: 'PR001', fn: dlDiscard, argument: 'subscription' }],
    ['discard: unknown subscription', `SELECT ${dlDiscard}('no-such', 1)`, [], { code: 'PR003', fn: dlDiscard, argument: 'subscription' }],
    ['discard: a position that is no dead letter', `SELECT ${dlDiscard}('one-shot', 999999)`, [], { code: 'PR003', fn: dlDiscard, argument: 'position' }],
    ['retention: NULL batch_size', `SELECT ${retention}('0 seconds', NULL)`, [], { code: 'PR001', fn: retention, argument: 'batch_size' }],
    ['retention: batch_size zero', `SELECT ${retention}('0 seconds', 0)`, [], { code: 'PR001', fn: retention, argument: 'batch_size' }],
    ['retention: negative batch_size', `SELECT ${retention}('0 seconds', -10)`, [], { code: 'PR001', fn: retention, argument: 'batch_size' }],
    ['retention: batch_size too large', `SELECT ${retention}('0 seconds', 1000001)`, [], { code: 'PR001', fn: retention, argument: 'batch_size' }],
    ['retention: negative older_than', `SELECT ${retention}('-1 day')`, [], { code: 'PR001', fn: retention, argument: 'older_than' }],
  ];
  for (const c_ of cases) await expectError(t, c, c_);
  t.equal(
    Number((await c.query(`SELECT count(*) AS n FROM pgrelay.dead_letters WHERE subscription = 'one-shot'`)).rows[0].n),
    8,
    'all eight dead letters are still there',
  );
});

t.test('client: positions and times SQL would only reject as cast errors are InvalidArgumentError', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await richState(t, c);
  const client = await createClient({ connectionString: db.connectionString, maximumPoolSize: 1 });
  t.teardown(() => client.end());
  const before = await tableState(c);
  const cases: Array<[string, () => Promise<unknown>, string]> = [
    ['reset to a position that is not a number', () => client.subscriptions.reset('subs', { position: 'abc' }), 'from_position'],
    ['reset to a fractional position', () => client.subscriptions.reset('subs', { position: '1.5' }), 'from_position'],
    ['reset to an invalid Date', () => client.subscriptions.reset('subs', { time: new Date('not a time') }), 'from_time'],
    ['retry a dead letter at position "x"', () => client.subscriptions.retryDeadLetters('one-shot', 'x'), 'position'],
    ['discard a dead letter at position ""', () => client.subscriptions.discardDeadLetters('one-shot', ''), 'position'],
  ];
  for (const [label, run, argument] of cases) {
    const error = await failure(run);
    t.ok(error instanceof InvalidArgumentError, `${label}: InvalidArgumentError (got ${String(error)})`);
    t.equal((error as unknown as InvalidArgumentError | undefined)?.argument, argument, `${label}: names ${argument}`);
  }
  t.same(await tableState(c), before, 'nothing written');
  t.equal(await client.subscriptions.retryDeadLetters('one-shot', 1n + BigInt((await c.query(`SELECT min(position) AS p FROM pgrelay.dead_letters`)).rows[0].p) - 1n), 1, 'a bigint position works');
});
