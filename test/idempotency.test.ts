// Idempotency keys: begin → new / in_progress / completed (stored response) / mismatch (PR006);
// complete, abandon, lock takeover, expiry; and the client's idempotent(key, request, fn) helper,
// under real concurrency (separate pools, overlapping transactions): the work runs once and every
// caller gets the stored response. Bad arguments raise pgrelay SQLSTATEs naming them.
import t, { type Test } from 'tap';
import pg from 'pg';
import { sql } from 'slonik';
import { z, ZodError } from 'zod';
import {
  createClient,
  IdempotencyConflictError,
  IdempotencyInProgressError,
  InvalidArgumentError,
  InvalidStateError,
  NotFoundError,
  requestFingerprint,
  stableStringify,
  type PgrelayClient,
} from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';

type Expected = { code: string; fn: string; argument: string };
type PgError = Error & { code?: string; column?: string };

async function connect(t: Test, connectionString: string, name = 'idempotency-test'): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: name, connectionTimeoutMillis: 15_000 });
  client.on('error', () => {});
  await client.connect();
  await client.query(`SET statement_timeout = '30s'`);
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

const count = async (connectionString: string, text: string, params: unknown[] = []): Promise<number> =>
  Number((await query<{ n: string }>(connectionString, text, params))[0]!.n);

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitForLockWait(connectionString: string, pid: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const [row] = await query<{ w: string | null }>(connectionString, 'SELECT wait_event_type AS w FROM pg_stat_activity WHERE pid = $1', [pid]);
    if (row?.w === 'Lock') return;
    if (Date.now() > deadline) throw new Error(`backend ${pid} never waited on a lock`);
    await sleep(10);
  }
}

t.test('stable fingerprints', async (t) => {
  t.equal(stableStringify({ b: 1, a: { d: [1, { z: 1, y: 2 }], c: null } }), '{"a":{"c":null,"d":[1,{"y":2,"z":1}]},"b":1}', 'keys sorted at every depth');
  t.equal(requestFingerprint({ a: 1, b: 2 }), requestFingerprint({ b: 2, a: 1 }), 'key order does not matter');
  t.not(requestFingerprint({ a: 1 }), requestFingerprint({ a: '1' }), 'types do');
  t.not(requestFingerprint([1, 2]), requestFingerprint([2, 1]), 'array order does');
  t.equal(stableStringify({ a: undefined, b: [undefined], c: new Date('2024-01-02T03:04:05.000Z') }), '{"b":[null],"c":"2024-01-02T03:04:05.000Z"}', 'JSON.stringify rules for undefined and toJSON');
  t.match(requestFingerprint('x'), /^[0-9a-f]{64}$/, 'sha256 hex');
  t.throws(() => stableStringify({ n: 1n }), TypeError, 'bigint is refused');
});

t.test('idempotency_begin / complete / abandon: the lifecycle', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);
  const keys = client.idempotency;

  t.same(await keys.begin('pay-1', 'fp-1'), { status: 'new', response: null }, 'first begin: new');
  t.same(await keys.begin('pay-1', 'fp-1'), { status: 'in_progress', response: null }, 'a duplicate while the owner works: in_progress');
  const mismatch = await failure(() => keys.begin('pay-1', 'fp-other'));
  t.ok(mismatch instanceof IdempotencyConflictError, `same key, another request: IdempotencyConflictError (got ${String(mismatch)})`);
  t.equal((mismatch as IdempotencyConflictError).sqlState, 'PR006');
  t.equal((mismatch as IdempotencyConflictError).argument, 'key');
  await keys.complete('pay-1', { charge: 'ch_1', amount: 10 });
  t.same(await keys.begin('pay-1', 'fp-1'), { status: 'completed', response: { charge: 'ch_1', amount: 10 } }, 'after complete: the stored response');
  t.ok((await failure(() => keys.begin('pay-1', 'fp-other'))) instanceof IdempotencyConflictError, 'a completed key still refuses another request');
  t.same(await keys.begin('pay-1', 'fp-1', { scope: 'other-api' }), { status: 'new', response: null }, 'keys are per scope');
  t.equal(await keys.abandon('pay-1'), false, 'abandon leaves a completed key');
  t.same((await keys.begin('pay-1', 'fp-1')).status, 'completed');

  t.equal((await keys.begin('pay-2', 'fp-2')).status, 'new');
  t.equal(await keys.abandon('pay-2'), true, 'abandon forgets an in-progress key');
  t.equal((await keys.begin('pay-2', 'fp-2')).status, 'new', 'so the request can be retried');
  t.equal((await keys.begin('pay-2', 'fp-2b').catch((e: unknown) => e)) instanceof IdempotencyConflictError, true, 'the new owner’s fingerprint is binding');
  await keys.complete('pay-2', null);
  t.same(await keys.begin('pay-2', 'fp-2'), { status: 'completed', response: null }, 'a JSON null response');
  t.equal(await keys.abandon('never-seen'), false, 'abandoning an unknown key: false');

  // An owner that does not complete within lock_seconds loses the key to the next caller.
  t.equal((await keys.begin('pay-3', 'fp-3', { lockSeconds: 1 })).status, 'new');
  t.equal((await keys.begin('pay-3', 'fp-3', { lockSeconds: 1 })).status, 'in_progress');
  await sleep(1100);
  t.equal((await keys.begin('pay-3', 'fp-3', { lockSeconds: 30 })).status, 'new', 'after the lock expired: taken over');
  t.equal((await keys.begin('pay-3', 'fp-3')).status, 'in_progress', 'and the new owner holds it');

  // Keys live for ttl after creation.
  t.equal((await keys.begin('short', 'fp', { ttl: '10 milliseconds' })).status, 'new');
  await keys.complete('short', { first: true });
  await keys.begin('short-2', 'fp', { ttl: '10 milliseconds' });
  await sleep(50);
  t.same(await keys.begin('short', 'fp'), { status: 'new', response: null }, 'an expired key is forgotten: the request is new again');
  t.equal(await keys.expire(), '1', 'idempotency_expire deletes the other expired key');
  t.equal(await count(db.connectionString, `SELECT count(*) AS n FROM pgrelay.idempotency_keys WHERE key = 'short-2'`), 0);
  t.equal(await count(db.connectionString, `SELECT count(*) AS n FROM pgrelay.idempotency_keys`), 5, 'unexpired keys are kept');
});

t.test('two sessions: a concurrent begin waits for the first and never gets new', async (t) => {
  const db = await freshDatabase(t);
  const a = await connect(t, db.connectionString, 'idem-a');
  const b = await connect(t, db.connectionString, 'idem-b');
  const bPid = (await b.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  const begin = `SELECT status, response FROM pgrelay.idempotency_begin($1, $2)`;

  await a.query('BEGIN');
  t.same((await a.query(begin, ['k-1', 'fp'])).rows, [{ status: 'new', response: null }], 'A: new (uncommitted)');
  const bBegin = b.query(begin, ['k-1', 'fp']);
  await waitForLockWait(db.connectionString, bPid);
  t.pass('B waits on A’s uncommitted key');
  await a.query('COMMIT');
  t.same((await bBegin).rows, [{ status: 'in_progress', response: null }], 'after A commits, B: in_progress');
  await a.query(`SELECT pgrelay.idempotency_complete('k-1', '{"ok":1}')`);
  t.same((await b.query(begin, ['k-1', 'fp'])).rows, [{ status: 'completed', response: { ok: 1 } }], 'after A completes, B: completed with the response');

  await a.query('BEGIN');
  t.equal((await a.query(begin, ['k-2', 'fp'])).rows[0].status, 'new');
  const bSecond = b.query(begin, ['k-2', 'fp']);
  await waitForLockWait(db.connectionString, bPid);
  await a.query('ROLLBACK');
  t.equal((await bSecond).rows[0].status, 'new', 'if A rolls back, B owns the key');

  // Complete racing with complete: exactly one succeeds, the other gets PR007.
  await a.query('BEGIN');
  await a.query(`SELECT pgrelay.idempotency_complete('k-2', '"a"')`);
  const bComplete = failure(() => b.query(`SELECT pgrelay.idempotency_complete('k-2', '"b"')`));
  await waitForLockWait(db.connectionString, bPid);
  await a.query('COMMIT');
  t.equal(((await bComplete) as PgError | undefined)?.code, 'PR007', 'the second complete fails with PR007 (invalid state)');
  t.same((await b.query(begin, ['k-2', 'fp'])).rows[0].response, 'a', 'the first response stands');
});

t.test('idempotent(): concurrent duplicates run the work once and all get the stored response', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, `CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer text, total numeric)`);
  const callers = await Promise.all(Array.from({ length: 6 }, () => newClient(t, db.connectionString, 2)));
  let runs = 0;
  const placeOrder = (client: PgrelayClient, request: { customer: string; total: number }) => async () => {
    runs += 1;
    const id = await client.transaction(async (tx) => {
      const inserted = await tx.connection.oneFirst(sql.type(z.object({ id: z.string() }))`
        INSERT INTO public.orders (customer, total) VALUES (${request.customer}, ${request.total}) RETURNING id::text AS id`);
      await tx.connection.query(sql.unsafe`SELECT pg_sleep(0.3)`); // the work takes a while: duplicates pile up
      return inserted;
    });
    return { orderId: id, total: request.total, at: new Date('2024-05-01T00:00:00Z') };
  };
  // The same request, with its keys in different orders.
  const requests = callers.map((_, i) => (i % 2 === 0 ? { customer: 'ann', total: 42 } : { total: 42, customer: 'ann' }));
  const results = await Promise.all(callers.map((client, i) => client.idempotent('order-1', requests[i], placeOrder(client, requests[i]!), { pollMs: 10 })));
  t.equal(runs, 1, 'the work ran once');
  t.equal(await count(db.connectionString, 'SELECT count(*) AS n FROM public.orders'), 1, 'one order was written');
  const stored = { orderId: '1', total: 42, at: '2024-05-01T00:00:00.000Z' };
  const owner = results.filter((r) => r.at instanceof Date);
  t.equal(owner.length, 1, 'the owner got its own return value');
  t.same(owner.map((r) => ({ ...r, at: (r.at as Date).toISOString() })), [stored], 'which equals the stored response');
  t.same(results.filter((r) => !(r.at instanceof Date)), Array.from({ length: 5 }, () => stored), 'every duplicate got the stored response');

  const later = await callers[0]!.idempotent('order-1', requests[0], async () => {
    runs += 1;
    return { orderId: 'never' };
  });
  t.same(later, stored, 'a later duplicate gets the stored response without running the work');
  t.equal(runs, 1);

  const conflict = await failure(() => callers[0]!.idempotent('order-1', { customer: 'bob', total: 42 }, async () => 'never'));
  t.ok(conflict instanceof IdempotencyConflictError, 'the same key for another request: IdempotencyConflictError');
  t.equal((conflict as IdempotencyConflictError).argument, 'key');

  const validated = await callers[1]!.idempotent('order-1', requests[1], async () => stored, {
    schema: z.object({ orderId: z.string(), total: z.number(), at: z.string().datetime() }),
  });
  t.same(validated, stored, 'a schema validates the stored response');
  const invalid = await failure(() => callers[1]!.idempotent<unknown>('order-1', requests[1], async () => stored, { schema: z.object({ orderId: z.number() }) }));
  t.ok(invalid instanceof ZodError, 'a stored response that does not match the schema throws');
});

t.test('idempotent(): failures abandon the key, waiting duplicates take over, timeouts', async (t) => {
  const db = await freshDatabase(t);
  const [a, b] = await Promise.all([newClient(t, db.connectionString), newClient(t, db.connectionString)]);
  let runs = 0;

  const thrown = await failure(() =>
    a.idempotent('refund-1', { id: 1 }, async () => {
      runs += 1;
      throw new Error('payment provider down');
    }),
  );
  t.equal((thrown as Error).message, 'payment provider down', 'the error is rethrown');
  t.equal(await count(db.connectionString, `SELECT count(*) AS n FROM pgrelay.idempotency_keys`), 0, 'the key was abandoned');
  t.equal(await a.idempotent('refund-1', { id: 1 }, async () => ++runs), 2, 'a retry runs the work again');
  t.equal(await b.idempotent('refund-1', { id: 1 }, async () => ++runs), 2, 'then it is stored');

  // The owner fails while a duplicate waits: the duplicate takes the key over and does the work.
  const owner = failure(() =>
    a.idempotent('refund-2', { id: 2 }, async () => {
      await sleep(300);
      throw new Error('owner failed');
    }),
  );
  await sleep(50);
  const duplicate = b.idempotent('refund-2', { id: 2 }, async () => 'done by the duplicate', { pollMs: 10 });
  t.equal(((await owner) as Error).message, 'owner failed');
  t.equal(await duplicate, 'done by the duplicate', 'the waiting duplicate ran the work after the owner abandoned it');

  // An owner that holds the key beyond the duplicate's patience.
  await a.idempotency.begin('refund-3', requestFingerprint({ id: 3 }), { lockSeconds: 60 });
  const started = Date.now();
  const timeout = await failure(() => b.idempotent('refund-3', { id: 3 }, async () => 'never', { timeoutMs: 200, pollMs: 10 }));
  t.ok(timeout instanceof IdempotencyInProgressError, `still in progress after the timeout: IdempotencyInProgressError (got ${String(timeout)})`);
  t.ok(timeout instanceof InvalidStateError, 'which is an InvalidStateError');
  t.equal((timeout as IdempotencyInProgressError).argument, 'key');
  t.ok(Date.now() - started >= 190, 'it waited for the timeout');

  // An owner that went away: its lock expires and a waiting duplicate takes over.
  await a.idempotency.begin('refund-4', requestFingerprint({ id: 4 }), { lockSeconds: 1 });
  t.equal(await b.idempotent('refund-4', { id: 4 }, async () => 'taken over', { timeoutMs: 5_000, maxPollMs: 100 }), 'taken over', 'after lock_seconds the duplicate runs the work');
  t.same((await a.idempotency.begin('refund-4', requestFingerprint({ id: 4 }))).response, 'taken over');

  t.equal(await a.idempotent('undefined-result', {}, async () => undefined), undefined, 'an undefined result');
  t.equal(await b.idempotent('undefined-result', {}, async () => 'never'), null, 'is stored as JSON null');
});

t.test('bad inputs: clear SQLSTATEs naming the argument, nothing written', async (t) => {
  const db = await freshDatabase(t);
  const client = await connect(t, db.connectionString);
  const pgrelay = await newClient(t, db.connectionString);
  await client.query(`SELECT pgrelay.idempotency_begin('done', 'fp')`);
  await client.query(`SELECT pgrelay.idempotency_complete('done', '1')`);
  await client.query(`SELECT pgrelay.idempotency_begin('working', 'fp')`);
  const snapshot = async () => query(db.connectionString, `SELECT scope, key, fingerprint, status, response FROM pgrelay.idempotency_keys ORDER BY scope, key`);
  const before = await snapshot();

  const BEGIN = 'pgrelay.idempotency_begin';
  const begin = `SELECT * FROM pgrelay.idempotency_begin($1, $2, $3, $4::int, $5::interval)`;
  const args = (over: Partial<{ key: unknown; fingerprint: unknown; scope: unknown; lock: unknown; ttl: unknown }>) => {
    const merged = { key: 'k', fingerprint: 'fp', scope: 'default', lock: 60, ttl: '1 day', ...over };
    return [merged.key, merged.fingerprint, merged.scope, merged.lock, merged.ttl];
  };
  const cases: Array<[string, unknown[], Expected]> = [
    ['NULL key', args({ key: null }), { code: 'PR001', fn: BEGIN, argument: 'key' }],
    ['empty key', args({ key: '' }), { code: 'PR001', fn: BEGIN, argument: 'key' }],
    ['256-character key', args({ key: 'k'.repeat(256) }), { code: 'PR001', fn: BEGIN, argument: 'key' }],
    ['NULL fingerprint', args({ fingerprint: null }), { code: 'PR001', fn: BEGIN, argument: 'fingerprint' }],
    ['empty fingerprint', args({ fingerprint: '' }), { code: 'PR001', fn: BEGIN, argument: 'fingerprint' }],
    ['1001-character fingerprint', args({ fingerprint: 'f'.repeat(1001) }), { code: 'PR001', fn: BEGIN, argument: 'fingerprint' }],
    ['NULL scope', args({ scope: null }), { code: 'PR001', fn: BEGIN, argument: 'scope' }],
    ['scope with a space', args({ scope: 'my api' }), { code: 'PR001', fn: BEGIN, argument: 'scope' }],
    ['lock_seconds 0', args({ lock: 0 }), { code: 'PR001', fn: BEGIN, argument: 'lock_seconds' }],
    ['lock_seconds 86401', args({ lock: 86401 }), { code: 'PR001', fn: BEGIN, argument: 'lock_seconds' }],
    ['NULL lock_seconds', args({ lock: null }), { code: 'PR001', fn: BEGIN, argument: 'lock_seconds' }],
    ['zero ttl', args({ ttl: '0' }), { code: 'PR001', fn: BEGIN, argument: 'ttl' }],
    ['negative ttl', args({ ttl: '-1 hour' }), { code: 'PR001', fn: BEGIN, argument: 'ttl' }],
    ['NULL ttl', args({ ttl: null }), { code: 'PR001', fn: BEGIN, argument: 'ttl' }],
    ['a completed key with another fingerprint', args({ key: 'done', fingerprint: 'other' }), { code: 'PR006', fn: BEGIN, argument: 'key' }],
    ['an in-progress key with another fingerprint', args({ key: 'working', fingerprint: 'other' }), { code: 'PR006', fn: BEGIN, argument: 'key' }],
  ];
  for (const [label, params, expected] of cases) await expectError(t, client, label, begin, params, expected);

  const COMPLETE = 'pgrelay.idempotency_complete';
  const complete = `SELECT pgrelay.idempotency_complete($1, $2::jsonb, $3)`;
  await expectError(t, client, 'complete: NULL response', complete, ['working', null, 'default'], { code: 'PR001', fn: COMPLETE, argument: 'response' });
  await expectError(t, client, 'complete: unknown key', complete, ['nope', '1', 'default'], { code: 'PR003', fn: COMPLETE, argument: 'key' });
  await expectError(t, client, 'complete: a key of another scope', complete, ['working', '1', 'other'], { code: 'PR003', fn: COMPLETE, argument: 'key' });
  await expectError(t, client, 'complete: already completed', complete, ['done', '2', 'default'], { code: 'PR007', fn: COMPLETE, argument: 'key' });
  await expectError(t, client, 'complete: NULL key', complete, [null, '1', 'default'], { code: 'PR001', fn: COMPLETE, argument: 'key' });
  await expectError(t, client, 'abandon: NULL key', `SELECT pgrelay.idempotency_abandon($1)`, [null], { code: 'PR001', fn: 'pgrelay.idempotency_abandon', argument: 'key' });
  const unknownAbandon = (await client.query(`SELECT pgrelay.idempotency_abandon('never-seen') AS r`)).rows[0].r as boolean | null;
  t.equal(unknownAbandon, false, 'abandon of an unknown key returns false');
  t.same(await snapshot(), before, 'no bad call changed a key');

  // Through the client.
  const nullKey = await failure(() => pgrelay.idempotency.begin(null as unknown as string, 'fp'));
  t.ok(nullKey instanceof InvalidArgumentError && nullKey.argument === 'key', 'begin with a null key: InvalidArgumentError naming key');
  const helperNullKey = await failure(() => pgrelay.idempotent(null as unknown as string, {}, async () => 1));
  t.ok(helperNullKey instanceof InvalidArgumentError && helperNullKey.argument === 'key', 'idempotent() with a null key: InvalidArgumentError, fn not run');
  const unknown = await failure(() => pgrelay.idempotency.complete('nope', 1));
  t.ok(unknown instanceof NotFoundError && unknown.argument === 'key', 'complete of an unknown key: NotFoundError naming key');
  const twice = await failure(() => pgrelay.idempotency.complete('done', 1));
  t.ok(twice instanceof InvalidStateError && twice.argument === 'key', 'complete twice: InvalidStateError naming key');
  const badLock = await failure(() => pgrelay.idempotency.begin('k', 'fp', { lockSeconds: 0 }));
  t.ok(badLock instanceof InvalidArgumentError && badLock.argument === 'lock_seconds', 'lockSeconds 0: InvalidArgumentError naming lock_seconds');
  t.same(await snapshot(), before, 'still nothing written');
});
