// Inbox: effectively-once processing. pgrelay.inbox_receive records (consumer, message id) in the
// consumer's own transaction, so a redelivered message is a no-op atomically with the side
// effects; client.consume(..., { inbox: true }) does it for every message. Concurrent duplicates
// (separate connections) apply once; old records expire; bad arguments raise PR001 naming them.
import t, { type Test } from 'tap';
import pg from 'pg';
import { randomUUID } from 'node:crypto';
import { sql } from 'slonik';
import { z } from 'zod';
import { createClient, InvalidArgumentError, type InboxHandler, type PgrelayClient } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';

type Expected = { code: string; fn: string; argument: string };
type PgError = Error & { code?: string; column?: string };

async function connect(t: Test, connectionString: string, name = 'inbox-test'): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: name, connectionTimeoutMillis: 15_000 });
  client.on('error', () => {});
  await client.connect();
  await client.query(`SET statement_timeout = '30s'`);
  t.teardown(() => client.end().catch(() => {}));
  return client;
}

async function newClient(t: Test, connectionString: string, maximumPoolSize = 4): Promise<PgrelayClient> {
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
async function expectError(t: Test, client: pg.Client, label: string, text: string, params: unknown[], expected: Expected): Promise<void> {
  const error = (await failure(() => client.query(text, params))) as PgError | undefined;
  if (error === undefined) {
    t.fail(`${label}: succeeded, expected ${expected.code} naming ${expected.argument}`);
    return;
  }
  t.not(error.code, 'XX000', `${label}: not an internal error`);
  t.equal(error.code, expected.code, `${label}: SQLSTATE ${expected.code} (got ${error.code}: ${error.message})`);
  t.equal(error.column, expected.argument, `${label}: the COLUMN field names ${expected.argument}`);
  t.ok(
    error.message.startsWith(`${expected.fn}: argument ${expected.argument} `),
    `${label}: the message names the function and argument: ${JSON.stringify(error.message.slice(0, 160))}`,
  );
}

const count = async (connectionString: string, text: string, params: unknown[] = []): Promise<number> =>
  Number((await query<{ n: string }>(connectionString, text, params))[0]!.n);

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function waitForLockWait(connectionString: string, pid: number): Promise<void> {
  await waitFor(`backend ${pid} to wait on a lock`, async () => {
    const [row] = await query<{ w: string | null }>(connectionString, 'SELECT wait_event_type AS w FROM pg_stat_activity WHERE pid = $1', [pid]);
    return row?.w === 'Lock';
  });
}

const EFFECTS = `CREATE TABLE public.effects (id bigserial PRIMARY KEY, message_id uuid NOT NULL, note text)`;

t.test('inbox_receive: true the first time, false after, and only once committed', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);
  const id = randomUUID();
  t.equal(await client.inbox.receive('billing', id), true, 'first receipt: new');
  t.equal(await client.inbox.receive('billing', id), false, 'second receipt: a redelivery');
  t.equal(await client.inbox.receive('shipping', id), true, 'another consumer has its own inbox');

  const other = randomUUID();
  await t.rejects(
    client.transaction(async (tx) => {
      t.equal(await tx.inbox.receive('billing', other), true, 'new inside the transaction');
      throw new Error('side effects failed');
    }),
    { message: 'side effects failed' },
  );
  t.equal(await client.inbox.receive('billing', other), true, 'a rolled-back receipt is forgotten with its side effects');
  t.equal(await count(db.connectionString, 'SELECT count(*) AS n FROM pgrelay.inbox'), 3, 'three records');
});

t.test('concurrent duplicates on separate connections: the side effect happens once', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, EFFECTS);
  const a = await connect(t, db.connectionString, 'inbox-a');
  const b = await connect(t, db.connectionString, 'inbox-b');
  const bPid = (await b.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  const apply = async (client: pg.Client, id: string, note: string): Promise<boolean> => {
    const { rows } = await client.query<{ received: boolean }>(`SELECT pgrelay.inbox_receive('billing', $1) AS received`, [id]);
    if (rows[0]!.received) await client.query(`INSERT INTO public.effects (message_id, note) VALUES ($1, $2)`, [id, note]);
    return rows[0]!.received;
  };

  // A receives and holds its transaction; B's duplicate waits, then sees A's commit: a no-op.
  const first = randomUUID();
  await a.query('BEGIN');
  t.equal(await apply(a, first, 'a'), true, 'A: new');
  await b.query('BEGIN');
  const bDone = apply(b, first, 'b');
  await waitForLockWait(db.connectionString, bPid);
  t.pass('B waits on A’s uncommitted record');
  await a.query('COMMIT');
  t.equal(await bDone, false, 'after A commits, B gets false');
  await b.query('COMMIT');
  t.same(await query(db.connectionString, 'SELECT note FROM public.effects WHERE message_id = $1', [first]), [{ note: 'a' }], 'applied once, by A');

  // If A rolls back instead, B's duplicate becomes the first receipt.
  const second = randomUUID();
  await a.query('BEGIN');
  t.equal(await apply(a, second, 'a'), true, 'A: new');
  await b.query('BEGIN');
  const bSecond = apply(b, second, 'b');
  await waitForLockWait(db.connectionString, bPid);
  await a.query('ROLLBACK');
  t.equal(await bSecond, true, 'after A rolls back, B gets true');
  await b.query('COMMIT');
  t.same(await query(db.connectionString, 'SELECT note FROM public.effects WHERE message_id = $1', [second]), [{ note: 'b' }], 'applied once, by B');

  // Many clients racing on one message, each sleeping inside its transaction to force overlap.
  const racers = await Promise.all(Array.from({ length: 6 }, () => newClient(t, db.connectionString, 1)));
  const third = randomUUID();
  const outcomes = await Promise.all(
    racers.map((racer, i) =>
      racer.transaction(async (tx) => {
        const received = await tx.inbox.receive('billing', third);
        if (received) await tx.connection.query(sql.unsafe`INSERT INTO public.effects (message_id, note) VALUES (${third}, ${`racer-${i}`})`);
        await tx.connection.query(sql.unsafe`SELECT pg_sleep(0.05)`);
        return received;
      }),
    ),
  );
  t.equal(outcomes.filter(Boolean).length, 1, 'exactly one racer gets true');
  t.equal(await count(db.connectionString, 'SELECT count(*) AS n FROM public.effects WHERE message_id = $1', [third]), 1, 'the side effect happened once');
});

t.test('consume({ inbox: true }): a message delivered 5 times changes the table once', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, EFFECTS);
  const admin = await newClient(t, db.connectionString);
  const SUB = 'billing-consumer';
  await admin.subscriptions.subscribe(SUB, ['orders'], { type: 'consumer' }, {
    start: 'earliest',
    max_attempts: 10,
    backoff: { initial_ms: 10, max_ms: 50 },
  });
  const ids = await admin.publishMany([
    { topic: 'orders', key: 'o-1', type: 'order.placed', data: { amount: 10 } },
    { topic: 'orders', key: 'o-2', type: 'order.placed', data: { amount: 20 } },
    { topic: 'orders', key: 'o-1', type: 'order.paid', data: { amount: 10, failOnce: true } },
    { topic: 'orders', key: null, type: 'order.note', data: { amount: 0 } },
  ]);

  const consumerClient = await newClient(t, db.connectionString, 6);
  const invocations = new Map<string, number>();
  const deliveries = new Map<string, number>();
  const insideChecks: boolean[] = [];
  const handler: InboxHandler = async (message, delivery) => {
    invocations.set(message.id, (invocations.get(message.id) ?? 0) + 1);
    const amount = (message.data as { amount: number }).amount;
    await delivery.transaction.query(sql.unsafe`INSERT INTO public.effects (message_id, note) VALUES (${message.id}, ${String(amount)})`);
    const recorded = await delivery.transaction.oneFirst(sql.type(z.object({ n: z.number() }))`
      SELECT count(*)::int AS n FROM pgrelay.inbox WHERE consumer = ${SUB} AND message_id = ${message.id}`);
    insideChecks.push(recorded === 1);
    // The first attempt at this message fails after writing its side effect: both roll back.
    if ((message.data as { failOnce?: boolean }).failOnce && invocations.get(message.id) === 1) throw new Error('transient failure');
  };
  const consumer = await consumerClient.consume(SUB, handler, {
    inbox: true,
    idlePollMs: 50,
    onBatch: (outcome, batch) => {
      for (const delivery of batch) {
        if (outcome.acked.includes(delivery.message.position)) {
          deliveries.set(delivery.message.id, (deliveries.get(delivery.message.id) ?? 0) + 1);
        }
      }
    },
  });
  t.teardown(() => consumer.stop());
  const totalAcked = (): number => [...deliveries.values()].reduce((sum, n) => sum + n, 0);

  await waitFor('the first delivery of every message', () => ids.every((id) => (deliveries.get(id) ?? 0) >= 1));
  for (let replay = 1; replay <= 4; replay += 1) {
    const before = totalAcked();
    await admin.subscriptions.reset(SUB);
    await waitFor(`replay ${replay}`, () => ids.every((id) => (deliveries.get(id) ?? 0) >= replay + 1) && totalAcked() >= before + ids.length);
  }
  await consumer.stop();

  t.ok(ids.every((id) => (deliveries.get(id) ?? 0) >= 5), `every message was delivered (and acknowledged) at least 5 times: ${JSON.stringify([...deliveries.values()])}`);
  const effects = await query<{ message_id: string; n: string }>(db.connectionString, 'SELECT message_id, count(*)::text AS n FROM public.effects GROUP BY message_id ORDER BY message_id');
  t.same(effects, [...ids].sort().map((id) => ({ message_id: id, n: '1' })), 'the side-effect table changed exactly once per message');
  t.same(
    ids.map((id) => invocations.get(id)),
    [1, 1, 2, 1],
    'the handler ran once per message (twice for the one whose first attempt failed), never for a redelivery',
  );
  t.ok(insideChecks.length > 0 && insideChecks.every(Boolean), 'inside the handler the inbox record is visible in its transaction');
  t.equal(await count(db.connectionString, `SELECT count(*) AS n FROM pgrelay.inbox WHERE consumer = $1`, [SUB]), ids.length, 'one inbox record per message');
  t.equal(consumer.stats.failed, 1, 'the one failure was reported as a failed delivery');
  t.equal((await admin.subscriptions.deadLetters(SUB)).length, 0, 'nothing dead-lettered');
});

t.test('inbox_expire: retention by age, setting, batches', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);
  for (let i = 0; i < 5; i += 1) await client.inbox.receive('old', randomUUID());
  for (let i = 0; i < 3; i += 1) await client.inbox.receive('recent', randomUUID());
  await query(db.connectionString, `UPDATE pgrelay.inbox SET processed_at = now() - interval '10 days' WHERE consumer = 'old'`);
  await query(db.connectionString, `UPDATE pgrelay.inbox SET processed_at = now() - interval '2 hours' WHERE consumer = 'recent'`);

  t.equal(await client.inbox.expire({ batchSize: 2 }), '5', 'default retention (7 days) removes the old records, in batches of 2');
  t.equal(await client.inbox.expire(), '0', 'nothing more is older than 7 days');
  t.equal(await client.inbox.expire({ olderThan: '3 hours' }), '0', 'olderThan keeps younger records');
  await client.transaction(async (tx) => {
    await tx.connection.query(sql.unsafe`SET LOCAL pgrelay.inbox_retention = '1 hour'`);
    t.equal(await tx.inbox.expire(), '3', 'the pgrelay.inbox_retention setting is the default retention');
  });
  t.equal(await count(db.connectionString, 'SELECT count(*) AS n FROM pgrelay.inbox'), 0, 'all gone');
  const id = randomUUID();
  t.equal(await client.inbox.receive('c', id), true);
  t.equal(await client.inbox.expire({ olderThan: '1 hour' }), '0', 'a fresh record is kept');
  t.equal(await client.inbox.receive('c', id), false, 'and still makes its redelivery a no-op');
});

t.test('bad inputs: PR001 naming the argument, nothing written', async (t) => {
  const db = await freshDatabase(t);
  const client = await connect(t, db.connectionString);
  const pgrelay = await newClient(t, db.connectionString);
  const RECEIVE = 'pgrelay.inbox_receive';
  const EXPIRE = 'pgrelay.inbox_expire';
  const receive = `SELECT pgrelay.inbox_receive($1, $2::uuid)`;
  const id = randomUUID();
  const cases: Array<[string, string, unknown[], Expected]> = [
    ['NULL consumer', receive, [null, id], { code: 'PR001', fn: RECEIVE, argument: 'consumer' }],
    ['empty consumer', receive, ['', id], { code: 'PR001', fn: RECEIVE, argument: 'consumer' }],
    ['consumer with a space', receive, ['bill ing', id], { code: 'PR001', fn: RECEIVE, argument: 'consumer' }],
    ['201-character consumer', receive, ['c'.repeat(201), id], { code: 'PR001', fn: RECEIVE, argument: 'consumer' }],
    ['SQL injection in consumer', receive, ["x'); DELETE FROM pgrelay.inbox; --", id], { code: 'PR001', fn: RECEIVE, argument: 'consumer' }],
    ['NULL message_id', receive, ['billing', null], { code: 'PR001', fn: RECEIVE, argument: 'message_id' }],
    ['batch_size 0', `SELECT pgrelay.inbox_expire(NULL, 0)`, [], { code: 'PR001', fn: EXPIRE, argument: 'batch_size' }],
    ['NULL batch_size', `SELECT pgrelay.inbox_expire(NULL, NULL)`, [], { code: 'PR001', fn: EXPIRE, argument: 'batch_size' }],
    ['negative older_than', `SELECT pgrelay.inbox_expire('-1 day', 10)`, [], { code: 'PR001', fn: EXPIRE, argument: 'older_than' }],
  ];
  for (const [label, text, params, expected] of cases) await expectError(t, client, label, text, params, expected);
  const notUuid = (await failure(() => client.query(receive, ['billing', 'not-a-uuid']))) as PgError;
  t.equal(notUuid.code, '22P02', 'a message id that is not a uuid fails in the cast (invalid_text_representation), not XX000');
  t.equal(await count(db.connectionString, 'SELECT count(*) AS n FROM pgrelay.inbox'), 0, 'no bad call wrote anything');

  const mapped = await failure(() => pgrelay.inbox.receive('bad consumer', id));
  t.ok(mapped instanceof InvalidArgumentError, 'the client maps it to InvalidArgumentError');
  t.equal((mapped as InvalidArgumentError).argument, 'consumer');
  const expired = await failure(() => pgrelay.inbox.expire({ batchSize: 0 }));
  t.ok(expired instanceof InvalidArgumentError && expired.argument === 'batch_size', 'expire with batch size 0: InvalidArgumentError naming batch_size');
});
