// Projections (CQRS read models): a SQL handler applied to each matching message in log order,
// with the checkpoint advanced in the same transaction. A run killed mid-way (its backend
// terminated while the handler sleeps) and restarted ends equal to a rebuild from scratch; a
// failing handler leaves the projection where it was; concurrent runs never overlap; lag is
// visible; bad arguments raise pgrelay SQLSTATEs naming them.
import t, { type Test } from 'tap';
import pg from 'pg';
import { sql } from 'slonik';
import { createClient, InvalidArgumentError, NotFoundError, type PgrelayClient, type PublishInput } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';

type Expected = { code: string; fn: string; argument: string };
type PgError = Error & { code?: string; column?: string };

async function connect(t: Test, connectionString: string, name = 'projections-test'): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: name, connectionTimeoutMillis: 15_000 });
  client.on('error', () => {});
  await client.connect();
  await client.query(`SET statement_timeout = '90s'`);
  t.teardown(() => client.end().catch(() => {}));
  return client;
}

async function newClient(t: Test, connectionString: string, maximumPoolSize = 3): Promise<PgrelayClient> {
  const client = await createClient({ connectionString, maximumPoolSize });
  t.teardown(() => client.end());
  return client;
}

async function failure(run: () => Promise<unknown>): Promise<unknown> {
  try {
    await run();
  } catch (error) {
    return error;
  }
  return undefined;
}

/** One statement that must fail with a pgrelay SQLSTATE naming the argument (never XX000). */
async function expectError(
  t: Test,
  client: pg.Client,
  label: string,
  text: string,
  params: unknown[],
  expected: Expected,
  todo?: string,
): Promise<void> {
  const error = (await failure(() => client.query(text, params))) as PgError | undefined;
  const extra = todo ? { todo } : {};
  if (error === undefined) {
    t.fail(`${label}: succeeded, expected ${expected.code} naming ${expected.argument}`, extra);
    return;
  }
  t.not(error.code, 'XX000', `${label}: not an internal error`);
  t.equal(error.code, expected.code, `${label}: SQLSTATE ${expected.code} (got ${error.code}: ${error.message})`, extra);
  t.equal(error.column, expected.argument, `${label}: the COLUMN field names ${expected.argument}`, extra);
  t.ok(
    error.message.startsWith(`${expected.fn}: argument ${expected.argument} `),
    `${label}: the message names the function and argument: ${JSON.stringify(error.message.slice(0, 160))}`,
    extra,
  );
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Waits until every transaction that was running has ended (so reads see everything committed). */
async function settle(connectionString: string): Promise<void> {
  const [row] = await query<{ w: string }>(connectionString, 'SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS w');
  await waitFor('the horizon to pass', async () => (await query<{ ok: boolean }>(connectionString, 'SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::xid8 AS ok', [row!.w]))[0]!.ok);
}

/**
 * The read model: per-customer order count and total, plus a log of applied positions whose
 * primary key makes a double application fail loudly. The handler is deliberately not
 * idempotent, sleeps on messages marked {"sleep": true} in sessions with test.sleep = on, and
 * raises on message types listed in public.poison.
 */
const READ_MODEL = `
  CREATE TABLE public.order_totals (customer text PRIMARY KEY, orders int NOT NULL, total numeric NOT NULL, last_position bigint NOT NULL);
  CREATE TABLE public.order_log (position bigint PRIMARY KEY, customer text NOT NULL);
  CREATE TABLE public.poison (type text PRIMARY KEY);
  CREATE FUNCTION public.project_orders(message jsonb) RETURNS void LANGUAGE plpgsql AS $$
  BEGIN
    IF (message->'data'->>'sleep')::boolean IS TRUE AND current_setting('test.sleep', true) = 'on' THEN
      PERFORM pg_sleep(60);
    END IF;
    IF EXISTS (SELECT 1 FROM public.poison p WHERE p.type = message->>'type') THEN
      RAISE EXCEPTION 'poisoned message at %', message->>'position';
    END IF;
    IF EXISTS (SELECT 1 FROM public.order_totals o WHERE o.customer = message->>'key' AND o.last_position >= (message->>'position')::bigint) THEN
      RAISE EXCEPTION 'out of order for %: % after %', message->>'key', message->>'position',
        (SELECT o.last_position FROM public.order_totals o WHERE o.customer = message->>'key');
    END IF;
    INSERT INTO public.order_log (position, customer) VALUES ((message->>'position')::bigint, message->>'key');
    INSERT INTO public.order_totals AS o (customer, orders, total, last_position)
    VALUES (message->>'key', 1, (message->'data'->>'amount')::numeric, (message->>'position')::bigint)
    ON CONFLICT (customer) DO UPDATE
      SET orders = o.orders + 1, total = o.total + excluded.total, last_position = excluded.last_position;
  END $$;
  CREATE FUNCTION public.reset_orders() RETURNS void LANGUAGE sql AS $$ TRUNCATE public.order_totals, public.order_log $$;
`;

const CUSTOMERS = ['ann', 'bob', 'cy', 'dee', 'eve'];
const order = (i: number, extra: Record<string, unknown> = {}): PublishInput => ({
  topic: 'orders.placed',
  key: CUSTOMERS[i % CUSTOMERS.length]!,
  type: 'order.placed',
  data: { amount: (i % 7) + 1, ...extra },
});

async function readModel(connectionString: string) {
  return {
    totals: await query(connectionString, 'SELECT customer, orders, total::text AS total, last_position::text AS last_position FROM public.order_totals ORDER BY customer'),
    log: (await query<{ position: string }>(connectionString, 'SELECT position::text AS position FROM public.order_log ORDER BY position')).map((r) => r.position),
  };
}

/** What the read model must hold for these messages, computed independently. */
function expectedTotals(messages: ReadonlyArray<{ key: string; amount: number }>) {
  const totals = new Map<string, { orders: number; total: number }>();
  for (const m of messages) {
    const row = totals.get(m.key) ?? { orders: 0, total: 0 };
    totals.set(m.key, { orders: row.orders + 1, total: row.total + m.amount });
  }
  return [...totals.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([customer, row]) => ({ customer, orders: row.orders, total: String(row.total) }));
}

t.test('a projection killed mid-way and restarted ends equal to one rebuilt from scratch', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, READ_MODEL);
  const client = await newClient(t, db.connectionString);
  await client.projections.define('totals', ['orders.*'], 'public.project_orders', { resetHandler: 'public.reset_orders' });

  const published: Array<{ key: string; amount: number }> = [];
  const SLEEPER = 36;
  for (let batch = 0; batch < 6; batch += 1) {
    const inputs = Array.from({ length: 10 }, (_, j) => order(batch * 10 + j, batch * 10 + j === SLEEPER ? { sleep: true } : {}));
    await client.publishMany(inputs);
    published.push(...inputs.map((m) => ({ key: m.key!, amount: (m.data as { amount: number }).amount })));
  }
  await client.publish({ topic: 'payments', key: 'ann', type: 'payment', data: { amount: 1000 } }); // not a matching topic
  await settle(db.connectionString);

  // The run that will be killed: batches of 10 in a session where the handler sleeps on message 37.
  const doomed = await connect(t, db.connectionString, 'doomed-projection-run');
  await doomed.query(`SET test.sleep = 'on'`);
  const doomedPid = (await doomed.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  const doomedLoop = failure(async () => {
    for (;;) {
      const { rows } = await doomed.query<{ n: number }>(`SELECT pgrelay.projection_run('totals', 10) AS n`);
      if (rows[0]!.n === 0) return;
    }
  });
  await waitFor('the handler to sleep on the marked message', async () => {
    const [row] = await query<{ w: string | null }>(db.connectionString, 'SELECT wait_event AS w FROM pg_stat_activity WHERE pid = $1', [doomedPid]);
    return row?.w === 'PgSleep';
  });
  t.equal(await client.projections.run('totals'), 0, 'a concurrent run does not overlap the running one: it returns 0');
  const [{ killed }] = (await query<{ killed: boolean }>(db.connectionString, 'SELECT pg_terminate_backend($1) AS killed', [doomedPid])) as [{ killed: boolean }];
  t.ok(killed, 'the running projection’s backend was terminated mid-batch');
  const killError = (await doomedLoop) as PgError | undefined;
  t.ok(killError !== undefined, `the killed run failed (${killError?.code ?? ''} ${killError?.message ?? ''})`);

  const [afterKill] = await query<{ applied: string }>(db.connectionString, `SELECT applied_count::text AS applied FROM pgrelay.projections WHERE name = 'totals'`);
  const appliedBeforeKill = Number(afterKill!.applied);
  t.ok(appliedBeforeKill > 0 && appliedBeforeKill <= SLEEPER, `batches before the kill were committed (${appliedBeforeKill} applied)`);
  const partial = await readModel(db.connectionString);
  t.equal(partial.log.length, appliedBeforeKill, 'the read model holds exactly the committed batches: the killed batch was rolled back');
  t.same(partial.totals.map(({ customer, orders, total }) => ({ customer, orders, total })), expectedTotals(published.slice(0, appliedBeforeKill)), 'and equals those messages folded');

  // Life goes on while it is down.
  const more = Array.from({ length: 20 }, (_, i) => order(100 + i));
  await client.publishMany(more.slice(0, 10));
  await client.publishMany(more.slice(10));
  published.push(...more.map((m) => ({ key: m.key!, amount: (m.data as { amount: number }).amount })));
  await settle(db.connectionString);
  const [lagBefore] = await client.projections.lag('totals');
  t.same(
    { pending: lagBefore?.pending, applied: lagBefore?.applied, last_error: lagBefore?.last_error },
    { pending: String(published.length - appliedBeforeKill), applied: String(appliedBeforeKill), last_error: null },
    'lag shows what is pending',
  );
  t.ok((lagBefore?.lag_seconds ?? 0) > 0, 'and how far behind it is');

  // Restart (a new session, no sleeping) and run to the end.
  const restarted = await newClient(t, db.connectionString);
  t.equal(await restarted.projections.catchUp('totals', { maxMessages: 7 }), published.length - appliedBeforeKill, 'the restarted projection applies the rest, once');
  const resumed = await readModel(db.connectionString);
  t.same(resumed.totals.map(({ customer, orders, total }) => ({ customer, orders, total })), expectedTotals(published), 'the resumed read model equals all messages folded');
  const [lagAfter] = await client.projections.lag('totals');
  t.same({ pending: lagAfter?.pending, lag_seconds: lagAfter?.lag_seconds, applied: lagAfter?.applied }, { pending: '0', lag_seconds: 0, applied: String(published.length) }, 'no lag');

  // Rebuild from scratch and compare.
  await client.projections.rebuild('totals');
  t.same(await readModel(db.connectionString), { totals: [], log: [] }, 'rebuild emptied the read model (reset handler)');
  t.equal((await client.projections.lag('totals'))[0]?.pending, String(published.length), 'and everything is pending again');
  t.equal(await client.projections.catchUp('totals'), published.length, 'the rebuild applies every message');
  t.same(await readModel(db.connectionString), resumed, 'the killed-and-restarted read model equals the one rebuilt from scratch');
});

t.test('a failing handler rolls its batch back and records the error; fixed, the projection resumes', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, READ_MODEL);
  const client = await newClient(t, db.connectionString);
  await query(db.connectionString, `INSERT INTO public.poison VALUES ('order.poison')`);
  await client.projections.define('totals', ['orders.placed'], 'public.project_orders(jsonb)', { resetHandler: 'public.reset_orders()' });
  const ids = await client.publishMany([order(0), order(1), { ...order(2), type: 'order.poison' }, order(3)]);
  await settle(db.connectionString);
  const [poisoned] = await query<{ position: string }>(db.connectionString, 'SELECT position::text AS position FROM pgrelay.messages WHERE id = $1', [ids[2]]);

  t.equal(await client.projections.run('totals'), 0, 'a failing batch applies nothing');
  t.same(await readModel(db.connectionString), { totals: [], log: [] }, 'the messages before the failure were rolled back with it');
  const [state] = await query<{ applied: string; failed: string; cursor: string }>(
    db.connectionString,
    `SELECT applied_count::text AS applied, failed_position::text AS failed, cursor_position::text AS cursor FROM pgrelay.projections`,
  );
  t.same(state, { applied: '0', failed: poisoned!.position, cursor: '0' }, 'the checkpoint did not move; failed_position names the message');
  const [lag] = await client.projections.lag('totals');
  t.match(lag?.last_error ?? '', /poisoned message at/, 'lag shows the last error');
  t.equal(lag?.pending, '4');

  await query(db.connectionString, `DELETE FROM public.poison`);
  t.equal(await client.projections.catchUp('totals'), 4, 'fixed: every message is applied');
  t.equal((await client.projections.lag('totals'))[0]?.last_error, null, 'the error is cleared');
  t.equal((await readModel(db.connectionString)).log.length, 4, 'each once');
});

t.test("start latest skips messages already committed above a horizon held by an open transaction", async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, READ_MODEL);
  const client = await newClient(t, db.connectionString);
  const holder = await connect(t, db.connectionString, 'horizon-holder');
  await holder.query('BEGIN');
  await holder.query('SELECT pg_current_xact_id()'); // an xid older than what follows: holds the horizon
  await client.publishMany([order(0), order(1)]); // committed, but above the horizon
  await client.projections.define('recent', ['orders.placed'], 'public.project_orders', { start: 'latest', resetHandler: 'public.reset_orders' });
  await client.publish(order(2));
  await holder.query('COMMIT');
  await settle(db.connectionString);
  t.equal((await client.projections.lag('recent'))[0]?.pending, '1', 'lag counts only the message published after the definition');
  t.equal(await client.projections.catchUp('recent'), 1, 'only the message published after the definition is applied');
  t.same((await readModel(db.connectionString)).log.length, 1, 'orders 0 and 1 never reach the read model');
  const skips = await query(db.connectionString, `SELECT cardinality(skip_positions) AS n FROM pgrelay.projections WHERE name = 'recent'`);
  t.equal(Number(skips[0]?.n), 0, 'the skip list empties once the cursor has passed it');
  await client.projections.rebuild('recent');
  t.equal(await client.projections.catchUp('recent'), 3, 'a rebuild starts from the beginning and applies all three');
});

t.test('start latest, topic patterns, redefinition keeps the checkpoint, drop', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, READ_MODEL);
  const client = await newClient(t, db.connectionString);
  await client.publishMany([order(0), order(1)]);
  await settle(db.connectionString);
  await client.projections.define('recent', ['orders.placed'], 'public.project_orders', { start: 'latest' });
  await client.publishMany([order(2), { ...order(3), topic: 'orders.cancelled' }, { ...order(4), topic: 'payments' }]);
  await settle(db.connectionString);
  t.equal(await client.projections.catchUp('recent'), 1, "start 'latest' skips what was there; exact topics only match themselves");
  await client.projections.define('recent', ['orders.*'], 'public.project_orders', { start: 'earliest' });
  await client.publish(order(5));
  await settle(db.connectionString);
  // The checkpoint sits at order 2; orders.cancelled (same transaction, next position) and order 5
  // lie after it. Orders 0 and 1 lie before it and must not be applied: start applies on creation only.
  t.equal(await client.projections.catchUp('recent'), 2, 'redefining keeps the checkpoint; the new pattern applies to what follows it');
  t.same(
    (await readModel(db.connectionString)).totals.map((r) => r.customer),
    ['cy', 'dee', 'ann'].sort(),
    'orders 2, 3 (now matched) and 5 are in the read model, 0 and 1 are not',
  );
  t.same((await client.projections.lag()).map((l) => l.projection_name), ['recent'], 'lag() lists every projection');
  await client.projections.drop('recent');
  t.same(await client.projections.lag(), [], 'dropped');
  const gone = await failure(() => client.projections.run('recent'));
  t.ok(gone instanceof NotFoundError && gone.argument === 'name', 'running a dropped projection: NotFoundError naming name');
  t.equal((await readModel(db.connectionString)).log.length, 3, 'drop leaves the read model to its owner');
});

t.test('concurrent publishers and concurrent runs: every message applied once, in per-key order', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, READ_MODEL);
  const client = await newClient(t, db.connectionString);
  await client.projections.define('totals', ['orders.*'], 'public.project_orders');
  const publishers = await Promise.all(Array.from({ length: 4 }, () => newClient(t, db.connectionString, 1)));
  const runners = await Promise.all(Array.from({ length: 2 }, () => newClient(t, db.connectionString, 1)));
  let publishing = true;
  const applied: number[] = [];
  const runnerLoops = runners.map(async (runner) => {
    while (publishing) {
      applied.push(await runner.projections.run('totals', 5));
      await sleep(2);
    }
  });
  // At least 15 transactions each; more (up to 50, the key space) until a runner has applied a
  // batch, since on a loaded server other sessions can hold the horizon through the first 15.
  const deadline = Date.now() + 20_000;
  const keepPublishing = (i: number): boolean => i < 15 || (i < 50 && Date.now() < deadline && !applied.some((n) => n > 0));
  await Promise.all(
    publishers.map(async (publisher, p) => {
      for (let i = 0; keepPublishing(i); i += 1) {
        await publisher.transaction(async (tx) => {
          await tx.publish(order(p * 100 + i), { lockKey: true });
          await tx.connection.query(sql.unsafe`SELECT pg_sleep(${Math.random() * 0.01})`);
          await tx.publish(order(p * 100 + i + 50), { lockKey: true });
        });
      }
    }),
  );
  publishing = false;
  await Promise.all(runnerLoops);
  await settle(db.connectionString);
  await client.projections.catchUp('totals');
  const positions = (await query<{ position: string }>(db.connectionString, `SELECT position::text AS position FROM pgrelay.messages ORDER BY position`)).map((r) => r.position);
  t.same((await readModel(db.connectionString)).log, positions, 'every committed message was applied exactly once');
  const [lag] = await client.projections.lag('totals');
  t.same({ pending: lag?.pending, last_error: lag?.last_error, applied: lag?.applied }, { pending: '0', last_error: null, applied: String(positions.length) }, 'no handler error (the handler raises on per-key disorder)');
  t.ok(applied.some((n) => n > 0), 'the concurrent runners did apply batches while publishers ran');
});

t.test('bad inputs: clear SQLSTATEs naming the argument, nothing written', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, READ_MODEL);
  const client = await connect(t, db.connectionString);
  const pgrelay = await newClient(t, db.connectionString);
  await client.query(`SELECT pgrelay.projection_define('existing', '{orders.*}', 'public.project_orders(jsonb)')`);
  await client.query(`CREATE FUNCTION public.two_args(a jsonb, b jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$`);
  const snapshot = async () => query(db.connectionString, `SELECT name, topics, handler::text AS handler, cursor_position::text AS c, applied_count::text AS a FROM pgrelay.projections ORDER BY name`);
  const before = await snapshot();

  const DEFINE = 'pgrelay.projection_define';
  const define = `SELECT pgrelay.projection_define($1, $2::text[], $3::regprocedure, $4::regprocedure, $5)`;
  const args = (over: Partial<{ name: unknown; topics: unknown; handler: unknown; reset: unknown; start: unknown }>) => {
    const merged = { name: 'p', topics: ['orders.*'], handler: 'public.project_orders(jsonb)', reset: null, start: 'earliest', ...over };
    return [merged.name, merged.topics, merged.handler, merged.reset, merged.start];
  };
  const cases: Array<[string, string, unknown[], Expected, string?]> = [
    ['NULL name', define, args({ name: null }), { code: 'PR001', fn: DEFINE, argument: 'name' }],
    ['name with a space', define, args({ name: 'my projection' }), { code: 'PR001', fn: DEFINE, argument: 'name' }],
    ['NULL topics', define, args({ topics: null }), { code: 'PR001', fn: DEFINE, argument: 'topics' }],
    ['empty topics', define, args({ topics: [] }), { code: 'PR001', fn: DEFINE, argument: 'topics' }],
    ['a bad topic pattern', define, args({ topics: ['orders', 'bad topic'] }), { code: 'PR001', fn: DEFINE, argument: 'topics' }],
    ['NULL handler', define, args({ handler: null }), { code: 'PR001', fn: DEFINE, argument: 'handler' }],
    ['a handler taking no argument', define, args({ handler: 'public.reset_orders()' }), { code: 'PR001', fn: DEFINE, argument: 'handler' }],
    ['a handler taking two arguments', define, args({ handler: 'public.two_args(jsonb, jsonb)' }), { code: 'PR001', fn: DEFINE, argument: 'handler' }],
    ['a reset handler taking an argument', define, args({ reset: 'public.project_orders(jsonb)' }), { code: 'PR001', fn: DEFINE, argument: 'reset_handler' }],
    ["start 'middle'", define, args({ start: 'middle' }), { code: 'PR001', fn: DEFINE, argument: 'start' }],
    ['NULL start', define, args({ start: null }), { code: 'PR001', fn: DEFINE, argument: 'start' }],
    ['run: unknown projection', `SELECT pgrelay.projection_run($1, $2)`, ['nope', 10], { code: 'PR003', fn: 'pgrelay.projection_run', argument: 'name' }],
    ['run: NULL name', `SELECT pgrelay.projection_run($1, $2)`, [null, 10], { code: 'PR001', fn: 'pgrelay.projection_run', argument: 'name' }],
    ['run: max_messages 0', `SELECT pgrelay.projection_run($1, $2)`, ['existing', 0], { code: 'PR001', fn: 'pgrelay.projection_run', argument: 'max_messages' }],
    ['run: max_messages 100001', `SELECT pgrelay.projection_run($1, $2)`, ['existing', 100001], { code: 'PR001', fn: 'pgrelay.projection_run', argument: 'max_messages' }],
    ['run: NULL max_messages', `SELECT pgrelay.projection_run($1, $2)`, ['existing', null], { code: 'PR001', fn: 'pgrelay.projection_run', argument: 'max_messages' }],
    ['rebuild: unknown projection', `SELECT pgrelay.projection_rebuild($1)`, ['nope'], { code: 'PR003', fn: 'pgrelay.projection_rebuild', argument: 'name' }],
    ['rebuild: NULL name', `SELECT pgrelay.projection_rebuild($1)`, [null], { code: 'PR001', fn: 'pgrelay.projection_rebuild', argument: 'name' }],
    ['drop: unknown projection', `SELECT pgrelay.projection_drop($1)`, ['nope'], { code: 'PR003', fn: 'pgrelay.projection_drop', argument: 'name' }],
    [
      'drop: NULL name',
      `SELECT pgrelay.projection_drop($1)`,
      [null],
      { code: 'PR001', fn: 'pgrelay.projection_drop', argument: 'name' },
    ],
  ];
  for (const [label, text, params, expected, todo] of cases) await expectError(t, client, label, text, params, expected, todo);
  const missing = (await failure(() => client.query(define, args({ handler: 'public.no_such_handler(jsonb)' })))) as PgError;
  t.equal(missing.code, '42883', 'a handler that does not exist fails in the regprocedure cast with undefined_function (not XX000)');
  t.same(await snapshot(), before, 'no bad call changed a projection');
  t.equal(Number((await query<{ n: string }>(db.connectionString, 'SELECT count(*) AS n FROM public.order_log'))[0]!.n), 0, 'nor the read model');

  const badHandler = await failure(() => pgrelay.projections.define('p', ['orders.*'], 'public.reset_orders()'));
  t.ok(badHandler instanceof InvalidArgumentError && badHandler.argument === 'handler', 'client define with a bad handler: InvalidArgumentError naming handler');
  const badReset = await failure(() => pgrelay.projections.define('p', ['orders.*'], 'public.project_orders', { resetHandler: 'public.two_args(jsonb, jsonb)' }));
  t.ok(badReset instanceof InvalidArgumentError && badReset.argument === 'reset_handler', 'client define with a bad reset handler: InvalidArgumentError naming reset_handler');
  const unknown = await failure(() => pgrelay.projections.rebuild('nope'));
  t.ok(unknown instanceof NotFoundError && unknown.argument === 'name', 'client rebuild of an unknown projection: NotFoundError');
  const badMax = await failure(() => pgrelay.projections.run('existing', 0));
  t.ok(badMax instanceof InvalidArgumentError && badMax.argument === 'max_messages', 'client run with 0 messages: InvalidArgumentError');
  t.same(await snapshot(), before, 'still nothing written');
});
