// Event store: streams with optimistic concurrency (expected_version), gapless versions, reads,
// SQL folds with snapshots, and the TypeScript side (defineEvent, aggregate, ConcurrencyError).
// Races use separate connections and clients; every bad argument raises a pgrelay SQLSTATE naming
// the argument, never XX000, and writes nothing.
import t, { type Test } from 'tap';
import pg from 'pg';
import { sql } from 'slonik';
import { z, ZodError } from 'zod';
import {
  aggregate,
  ConcurrencyError,
  createClient,
  defineEvent,
  InvalidArgumentError,
  START,
  type PgrelayClient,
  type StreamEvent,
} from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';

type Expected = { code: string; fn: string; argument: string };
type PgError = Error & { code?: string; column?: string };

async function connect(t: Test, connectionString: string, name = 'event-store-test'): Promise<pg.Client> {
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
  if (error === undefined) {
    t.fail(`${label}: succeeded, expected ${expected.code} naming ${expected.argument}`, todo ? { todo } : {});
    return;
  }
  const extra = todo ? { todo } : {};
  t.not(error.code, 'XX000', `${label}: not an internal error`);
  t.equal(error.code, expected.code, `${label}: SQLSTATE ${expected.code} (got ${error.code}: ${error.message})`, extra);
  t.equal(error.column, expected.argument, `${label}: the COLUMN field names ${expected.argument}`, extra);
  t.ok(
    error.message.startsWith(`${expected.fn}: argument ${expected.argument} `),
    `${label}: the message names the function and argument: ${JSON.stringify(error.message.slice(0, 160))}`,
    extra,
  );
}

const count = async (connectionString: string, text: string): Promise<number> =>
  Number((await query<{ n: string }>(connectionString, text))[0]!.n);

/** Waits until every transaction that was running has ended (so reads see everything committed). */
async function settle(connectionString: string): Promise<void> {
  const [row] = await query<{ w: string }>(connectionString, 'SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS w');
  const deadline = Date.now() + 30_000;
  while (!(await query<{ ok: boolean }>(connectionString, 'SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::xid8 AS ok', [row!.w]))[0]!.ok) {
    if (Date.now() > deadline) throw new Error('the horizon did not pass');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const ev = (type: string, data: unknown = {}) => ({ type, data });
const TOPIC = 'accounts';

/** Waits until backend pid is blocked on a lock (so the interleaving is the one the test wants). */
async function waitForLockWait(connectionString: string, pid: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const [row] = await query<{ w: string | null }>(connectionString, 'SELECT wait_event_type AS w FROM pg_stat_activity WHERE pid = $1', [pid]);
    if (row?.w === 'Lock') return;
    if (Date.now() > deadline) throw new Error(`backend ${pid} never waited on a lock`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

t.test('append: expected versions any / no_stream / exact, gapless versions, ordinary log messages', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);

  t.equal(await client.streams.version(TOPIC, 'a-1'), '0', 'an unknown stream is at version 0');
  t.equal(await client.streams.last(TOPIC, 'a-1'), null, 'an unknown stream has no last event');
  t.same(await client.streams.read(TOPIC, 'a-1'), [], 'an unknown stream reads empty');

  t.equal(await client.streams.append(TOPIC, 'a-1', [ev('opened', { owner: 'ann' }), ev('deposited', { amount: 10 })], { expectedVersion: 'no_stream' }), '2', 'no_stream: a new stream, returns the new version');
  t.equal(await client.streams.append(TOPIC, 'a-1', [ev('deposited', { amount: 5 })], { expectedVersion: 2 }), '3', 'exact version (number)');
  t.equal(await client.streams.append(TOPIC, 'a-1', [ev('deposited', { amount: 1 })], { expectedVersion: 3n }), '4', 'exact version (bigint)');
  t.equal(await client.streams.append(TOPIC, 'a-1', [ev('withdrawn', { amount: 2 })], { expectedVersion: '4' }), '5', 'exact version (string)');
  t.equal(await client.streams.append(TOPIC, 'a-1', [ev('deposited', { amount: 7 })]), '6', 'no expected version: any');
  t.equal(await client.streams.append(TOPIC, 'a-1', [ev('deposited', { amount: 7 })], { expectedVersion: 'any' }), '7', "'any'");
  t.equal(await client.streams.append(TOPIC, 'a-2', [ev('opened', { owner: 'bob' })], { expectedVersion: 0 }), '1', 'expected version 0 is no_stream');

  const conflict = await failure(() => client.streams.append(TOPIC, 'a-1', [ev('deposited')], { expectedVersion: 'no_stream' }));
  t.ok(conflict instanceof ConcurrencyError, `no_stream on an existing stream: ConcurrencyError (got ${String(conflict)})`);
  t.equal((conflict as ConcurrencyError).sqlState, 'PR004');
  t.equal((conflict as ConcurrencyError).argument, 'expected_version');
  const stale = await failure(() => client.streams.append(TOPIC, 'a-1', [ev('deposited')], { expectedVersion: 6 }));
  t.ok(stale instanceof ConcurrencyError, 'a stale exact version: ConcurrencyError');
  t.match((stale as Error).message, /expected_version 6 does not match stream accounts\/a-1 at version 7/, 'the message says where the stream is');
  const ahead = await failure(() => client.streams.append(TOPIC, 'a-1', [ev('deposited')], { expectedVersion: 8 }));
  t.ok(ahead instanceof ConcurrencyError, 'a version ahead of the stream: ConcurrencyError');
  t.equal(await client.streams.version(TOPIC, 'a-1'), '7', 'failed appends wrote nothing');

  // A rolled-back append leaves no gap.
  await t.rejects(
    client.transaction(async (tx) => {
      await tx.streams.append(TOPIC, 'a-1', [ev('deposited'), ev('deposited')], { expectedVersion: 7 });
      throw new Error('abort');
    }),
    { message: 'abort' },
  );
  t.equal(await client.streams.append(TOPIC, 'a-1', [ev('closed')], { expectedVersion: 7 }), '8', 'after a rollback the next version follows without a gap');

  const events = await client.streams.read(TOPIC, 'a-1');
  t.same(events.map((e) => e.version), ['1', '2', '3', '4', '5', '6', '7', '8'], 'versions 1..8, no gaps');
  t.same(events.map((e) => e.type), ['opened', 'deposited', 'deposited', 'deposited', 'withdrawn', 'deposited', 'deposited', 'closed']);
  t.same(events[0]!.data, { owner: 'ann' }, 'data round-trips');
  t.same(events[0]!.metadata, {}, 'metadata defaults to {}');
  t.ok(events.every((e, i) => i === 0 || BigInt(e.position) > BigInt(events[i - 1]!.position)), 'position order is version order');
  t.same((await client.streams.read(TOPIC, 'a-1', { fromVersion: 3, maxCount: 2 })).map((e) => e.version), ['3', '4'], 'read from a version, at most maxCount');
  t.same(await client.streams.read(TOPIC, 'a-1', { fromVersion: 9 }), [], 'reading past the end is empty');
  const last = await client.streams.last(TOPIC, 'a-1');
  t.equal(last?.version, '8', 'last() is the last event');
  t.equal(last?.type, 'closed');
  t.equal(await client.streams.version(TOPIC, 'a-1'), '8');

  await client.streams.append(TOPIC, 'a-3', [{ type: 'opened', data: null, metadata: { trace: 't-1' } }]);
  t.same((await client.streams.last(TOPIC, 'a-3'))?.metadata, { trace: 't-1' }, 'metadata is stored');

  // Appended events are ordinary log messages: they are read (and delivered) like any publish.
  await client.publish({ topic: TOPIC, key: 'a-1', type: 'plain', data: {} });
  t.equal(await client.streams.version(TOPIC, 'a-1'), '8', 'a plain publish on the same (topic, key) is not a stream event');
  await settle(db.connectionString);
  const { messages } = await client.read(START, { maxMessages: 100, topics: [TOPIC] });
  t.equal(messages.length, 11, 'every event is in the message log (plus the plain publish)');
  t.same(
    messages.filter((m) => m.key === 'a-1' && m.type !== 'plain').map((m) => m.id),
    events.map((e) => e.id),
    'with the same ids, in version order',
  );
  const rows = await query<{ v: string | null }>(db.connectionString, `SELECT stream_version::text AS v FROM pgrelay.messages WHERE key = 'a-1' ORDER BY position`);
  t.same(rows.map((r) => r.v), ['1', '2', '3', '4', '5', '6', '7', '8', null], 'stream_version is set on events only');
});

t.test('two writers racing at the same expected version: exactly one wins, the other gets ConcurrencyError', async (t) => {
  const db = await freshDatabase(t);
  const a = await connect(t, db.connectionString, 'writer-a');
  const b = await connect(t, db.connectionString, 'writer-b');
  await a.query(`SELECT pgrelay.stream_append('accounts', 'r-1', '[{"type":"opened","data":{}}]', 0)`);

  // Deterministic interleaving: A appends at version 1 and holds its transaction open; B appends at
  // version 1 too and must wait for A; A commits; B must see version 2 and fail.
  await a.query('BEGIN');
  t.same((await a.query(`SELECT pgrelay.stream_append('accounts', 'r-1', '[{"type":"a","data":{}}]', 1) AS v`)).rows, [{ v: '2' }], 'A appends at 1 → 2');
  const bPid = (await b.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  const bAppend = failure(() => b.query(`SELECT pgrelay.stream_append('accounts', 'r-1', '[{"type":"b","data":{}}]', 1) AS v`));
  await waitForLockWait(db.connectionString, bPid);
  t.pass('B waits for A (appends to one stream are serialised)');
  await a.query('COMMIT');
  const bError = (await bAppend) as PgError | undefined;
  t.equal(bError?.code, 'PR004', `B fails with PR004 (got ${bError?.code}: ${bError?.message})`);
  t.equal(bError?.column, 'expected_version', 'naming expected_version');
  t.same((await a.query(`SELECT type FROM pgrelay.stream_read('accounts', 'r-1')`)).rows.map((r) => r.type), ['opened', 'a'], 'only the winner was written');

  // The same through the client: writers on separate pools race, each holding its transaction
  // open a little after appending so that the others pile up behind it.
  const writers = await Promise.all(Array.from({ length: 5 }, () => newClient(t, db.connectionString, 2)));
  for (let round = 0; round < 10; round += 1) {
    const version = await writers[0]!.streams.version(TOPIC, 'r-1');
    const outcomes = await Promise.allSettled(
      writers.map((writer, i) =>
        writer.transaction(async (tx) => {
          const next = await tx.streams.append(TOPIC, 'r-1', [ev('raced', { round, writer: i })], { expectedVersion: version });
          await tx.connection.query(sql.unsafe`SELECT pg_sleep(0.02)`);
          return next;
        }),
      ),
    );
    const won = outcomes.filter((o) => o.status === 'fulfilled');
    const lost = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
    t.equal(won.length, 1, `round ${round}: exactly one writer wins`);
    t.ok(lost.every((o) => o.reason instanceof ConcurrencyError), `round ${round}: the others get ConcurrencyError (${lost.map((o) => String(o.reason)).join('; ')})`);
    t.equal(await writers[0]!.streams.version(TOPIC, 'r-1'), String(BigInt(version) + 1n), `round ${round}: the stream moved by one`);
  }

  // A brand-new stream raced with no_stream: one creates it.
  const created = await Promise.allSettled(writers.map((writer, i) => writer.streams.append(TOPIC, 'r-new', [ev('opened', { writer: i })], { expectedVersion: 'no_stream' })));
  t.equal(created.filter((o) => o.status === 'fulfilled').length, 1, 'no_stream race: exactly one creates the stream');
  t.ok(
    created.every((o) => o.status === 'fulfilled' || o.reason instanceof ConcurrencyError),
    'no_stream race: the others get ConcurrencyError',
  );
  t.equal(await count(db.connectionString, `SELECT count(*) AS n FROM pgrelay.messages WHERE key = 'r-new'`), 1, 'one event written');
});

t.test('REPEATABLE READ writers: a stale snapshot still gets PR004, never a unique violation', async (t) => {
  const db = await freshDatabase(t);
  const a = await connect(t, db.connectionString, 'rr-a');
  const b = await connect(t, db.connectionString, 'rr-b');
  await b.query(`SELECT pgrelay.stream_append('accounts', 'rr', '[{"type":"opened","data":{}}]', 0)`);
  for (const expected of ['1', null]) {
    await a.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    await a.query('SELECT count(*) FROM pgrelay.messages'); // takes the snapshot
    const before = (await b.query(`SELECT pgrelay.stream_version('accounts', 'rr') AS v`)).rows[0].v as string;
    await b.query(`SELECT pgrelay.stream_append('accounts', 'rr', '[{"type":"b","data":{}}]', NULL)`);
    const error = (await failure(() => a.query(`SELECT pgrelay.stream_append('accounts', 'rr', '[{"type":"a","data":{}}]', $1::bigint)`, [expected === null ? null : before]))) as PgError | undefined;
    await a.query('ROLLBACK');
    t.equal(error?.code, 'PR004', `expected ${expected ?? 'any'} from a stale snapshot: PR004 (got ${error?.code}: ${error?.message})`);
    t.equal(error?.column, 'expected_version');
  }
  const versions = (await b.query(`SELECT version::text AS v FROM pgrelay.stream_read('accounts', 'rr')`)).rows.map((r) => r.v);
  t.same(versions, ['1', '2', '3'], 'versions stay gapless');
});

t.test('concurrent appends with any: versions are gapless and in commit (position) order', async (t) => {
  const db = await freshDatabase(t);
  const writers = await Promise.all(Array.from({ length: 8 }, () => newClient(t, db.connectionString, 1)));
  const returned: Array<{ version: bigint; size: number }> = [];
  await Promise.all(
    writers.map(async (writer, w) => {
      for (let i = 0; i < 10; i += 1) {
        const size = 1 + ((w + i) % 3);
        const events = Array.from({ length: size }, (_, j) => ev('tick', { w, i, j }));
        const version = await writer.transaction(async (tx) => {
          const v = await tx.streams.append(TOPIC, 'busy', events);
          if (i % 3 === 0) await tx.connection.query(sql.unsafe`SELECT pg_sleep(0.005)`);
          return v;
        });
        returned.push({ version: BigInt(version), size });
      }
    }),
  );
  const total = returned.reduce((sum, r) => sum + r.size, 0);
  const rows = await query<{ v: string }>(db.connectionString, `SELECT stream_version::text AS v FROM pgrelay.messages WHERE key = 'busy' ORDER BY position`);
  t.same(rows.map((r) => r.v), Array.from({ length: total }, (_, i) => String(i + 1)), `${total} events: versions 1..${total} in position order`);
  const ranges = returned.map((r) => [r.version - BigInt(r.size) + 1n, r.version] as const).sort((x, y) => (x[0] < y[0] ? -1 : 1));
  t.ok(ranges.every((r, i) => r[0] === (i === 0 ? 1n : ranges[i - 1]![1] + 1n)), 'each append returned the end of its own contiguous range');
});

t.test('fold in SQL with a reducer, and snapshots', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);
  await query(
    db.connectionString,
    `CREATE FUNCTION public.account_reducer(state jsonb, event jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
       SELECT CASE event->>'type'
                WHEN 'opened' THEN jsonb_set(state, '{owner}', event->'data'->'owner')
                WHEN 'deposited' THEN jsonb_set(state, '{balance}', to_jsonb((state->>'balance')::numeric + (event->'data'->>'amount')::numeric))
                WHEN 'withdrawn' THEN jsonb_set(state, '{balance}', to_jsonb((state->>'balance')::numeric - (event->'data'->>'amount')::numeric))
                ELSE state
              END || jsonb_build_object('applied', coalesce((state->>'applied')::int, 0) + 1, 'last_version', event->'version')
     $$`,
  );
  const initial = { owner: null, balance: 0 };
  t.same(await client.streams.fold(TOPIC, 'f-1', 'public.account_reducer', initial), { version: '0', state: initial }, 'an unknown stream folds to the initial state at version 0');
  await client.streams.append(TOPIC, 'f-1', [ev('opened', { owner: 'ann' }), ev('deposited', { amount: 10 }), ev('withdrawn', { amount: 3 })]);
  const stateSchema = z.object({ owner: z.string().nullable(), balance: z.number(), applied: z.number().optional(), last_version: z.number().optional(), marker: z.boolean().optional() });
  const folded = await client.streams.fold(TOPIC, 'f-1', 'public.account_reducer', initial, { schema: stateSchema });
  t.same(folded, { version: '3', state: { owner: 'ann', balance: 7, applied: 3, last_version: 3 } }, 'fold applies every event in version order');
  t.same(
    await client.streams.fold(TOPIC, 'f-1', 'public.account_reducer(jsonb, jsonb)', initial),
    folded,
    'the reducer may be given with its signature',
  );

  t.equal(await client.streams.snapshot(TOPIC, 'f-1', 'public.account_reducer', initial), '3', 'snapshot stores the state at version 3');
  // Mark the snapshot, so that folds that start from it can be told apart.
  await query(db.connectionString, `UPDATE pgrelay.snapshots SET state = state || '{"marker": true}'`);
  await client.streams.append(TOPIC, 'f-1', [ev('deposited', { amount: 5 })], { expectedVersion: 3 });
  const fromSnapshot = await client.streams.fold(TOPIC, 'f-1', 'public.account_reducer', initial, { schema: stateSchema });
  t.same(fromSnapshot, { version: '4', state: { owner: 'ann', balance: 12, applied: 4, last_version: 4, marker: true } }, 'fold starts from the snapshot and applies only later events');
  const full = await client.streams.fold(TOPIC, 'f-1', 'public.account_reducer', initial, { useSnapshot: false });
  t.same(full, { version: '4', state: { owner: 'ann', balance: 12, applied: 4, last_version: 4 } }, 'useSnapshot: false folds from the beginning');
  t.equal(await client.streams.snapshot(TOPIC, 'f-1', 'public.account_reducer', initial), '4', 'a second snapshot moves it forward');
  t.same(
    await query(db.connectionString, `SELECT version::text AS version, state->>'balance' AS balance FROM pgrelay.snapshots`),
    [{ version: '4', balance: '12' }],
    'one snapshot row per (stream, reducer)',
  );
  const badState = await failure(() => client.streams.fold(TOPIC, 'f-1', 'public.account_reducer', initial, { schema: z.object({ balance: z.string() }) }));
  t.ok(badState instanceof ZodError, 'a state that does not match the schema throws');
});

const Opened = defineEvent('account.opened', z.object({ owner: z.string().min(1) }));
const Deposited = defineEvent('account.deposited', z.object({ amount: z.number().positive() }));
const Withdrawn = defineEvent('account.withdrawn', z.object({ amount: z.number().positive() }));
type Account = { owner: string | null; balance: number; history: string[] };
const Account = aggregate<Account>({
  topic: 'bank',
  initial: { owner: null, balance: 0, history: [] },
  events: {
    [Opened.type]: Opened.on((state, data) => ({ ...state, owner: data.owner })),
    [Deposited.type]: Deposited.on((state, data, event) => ({ ...state, balance: state.balance + data.amount, history: [...state.history, `+${data.amount}@${event.version}`] })),
    [Withdrawn.type]: Withdrawn.on((state, data) => ({ ...state, balance: state.balance - data.amount })),
  },
});

t.test('defineEvent and aggregate: zod-validated events folded in TypeScript', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);

  t.same(Deposited({ amount: 5 }), { type: 'account.deposited', data: { amount: 5 } }, 'the factory makes a typed event');
  t.same(Deposited({ amount: 5 }, { by: 'test' }).metadata, { by: 'test' }, 'with metadata');
  t.throws(() => Deposited({ amount: -5 }), ZodError, 'invalid data is refused before anything is written');
  t.ok(Deposited.is({ type: 'account.deposited' }) && !Deposited.is({ type: 'account.opened' }), 'is() tests the type');
  t.same(Deposited.parse({ type: 'account.deposited', data: { amount: 2 } }), { amount: 2 }, 'parse() validates stored data');
  t.throws(() => Deposited.parse({ type: 'account.opened', data: { amount: 2 } }), TypeError, 'parse() refuses another type');

  t.same(await Account.load(client, 'acc-1'), { state: { owner: null, balance: 0, history: [] }, version: '0' }, 'no stream: initial state at version 0');
  t.equal(await Account.append(client, 'acc-1', [Opened({ owner: 'ann' }), Deposited({ amount: 10 })], 'no_stream'), '2');
  const loaded = await Account.load(client, 'acc-1');
  t.same(loaded, { state: { owner: 'ann', balance: 10, history: ['+10@2'] }, version: '2' }, 'load folds the stream');
  t.equal(await Account.append(client, 'acc-1', [Withdrawn({ amount: 4 })], loaded.version), '3');

  // Two commands that both loaded version 3: the second to append loses.
  const [first, second] = await Promise.all([Account.load(client, 'acc-1'), Account.load(client, 'acc-1')]);
  await Account.append(client, 'acc-1', [Deposited({ amount: 1 })], first.version);
  const lost = await failure(() => Account.append(client, 'acc-1', [Withdrawn({ amount: 100 })], second.version));
  t.ok(lost instanceof ConcurrencyError, 'a command working from a stale load gets ConcurrencyError');
  t.same((await Account.load(client, 'acc-1')).state, { owner: 'ann', balance: 7, history: ['+10@2', '+1@4'] }, 'the loser wrote nothing');

  // The TS fold and a paged load agree with reading everything at once.
  const Paged = aggregate<Account>({ topic: 'bank', initial: { owner: null, balance: 0, history: [] }, events: {}, unknownEvents: 'ignore', pageSize: 2 });
  t.same(await Paged.load(client, 'acc-1'), { state: { owner: null, balance: 0, history: [] }, version: '4' }, 'unknownEvents: ignore, paged reads reach the last version');
  const many = Array.from({ length: 7 }, (_, i) => Deposited({ amount: i + 1 }));
  await Account.append(client, 'acc-2', many);
  const PagedAccount = aggregate<Account>({ topic: 'bank', initial: { owner: null, balance: 0, history: [] }, events: { [Deposited.type]: Deposited.on((s, d) => ({ ...s, balance: s.balance + d.amount })) }, pageSize: 3 });
  t.same(await PagedAccount.load(client, 'acc-2'), { state: { owner: null, balance: 28, history: [] }, version: '7' }, 'a load over several pages folds everything once');
  const all = await client.streams.read('bank', 'acc-2');
  t.same(PagedAccount.fold(all), { owner: null, balance: 28, history: [] }, 'fold() over read() gives the same state');
  t.same(PagedAccount.fold([]), { owner: null, balance: 0, history: [] }, 'the initial state is not mutated by folds');

  // Stored events that do not match their definition fail the load loudly.
  await client.streams.append('bank', 'acc-3', [{ type: 'account.deposited', data: { amount: 'lots' } }]);
  await t.rejects(Account.load(client, 'acc-3'), ZodError, 'a stored event with invalid data throws ZodError');
  await client.streams.append('bank', 'acc-4', [{ type: 'account.frozen', data: {} }]);
  await t.rejects(Account.load(client, 'acc-4'), TypeError, 'an event type without a reducer throws');

  const notWhole = await failure(() => Account.append(client, 'acc-1', [Deposited({ amount: 1 })], 1.5));
  t.ok(notWhole instanceof InvalidArgumentError, 'a non-integer expected version is refused by the client');
  t.equal((notWhole as InvalidArgumentError).argument, 'expected_version');
  const notNumber = await failure(() => client.streams.append('bank', 'acc-1', [Deposited({ amount: 1 })], { expectedVersion: 'latest' }));
  t.ok(notNumber instanceof InvalidArgumentError, 'a non-numeric expected version string is refused');
  t.equal(await client.streams.version('bank', 'acc-1'), '4', 'nothing was written');
  const typed: StreamEvent | null = await client.streams.last('bank', 'acc-1');
  t.equal(typed?.type, 'account.deposited');
});

t.test('bad inputs: clear SQLSTATEs naming the argument, nothing written', async (t) => {
  const db = await freshDatabase(t);
  const client = await connect(t, db.connectionString);
  const pgrelay = await newClient(t, db.connectionString);
  const APPEND = 'pgrelay.stream_append';
  const append = `SELECT pgrelay.stream_append($1, $2, $3::jsonb, $4::bigint)`;
  const good = JSON.stringify([ev('opened', { owner: 'ann' })]);
  await client.query(append, [TOPIC, 'existing', good, 0]);
  const before = await count(db.connectionString, 'SELECT count(*) AS n FROM pgrelay.messages');

  const cases: Array<[string, unknown[], Expected, string?]> = [
    ['negative expected_version', [TOPIC, 'k', good, -1], { code: 'PR001', fn: APPEND, argument: 'expected_version' }],
    ['unknown stream with an exact expected_version', [TOPIC, 'unknown', good, 3], { code: 'PR004', fn: APPEND, argument: 'expected_version' }],
    ['existing stream, stale expected_version', [TOPIC, 'existing', good, 0], { code: 'PR004', fn: APPEND, argument: 'expected_version' }],
    ['NULL key', [TOPIC, null, good, null], { code: 'PR001', fn: APPEND, argument: 'key' }],
    [
      'NULL topic',
      [null, 'k', good, null],
      { code: 'PR001', fn: APPEND, argument: 'topic' },
    ],
    [
      'topic with a space',
      ['bad topic', 'k', good, null],
      { code: 'PR001', fn: APPEND, argument: 'topic' },
    ],
    ['NULL events', [TOPIC, 'k', null, null], { code: 'PR001', fn: APPEND, argument: 'events' }],
    ['events an object', [TOPIC, 'k', JSON.stringify(ev('x')), null], { code: 'PR001', fn: APPEND, argument: 'events' }],
    ['events an empty array', [TOPIC, 'k', '[]', null], { code: 'PR001', fn: APPEND, argument: 'events' }],
    ['an event that is a number', [TOPIC, 'k', '[1]', null], { code: 'PR001', fn: APPEND, argument: 'events[0]' }],
    ['an event that is JSON null', [TOPIC, 'k', JSON.stringify([ev('x'), null]), null], { code: 'PR001', fn: APPEND, argument: 'events[1]' }],
    ['an event without type', [TOPIC, 'k', JSON.stringify([{ data: 1 }]), null], { code: 'PR001', fn: APPEND, argument: 'events[0]' }],
    ['an event with a numeric type', [TOPIC, 'k', JSON.stringify([{ type: 1, data: 1 }]), null], { code: 'PR001', fn: APPEND, argument: 'events[0]' }],
    ['an event without data', [TOPIC, 'k', JSON.stringify([ev('x'), { type: 'y' }]), null], { code: 'PR001', fn: APPEND, argument: 'events[1]' }],
    ['an event with an empty type', [TOPIC, 'k', JSON.stringify([{ type: '', data: 1 }]), null], { code: 'PR001', fn: APPEND, argument: 'events[0].type' }],
    ['an event with array metadata', [TOPIC, 'k', JSON.stringify([{ type: 'x', data: 1, metadata: [] }]), null], { code: 'PR001', fn: APPEND, argument: 'events[0].metadata' }],
    ['10001 events', [TOPIC, 'k', JSON.stringify(Array.from({ length: 10001 }, () => ev('x'))), null], { code: 'PR001', fn: APPEND, argument: 'events' }],
    ['SQL injection in the topic', ["x'); DROP TABLE pgrelay.messages; --", 'k', good, null], { code: 'PR001', fn: APPEND, argument: 'topic' }],
  ];
  for (const [label, params, expected, todo] of cases) await expectError(t, client, label, append, params, expected, todo);

  await client.query('SET pgrelay.max_payload_bytes = 1000');
  await expectError(t, client, 'an oversized event (after a valid one)', append, [TOPIC, 'k', JSON.stringify([ev('ok'), ev('big', { blob: 'x'.repeat(2000) })]), null], {
    code: 'PR002',
    fn: APPEND,
    argument: 'events[1].data',
  });
  await expectError(t, client, 'oversized metadata', append, [TOPIC, 'k', JSON.stringify([{ type: 'x', data: 1, metadata: { blob: 'x'.repeat(2000) } }]), null], {
    code: 'PR002',
    fn: APPEND,
    argument: 'events[0].data',
  });
  await client.query('RESET pgrelay.max_payload_bytes');
  t.equal(await count(db.connectionString, 'SELECT count(*) AS n FROM pgrelay.messages'), before, 'no bad append wrote anything');

  // Through the client: mapped to PgrelayError subclasses with the argument.
  const oversized = await failure(() => pgrelay.transaction(async (tx) => {
    await tx.connection.query(sql.unsafe`SET LOCAL pgrelay.max_payload_bytes = 1000`);
    await tx.streams.append(TOPIC, 'k', [ev('big', { blob: 'x'.repeat(2000) })]);
  }));
  t.equal((oversized as { name?: string }).name, 'PayloadTooLargeError', 'an oversized event: PayloadTooLargeError');
  const negative = await failure(() => pgrelay.streams.append(TOPIC, 'k', [ev('x')], { expectedVersion: -1 }));
  t.ok(negative instanceof InvalidArgumentError, 'a negative expected version: InvalidArgumentError');
  t.equal((negative as InvalidArgumentError).argument, 'expected_version');
  const unknownExact = await failure(() => pgrelay.streams.append(TOPIC, 'nope', [ev('x')], { expectedVersion: 2 }));
  t.ok(unknownExact instanceof ConcurrencyError, 'an unknown stream with an exact version: ConcurrencyError');
  const empty = await failure(() => pgrelay.streams.append(TOPIC, 'k', []));
  t.ok(empty instanceof InvalidArgumentError && empty.argument === 'events', 'no events: InvalidArgumentError naming events');

  const READ = 'pgrelay.stream_read';
  const read = `SELECT * FROM pgrelay.stream_read($1, $2, $3::bigint, $4::int)`;
  const readCases: Array<[string, unknown[], Expected]> = [
    ['from_version 0', [TOPIC, 'existing', 0, 10], { code: 'PR001', fn: READ, argument: 'from_version' }],
    ['negative from_version', [TOPIC, 'existing', -5, 10], { code: 'PR001', fn: READ, argument: 'from_version' }],
    ['NULL from_version', [TOPIC, 'existing', null, 10], { code: 'PR001', fn: READ, argument: 'from_version' }],
    ['max_count 0', [TOPIC, 'existing', 1, 0], { code: 'PR001', fn: READ, argument: 'max_count' }],
    ['max_count 100001', [TOPIC, 'existing', 1, 100001], { code: 'PR001', fn: READ, argument: 'max_count' }],
    ['NULL max_count', [TOPIC, 'existing', 1, null], { code: 'PR001', fn: READ, argument: 'max_count' }],
    ['NULL key', [TOPIC, null, 1, 10], { code: 'PR001', fn: READ, argument: 'key' }],
    ['NULL topic', [null, 'existing', 1, 10], { code: 'PR001', fn: READ, argument: 'topic' }],
  ];
  for (const [label, params, expected] of readCases) await expectError(t, client, label, read, params, expected);
  const readNegative = await failure(() => pgrelay.streams.read(TOPIC, 'existing', { fromVersion: -1 }));
  t.ok(readNegative instanceof InvalidArgumentError && readNegative.argument === 'from_version', 'client read with a negative version: InvalidArgumentError');

  await client.query(`CREATE FUNCTION public.count_events(state jsonb, event jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT to_jsonb(coalesce(state::text::int, 0) + 1) $$`);
  await client.query(`CREATE FUNCTION public.wrong_shape(state jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT state $$`);
  await client.query(`CREATE FUNCTION public.wrong_result(state jsonb, event jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$`);
  const FOLD = 'pgrelay.stream_fold';
  const fold = `SELECT pgrelay.stream_fold($1, $2, $3::regprocedure, $4::jsonb)`;
  const foldCases: Array<[string, unknown[], Expected]> = [
    ['a reducer with one argument', [TOPIC, 'existing', 'public.wrong_shape(jsonb)', '0'], { code: 'PR001', fn: FOLD, argument: 'reducer' }],
    ['a reducer returning text', [TOPIC, 'existing', 'public.wrong_result(jsonb, jsonb)', '0'], { code: 'PR001', fn: FOLD, argument: 'reducer' }],
    ['NULL reducer', [TOPIC, 'existing', null, '0'], { code: 'PR001', fn: FOLD, argument: 'reducer' }],
    ['NULL initial', [TOPIC, 'existing', 'public.count_events(jsonb, jsonb)', null], { code: 'PR001', fn: FOLD, argument: 'initial' }],
    ['NULL key', [TOPIC, null, 'public.count_events(jsonb, jsonb)', '0'], { code: 'PR001', fn: FOLD, argument: 'key' }],
    ['NULL topic', [null, 'existing', 'public.count_events(jsonb, jsonb)', '0'], { code: 'PR001', fn: FOLD, argument: 'topic' }],
  ];
  for (const [label, params, expected] of foldCases) await expectError(t, client, label, fold, params, expected);
  const missing = (await failure(() => client.query(fold, [TOPIC, 'existing', 'public.no_such_reducer(jsonb, jsonb)', '0']))) as PgError;
  t.equal(missing.code, '42883', 'a reducer that does not exist fails in the regprocedure cast with undefined_function (not XX000)');
  t.same((await client.query(fold, [TOPIC, 'existing', 'public.count_events(jsonb, jsonb)', '0'])).rows[0].stream_fold, { version: 1, state: 1 }, 'a good fold works');

  const snapshot = `SELECT pgrelay.stream_snapshot($1, $2, $3::regprocedure, $4::jsonb)`;
  await expectError(t, client, 'snapshot with a bad reducer', snapshot, [TOPIC, 'existing', 'public.wrong_shape(jsonb)', '0'], { code: 'PR001', fn: 'pgrelay.stream_snapshot', argument: 'reducer' });
  await expectError(t, client, 'snapshot with NULL initial', snapshot, [TOPIC, 'existing', 'public.count_events(jsonb, jsonb)', null], { code: 'PR001', fn: 'pgrelay.stream_snapshot', argument: 'initial' });
  t.equal(await count(db.connectionString, 'SELECT count(*) AS n FROM pgrelay.snapshots'), 0, 'no bad snapshot wrote anything');
  const clientFold = await failure(() => pgrelay.streams.fold(TOPIC, 'existing', 'public.wrong_shape(jsonb)', 0));
  t.ok(clientFold instanceof InvalidArgumentError && clientFold.argument === 'reducer', 'client fold with a bad reducer: InvalidArgumentError naming reducer');

  await expectError(t, client, 'stream_version with a NULL key', `SELECT pgrelay.stream_version($1, $2)`, [TOPIC, null], { code: 'PR001', fn: 'pgrelay.stream_version', argument: 'key' });
  await expectError(t, client, 'stream_last with a NULL topic', `SELECT * FROM pgrelay.stream_last($1, $2)`, [null, 'existing'], { code: 'PR001', fn: 'pgrelay.stream_last', argument: 'topic' });
});
