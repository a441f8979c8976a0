// client.sagas.start groups concurrent starts (client/saga-start-group.ts): starts that arrive
// while earlier ones are in flight go out together, one statement and one transaction per group.
// Proves that grouping really happens (fewer transactions than starts, bounded by maxGroupSize)
// and changes nothing visible: each caller gets the id of its own saga (its input carries n), the
// same steps, events and statuses as an ungrouped start, mixed saga types and a JSON null input
// work, a duplicate idempotency key in one group gives one saga and the same id to both, a failing
// step still compensates. A bad start among good ones rejects alone with the error class,
// SQLSTATE and message it has without grouping, every other start completes; a group whose
// connection dies is not retried (the outcome is unknown); a group stops growing at 1 MiB of
// input. Grouping off, and starts inside transaction(), give one transaction per start (or the
// caller's).
import t, { type Test } from 'tap';
import { sql } from 'slonik';
import {
  createClient,
  InvalidArgumentError,
  NotFoundError,
  PayloadTooLargeError,
  PgrelayError,
  type ClientOptions,
  type PgrelayClient,
} from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';
import { ledger, stepStates, waitUntil } from './fixtures/sagas.ts';

const SETUP = `
  CREATE TABLE public.ledger (id bigserial PRIMARY KEY, saga_id uuid NOT NULL, entry text NOT NULL);
  CREATE FUNCTION public.step_n(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object(context ->> 'step', input -> 'n') $$;
  CREATE FUNCTION public.step_ok(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO public.ledger (saga_id, entry) VALUES ((context ->> 'saga_id')::uuid, (context ->> 'step') || ':' || (context ->> 'phase'));
    RETURN '{}';
  END $$;
  CREATE FUNCTION public.step_fail(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  BEGIN
    RAISE EXCEPTION 'step % fails', context ->> 'step';
  END $$;
  CREATE FUNCTION public.step_slow(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  BEGIN
    PERFORM pg_sleep(0.3);
    RETURN '{}';
  END $$;
`;

const THREE = { steps: ['a', 'b', 'c'].map((name) => ({ name, action: { sql: 'public.step_n' }, compensation: { sql: 'public.step_ok' } })) };

type Options = Partial<Extract<ClientOptions, { connectionString: string }>>;

async function setup(t: Test): Promise<{ url: string; open: (options?: Options) => Promise<PgrelayClient> }> {
  const db = await freshDatabase(t);
  await query(db.connectionString, SETUP);
  const open = async (options: Options = {}): Promise<PgrelayClient> => {
    const client = await createClient({ connectionString: db.connectionString, maximumPoolSize: 4, ...options });
    t.teardown(() => client.end());
    return client;
  };
  return { url: db.connectionString, open };
}

/** How many transactions wrote these sagas' rows (xmin of the saga rows, the xid of saga.started). */
async function transactions(url: string, ids: readonly string[]): Promise<{ rows: number; started: number; largest: number }> {
  const [r] = await query<{ rows: number; started: number; largest: number }>(url, `
    SELECT (SELECT count(DISTINCT s.xmin::text)::int FROM pgrelay.sagas s WHERE s.id = ANY($1::uuid[])) AS rows,
           (SELECT count(DISTINCT m.xid)::int FROM pgrelay.messages m WHERE m.type = 'saga.started' AND m.key = ANY($1::text[])) AS started,
           (SELECT coalesce(max(c), 0)::int FROM (SELECT count(*) AS c FROM pgrelay.messages m
              WHERE m.type = 'saga.started' AND m.key = ANY($1::text[]) GROUP BY m.xid) g) AS largest`, [ids]);
  return r!;
}

const failure = async (p: Promise<unknown>): Promise<unknown> => p.then(() => undefined, (error: unknown) => error);

/** A saga as a caller sees it, without ids and times: compared between grouped and ungrouped starts. */
async function shape(client: PgrelayClient, url: string, id: string) {
  const s = await client.sagas.status(id);
  const events = await query<{ type: string; data: Record<string, unknown> }>(url,
    `SELECT topic || ' ' || type AS type, data - 'saga_id' AS data FROM pgrelay.messages WHERE key = $1 ORDER BY position`, [id]);
  return {
    status: s.status,
    saga_type: s.saga_type,
    input: s.input,
    context: s.context,
    steps: s.steps.map((step) => ({ name: step.name, status: step.status, attempts: step.attempts, output: step.output, last_error: step.last_error })),
    events,
  };
}

t.test('concurrent starts are grouped; each caller gets its own saga; nothing visible changes', async (t) => {
  const { url, open } = await setup(t);
  const grouped = await open({ sagaStartGrouping: { maxGroupSize: 50, maxInFlight: 2 } });
  const plain = await open({ sagaStartGrouping: false });
  await grouped.sagas.define('g.three', THREE);
  await grouped.sagas.define('g.one', { steps: [{ name: 'only', action: { sql: 'public.step_n' } }] });

  // 300 starts in one tick, two saga types mixed, one JSON null input.
  const N = 300;
  const type = (n: number) => (n % 3 === 0 ? 'g.one' : 'g.three');
  const ids = await Promise.all(Array.from({ length: N }, (_, n) => grouped.sagas.start(type(n), { n })));
  const nullId = (await Promise.all([grouped.sagas.start('g.three', null), grouped.sagas.start('g.three', { n: -1 })]))[0];
  t.equal(new Set(ids).size, N, 'one saga per start');
  const rows = await query<{ id: string; saga_type: string; status: string; n: number; ctx: Record<string, unknown> }>(url,
    `SELECT id::text, saga_type, status, (input ->> 'n')::int AS n, context AS ctx FROM pgrelay.sagas WHERE id = ANY($1::uuid[])`, [ids]);
  const byId = new Map(rows.map((r) => [r.id, r]));
  t.ok(ids.every((id, n) => byId.get(id)?.n === n), 'each returned id is the saga of that caller\'s input');
  t.ok(ids.every((id, n) => byId.get(id)?.saga_type === type(n)), 'of that caller\'s saga type');
  t.ok(rows.every((r) => r.status === 'completed'), 'all completed');
  t.ok(ids.every((id, n) => JSON.stringify(byId.get(id)?.ctx) === JSON.stringify(type(n) === 'g.one' ? { only: n } : { a: n, b: n, c: n })),
    'each saga\'s steps saw its own input');
  const tx = await transactions(url, ids);
  t.ok(tx.rows < N / 10, `fewer transactions than starts: ${tx.rows} for ${N}`);
  t.equal(tx.started, tx.rows, 'saga.started of a saga in the transaction that wrote its row');
  t.ok(tx.largest > 1 && tx.largest <= 50, `groups of more than one, at most maxGroupSize (largest ${tx.largest})`);
  t.equal((await grouped.sagas.status(nullId)).input, null, 'a JSON null input stays JSON null in a group');

  // The same sagas started one per statement look the same, events included.
  const alone = await plain.sagas.start('g.three', { n: 1 });
  t.same(await shape(plain, url, ids[1]!), await shape(plain, url, alone), 'grouped and ungrouped starts: same steps, events, statuses');
  const aloneOne = await plain.sagas.start('g.one', { n: 0 });
  t.same(await shape(plain, url, ids[0]!), await shape(plain, url, aloneOne));

  // A lone caller, one start at a time: each its own statement, nothing to wait for.
  const sequential: string[] = [];
  for (let n = 0; n < 5; n += 1) sequential.push(await grouped.sagas.start('g.three', { n }));
  t.equal((await transactions(url, sequential)).rows, 5, 'one start at a time: one transaction each');
});

t.test('steady load from many callers: groups form as slots free up', async (t) => {
  const { url, open } = await setup(t);
  const client = await open({ maximumPoolSize: 8 }); // defaults: maxGroupSize 100, maxInFlight 2
  await client.sagas.define('g.three', THREE);
  const ids: string[][] = Array.from({ length: 16 }, () => []);
  await Promise.all(ids.map(async (mine, caller) => {
    for (let i = 0; i < 25; i += 1) mine.push(await client.sagas.start('g.three', { n: caller * 100 + i }));
  }));
  const all = ids.flat();
  const rows = await query<{ id: string; n: number; status: string }>(url,
    `SELECT id::text, (input ->> 'n')::int AS n, status FROM pgrelay.sagas WHERE id = ANY($1::uuid[])`, [all]);
  const byId = new Map(rows.map((r) => [r.id, r]));
  t.ok(ids.every((mine, caller) => mine.every((id, i) => byId.get(id)?.n === caller * 100 + i)), 'every caller got its own sagas, in its order');
  t.ok(rows.length === 400 && rows.every((r) => r.status === 'completed'), '400 sagas completed');
  const tx = await transactions(url, all);
  t.ok(tx.rows < 400 / 2, `16 callers looping: ${tx.rows} transactions for 400 starts`);
});

t.test('a bad start among good ones rejects alone, with the error it has ungrouped', async (t) => {
  const { url, open } = await setup(t);
  await query(url, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET pgrelay.max_payload_bytes = 2000', current_database()); END $$`);
  // Groups of 10: three of the six groups hold a bad start, the other three succeed grouped.
  const grouped = await open({ sagaStartGrouping: { maxGroupSize: 10, maxInFlight: 1 } });
  const plain = await open({ sagaStartGrouping: false });
  await grouped.sagas.define('g.three', THREE);

  const bad: Record<number, [string, unknown, string | undefined]> = {
    7: ['g.none', { n: 7 }, undefined], // unknown saga type
    19: ['g.three', { n: 19, blob: 'x'.repeat(5000) }, undefined], // payload too large
    33: ['g.three', { n: 33 }, 'k'.repeat(256)], // idempotency key too long
  };
  const results = await Promise.allSettled(Array.from({ length: 60 }, (_, n) => {
    const [type, input, key] = bad[n] ?? ['g.three', { n }, n % 10 === 0 ? `key-${n}` : undefined];
    return grouped.sagas.start(type, input, { idempotencyKey: key });
  }));
  const rejected = results.flatMap((r, n) => (r.status === 'rejected' ? [n] : []));
  t.same(rejected, [7, 19, 33], 'only the bad starts reject');
  const expected: Record<number, [new (...args: never[]) => PgrelayError, string, string]> = {
    7: [NotFoundError, 'PR003', 'saga_type'],
    19: [PayloadTooLargeError, 'PR002', 'input'],
    33: [InvalidArgumentError, 'PR001', 'idempotency_key'],
  };
  for (const n of rejected) {
    const error = (results[n] as PromiseRejectedResult).reason as PgrelayError;
    const [cls, code, argument] = expected[n]!;
    t.type(error, cls, `start ${n}: ${cls.name}`);
    t.equal(error.sqlState, code);
    t.equal(error.argument, argument);
    const [type, input, key] = bad[n]!;
    const ungrouped = (await failure(plain.sagas.start(type, input, { idempotencyKey: key }))) as PgrelayError;
    t.equal(error.message, ungrouped.message, `start ${n}: the same message as ungrouped`);
    t.equal(error.constructor, ungrouped.constructor);
  }
  const good = results.flatMap((r, n) => (r.status === 'fulfilled' ? [[n, r.value] as const] : []));
  const rows = await query<{ id: string; n: number; status: string }>(url,
    `SELECT id::text, (input ->> 'n')::int AS n, status FROM pgrelay.sagas WHERE id = ANY($1::uuid[])`, [good.map(([, id]) => id)]);
  const byId = new Map(rows.map((r) => [r.id, r]));
  t.equal(good.length, 57);
  t.ok(good.every(([n, id]) => byId.get(id)?.n === n && byId.get(id)?.status === 'completed'), 'every good start completed, with its own input');
  const [total] = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pgrelay.sagas`);
  t.equal(total!.n, 57, 'no saga twice: the failed groups left nothing, their starts ran again once each');
  t.equal((await transactions(url, good.map(([, id]) => id))).largest, 10, 'the groups without a bad start committed as groups');
});

t.test('the same idempotency key twice in one group: one saga, the same id to both', async (t) => {
  const { url, open } = await setup(t);
  const client = await open({ sagaStartGrouping: { maxGroupSize: 100, maxInFlight: 1 } });
  await client.sagas.define('g.three', THREE);
  await client.sagas.define('g.one', { steps: [{ name: 'only', action: { sql: 'public.step_n' } }] });
  // Started in one tick: one group.
  const [, first, second, otherType, third] = await Promise.all([
    client.sagas.start('g.three', { n: 0 }),
    client.sagas.start('g.three', { n: 1 }, { idempotencyKey: 'dup' }),
    client.sagas.start('g.three', { n: 2 }, { idempotencyKey: 'dup' }),
    client.sagas.start('g.one', { n: 3 }, { idempotencyKey: 'dup' }),
    client.sagas.start('g.three', { n: 4 }, { idempotencyKey: 'dup' }),
  ]);
  t.equal(second, first, 'the same key in one group: the same id');
  t.equal(third, first);
  t.not(otherType, first, 'the key is per saga type');
  const [s] = await query<{ n: number; sagas: number }>(url,
    `SELECT min((input ->> 'n')::int) AS n, count(*)::int AS sagas FROM pgrelay.sagas WHERE saga_type = 'g.three' AND idempotency_key = 'dup'`);
  t.same(s, { n: 1, sagas: 1 }, 'one saga, with the input of the first start that carried the key');
  t.equal((await transactions(url, [first!, otherType!])).rows, 1, 'they were started in one group');
  t.equal((await client.sagas.status(first!)).status, 'completed');

  // Two grouped clients starting the same keys concurrently, in opposite orders: one saga per key.
  const other = await open({ sagaStartGrouping: { maxGroupSize: 100, maxInFlight: 1 } });
  const keys = Array.from({ length: 40 }, (_, i) => `k${i}`);
  const [a, b] = await Promise.all([
    Promise.all(keys.map((key, i) => client.sagas.start('g.three', { n: i }, { idempotencyKey: key }))),
    Promise.all([...keys].reverse().map((key, i) => other.sagas.start('g.three', { n: 100 + i }, { idempotencyKey: key }))),
  ]);
  t.same([...b].reverse(), a, 'each key: the same saga for both clients');
  const [count] = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pgrelay.sagas WHERE idempotency_key ~ '^k[0-9]+$'`);
  t.equal(count!.n, 40);
});

t.test('a saga whose step fails compensates when started in a group', async (t) => {
  const { url, open } = await setup(t);
  const client = await open({ sagaStartGrouping: { maxGroupSize: 100, maxInFlight: 1 } });
  const plain = await open({ sagaStartGrouping: false });
  await client.sagas.define('g.fails', {
    steps: [
      { name: 'a', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' } },
      { name: 'b', action: { sql: 'public.step_fail' }, max_attempts: 1 },
    ],
  });
  await client.sagas.define('g.three', THREE);
  const ids = await Promise.all(Array.from({ length: 30 }, (_, n) => client.sagas.start(n % 2 === 0 ? 'g.fails' : 'g.three', { n })));
  t.ok((await transactions(url, ids)).rows <= 2, 'started in at most 2 transactions');
  for (const [n, id] of ids.entries()) {
    const status = await client.sagas.status(id);
    if (n % 2 === 0) {
      t.equal(status.status, 'compensated', `saga ${n} compensated`);
      t.same(stepStates(status), { a: 'compensated', b: 'failed' });
      t.same(await ledger(url, id), ['a:action', 'a:compensation']);
    } else {
      t.equal(status.status, 'completed', `saga ${n} completed beside them`);
    }
  }
  const alone = await plain.sagas.start('g.fails', { n: 0 });
  t.same(await shape(plain, url, ids[0]!), await shape(plain, url, alone), 'the same steps, errors and events as ungrouped');
});

t.test('grouping off, and starts inside transaction(): one transaction per start, or the caller\'s', async (t) => {
  const { url, open } = await setup(t);
  const off = await open({ sagaStartGrouping: false, maximumPoolSize: 8 });
  await off.sagas.define('g.three', THREE);
  const ids = await Promise.all(Array.from({ length: 100 }, (_, n) => off.sagas.start('g.three', { n })));
  t.equal((await transactions(url, ids)).rows, 100, 'grouping off: 100 starts, 100 transactions');

  const grouped = await open();
  const { inTx, xid } = await grouped.transaction(async (tx) => {
    const inTx = [];
    for (let n = 0; n < 3; n += 1) inTx.push(await tx.sagas.start('g.three', { n }));
    const xid = (await tx.connection.oneFirst(sql.unsafe`SELECT pg_current_xact_id()::text AS xid`)) as string;
    return { inTx, xid };
  });
  const [seen] = await query<{ xids: string[] }>(url,
    `SELECT array_agg(DISTINCT m.xid::text) AS xids FROM pgrelay.messages m WHERE m.type = 'saga.started' AND m.key = ANY($1::text[])`, [inTx]);
  t.same(seen!.xids, [xid], 'inside transaction(): the caller\'s transaction, never a group');

  await t.rejects(createClient({ connectionString: url, sagaStartGrouping: { maxGroupSize: 0 } }), RangeError, 'bad limits are refused');
  await t.rejects(createClient({ connectionString: url, sagaStartGrouping: { maxInFlight: 1.5 } }), RangeError);
});

t.test('a group whose connection dies is not retried: every caller of it gets the error', async (t) => {
  const { url, open } = await setup(t);
  const client = await open({ sagaStartGrouping: { maxGroupSize: 100, maxInFlight: 1 }, applicationName: 'group-kill-test' });
  await client.sagas.define('g.slow', { steps: [{ name: 'slow', action: { sql: 'public.step_slow' } }] });
  const first = client.sagas.start('g.slow', { n: 0 });
  await new Promise((resolve) => setImmediate(resolve)); // it has left, alone, and holds the one slot
  const rest = Promise.allSettled(Array.from({ length: 9 }, (_, n) => client.sagas.start('g.slow', { n: n + 1 })));
  await first; // the lone first start; the 9 others are now one group, sleeping in its first step
  await waitUntil('the group to run', async () => (await query<{ n: number }>(url,
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'group-kill-test' AND state = 'active'`))[0]!.n === 1);
  await query(url, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'group-kill-test' AND state = 'active'`);
  const outcomes = await rest;
  t.ok(outcomes.every((o) => o.status === 'rejected'), 'all 9 callers of the group get the error');
  t.equal(new Set(outcomes.map((o) => (o as PromiseRejectedResult).reason)).size, 1, 'the one error of their statement');
  const [count] = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pgrelay.sagas`);
  t.equal(count!.n, 1, 'nothing was retried: only the first saga exists');
  const after = await client.sagas.start('g.slow', { n: 10 });
  t.equal((await client.sagas.status(after)).status, 'completed', 'the client goes on with a new connection');
});

t.test('a group stops growing at 1 MiB of input; a large start still completes', async (t) => {
  const { url, open } = await setup(t);
  const client = await open({ sagaStartGrouping: { maxGroupSize: 100, maxInFlight: 1 } });
  await client.sagas.define('g.three', THREE);
  const blob = 'x'.repeat(300_000); // 4 of these are over 1 MiB, 3 are not
  const ids = await Promise.all(Array.from({ length: 10 }, (_, n) => client.sagas.start('g.three', { n, blob })));
  const rows = await query<{ id: string; n: number; status: string }>(url,
    `SELECT id::text, (input ->> 'n')::int AS n, status FROM pgrelay.sagas WHERE id = ANY($1::uuid[])`, [ids]);
  const byId = new Map(rows.map((r) => [r.id, r]));
  t.ok(ids.every((id, n) => byId.get(id)?.n === n && byId.get(id)?.status === 'completed'), 'all completed, each its own');
  const tx = await transactions(url, ids);
  t.equal(tx.largest, 3, 'at most 3 inputs of 300 kB in one group');
  t.equal(tx.rows, 4, '10 starts in groups of 3, 3, 3, 1');
});
