// saga_start runs the leading SQL steps inline and writes the step rows, the saga row and the
// lifecycle events once at the end (sql/functions/sagas/saga_start.sql). Proves that it hands the
// saga over at exactly the state the step-by-step path reached: a failed attempt that will be
// retried, a lost lock race (not an attempt), a worker step, a deadline passed between two steps;
// that the events are in the order things happened, in one transaction, with per-message
// next_xid bounds; that definitions saved before migration 008 (no compiled steps) still start;
// and that a saga without an idempotency key gets its row written once, in its final state, while
// one with a key claims it first (concurrent starts with that key wait and get the winner's saga).
import t, { type Test } from 'tap';
import { type PgrelayClient } from '../client/index.ts';
import { query, withClient } from './helpers/db.ts';
import { ledger, sagaDatabase, stepStates, waitForSaga } from './fixtures/sagas.ts';

const SETUP = `
  CREATE TABLE public.ledger (id bigserial PRIMARY KEY, saga_id uuid NOT NULL, entry text NOT NULL);
  CREATE TABLE public.faults (name text PRIMARY KEY, sqlstate text NOT NULL DEFAULT 'P0001');
  CREATE FUNCTION public.step_ok(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO public.ledger (saga_id, entry) VALUES ((context ->> 'saga_id')::uuid, (context ->> 'step') || ':' || (context ->> 'phase'));
    RETURN jsonb_build_object((context ->> 'step') || '_' || (context ->> 'phase'), context -> 'attempt',
                              'seen_by_' || (context ->> 'step'), context - 'saga_id' - 'step' - 'phase' - 'attempt' - 'idempotency_key');
  END $$;
  CREATE FUNCTION public.step_scalar(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '42'::jsonb $$;
  CREATE FUNCTION public.step_flaky(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  DECLARE v_state text;
  BEGIN
    SELECT f.sqlstate INTO v_state FROM public.faults f WHERE f.name = context ->> 'step';
    IF FOUND THEN
      INSERT INTO public.ledger (saga_id, entry) VALUES ((context ->> 'saga_id')::uuid, 'rolled back with the attempt');
      RAISE EXCEPTION USING ERRCODE = v_state, MESSAGE = format('fault on %s', context ->> 'step');
    END IF;
    RETURN public.step_ok(input, context);
  END $$;
  CREATE FUNCTION public.step_peek(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO public.ledger (saga_id, entry)
    VALUES ((step_peek.context ->> 'saga_id')::uuid, (step_peek.context ->> 'step') || ' saw the saga row ' ||
            coalesce((SELECT s.status FROM pgrelay.sagas s WHERE s.id = (step_peek.context ->> 'saga_id')::uuid), 'absent'));
    RETURN jsonb_build_object(step_peek.context ->> 'step', true);
  END $$;
  CREATE FUNCTION public.step_slow(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  BEGIN
    PERFORM pg_sleep(0.4);
    RETURN public.step_ok(input, context);
  END $$;
`;

const setup = (t: Test): Promise<{ client: PgrelayClient; url: string }> => sagaDatabase(t, SETUP);

type Event = { type: string; data: Record<string, unknown>; xid: string; next_xid: string | null; position: string };
const events = async (url: string, sagaId: string): Promise<Event[]> =>
  query<Event>(url, `SELECT type, data, xid::text, next_xid::text, position::text FROM pgrelay.messages WHERE key = $1 ORDER BY position`, [sagaId]);

t.test('a completed saga: context merged step by step, step rows, one transaction of events in order', async (t) => {
  const { client, url } = await setup(t);
  await client.sagas.define('i.ok', {
    steps: [
      { name: 'a', action: { sql: 'public.step_ok' } },
      { name: 'b', action: { sql: 'public.step_scalar' }, compensation: { sql: 'public.step_ok' } },
      { name: 'c', action: { sql: 'public.step_ok' }, max_attempts: 7, timeout: 9 },
    ],
  });
  const id = await client.sagas.start('i.ok', { n: 1 });
  const status = await client.sagas.status(id);
  t.equal(status.status, 'completed');
  t.same(status.context, { a_action: 1, seen_by_a: {}, b: 42, c_action: 1, seen_by_c: { a_action: 1, seen_by_a: {}, b: 42 } },
    'each step saw the context merged so far; a scalar output is kept under its step name');
  t.same(stepStates(status), { a: 'succeeded', b: 'succeeded', c: 'succeeded' });
  t.same(status.steps.map((s) => [s.attempts, s.max_attempts, s.kind, s.compensation_kind]),
    [[1, 3, 'sql', null], [1, 3, 'sql', 'sql'], [1, 7, 'sql', null]], 'attempts, compiled defaults and kinds');
  t.same(status.steps.map((s) => s.output), [{ a_action: 1, seen_by_a: {} }, 42, { c_action: 1, seen_by_c: { a_action: 1, seen_by_a: {}, b: 42 } }], 'outputs per step');
  t.ok(status.steps.every((s) => s.started_at !== null && s.finished_at !== null), 'started and finished');
  const [steps] = await query<{ timeout: string; backoff: unknown }>(url,
    `SELECT timeout_seconds::text AS timeout, backoff FROM pgrelay.saga_steps WHERE saga_id = $1 AND name = 'c'`, [id]);
  t.same(steps, { timeout: '9', backoff: { initial_ms: 1000, max_ms: 300000, multiplier: 2, jitter: 0.2 } }, 'timeout and normalised backoff');

  const log = await events(url, id);
  t.same(log.map((e) => e.type), ['saga.started', 'saga.step_succeeded', 'saga.step_succeeded', 'saga.step_succeeded', 'saga.completed']);
  t.same(log.map((e) => e.data), [
    { saga_id: id, saga_type: 'i.ok', input: { n: 1 }, version: 1 },
    { saga_id: id, saga_type: 'i.ok', step: 'a', attempt: 1 },
    { saga_id: id, saga_type: 'i.ok', step: 'b', attempt: 1 },
    { saga_id: id, saga_type: 'i.ok', step: 'c', attempt: 1 },
    { saga_id: id, saga_type: 'i.ok', context: status.context },
  ], 'event bodies');
  t.equal(new Set(log.map((e) => e.xid)).size, 1, 'one transaction');
  t.ok(log.every((e) => e.next_xid !== null), 'each message has its next_xid bound (READ COMMITTED)');
  const positions = log.map((e) => BigInt(e.position));
  t.ok(positions.every((p, i) => i === 0 || p === positions[i - 1]! + 1n), 'consecutive positions');
});

t.test('a failed attempt after inline steps: retried later from the same state, events in order', async (t) => {
  const { client, url } = await setup(t);
  await query(url, `INSERT INTO public.faults (name) VALUES ('b')`);
  await client.sagas.define('i.retry', {
    steps: [
      { name: 'a', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' } },
      { name: 'b', action: { sql: 'public.step_flaky' }, max_attempts: 3, backoff: { initial_ms: 600_000, max_ms: 600_000, jitter: 0 } },
      { name: 'c', action: { sql: 'public.step_ok' } },
    ],
  });
  const id = await client.sagas.start('i.retry', {});
  const mid = await client.sagas.status(id);
  t.equal(mid.status, 'running');
  t.same(stepStates(mid), { a: 'succeeded', b: 'ready', c: 'pending' });
  t.match(mid.steps[1], { attempts: 1, last_error: /fault on b/ });
  t.equal(mid.steps[2]!.started_at, null, 'c never started');
  t.same(mid.context, { a_action: 1, seen_by_a: {} }, "a's output is in the saga row");
  t.same(await ledger(url, id), ['a:action'], "b's attempt rolled back");
  const first = await events(url, id);
  t.same(first.map((e) => [e.type, e.data.step ?? null, e.data.attempt ?? null, e.data.final ?? null]), [
    ['saga.started', null, null, null],
    ['saga.step_succeeded', 'a', 1, null],
    ['saga.step_failed', 'b', 1, false],
  ], 'started, a succeeded, b failed (not final)');

  t.ok(Date.parse(mid.steps[1]!.next_attempt_at!) > Date.now() + 500_000, 'the retry waits for its backoff');
  t.equal(await client.sagas.tick(), 0, 'nothing due before then');

  await query(url, `DELETE FROM public.faults`);
  await query(url, `UPDATE pgrelay.saga_steps SET next_attempt_at = now() WHERE saga_id = $1 AND name = 'b'`, [id]);
  const done = await waitForSaga(client, id, ['completed'], 10_000, () => client.sagas.tick());
  t.match(done.steps[1], { status: 'succeeded', attempts: 2 });
  t.same(await ledger(url, id), ['a:action', 'b:action', 'c:action']);
  t.same((await events(url, id)).slice(3).map((e) => e.type), ['saga.step_succeeded', 'saga.step_succeeded', 'saga.completed']);
});

t.test('a final failure after inline steps compensates them; a lost lock race is not an attempt', async (t) => {
  const { client, url } = await setup(t);
  await query(url, `INSERT INTO public.faults (name) VALUES ('b')`);
  await client.sagas.define('i.final', {
    steps: [
      { name: 'a', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' } },
      { name: 'b', action: { sql: 'public.step_flaky' }, max_attempts: 1 },
    ],
  });
  const id = await client.sagas.start('i.final', {});
  const status = await client.sagas.status(id);
  t.equal(status.status, 'compensated');
  t.same(stepStates(status), { a: 'compensated', b: 'failed' });
  t.same(await ledger(url, id), ['a:action', 'a:compensation']);
  t.same((await events(url, id)).map((e) => e.type),
    ['saga.started', 'saga.step_succeeded', 'saga.step_failed', 'saga.compensating', 'saga.step_compensated', 'saga.compensated']);

  await query(url, `UPDATE public.faults SET sqlstate = '40001'`);
  const raced = await client.sagas.start('i.final', {});
  const racedStatus = await client.sagas.status(raced);
  t.equal(racedStatus.status, 'running', 'a serialization failure does not fail the saga');
  t.match(racedStatus.steps[1], { status: 'ready', attempts: 0, last_error: /fault on b.*40001/ }, 'and is not counted as an attempt');
  t.ok(Date.parse(racedStatus.steps[1]!.next_attempt_at!) > Date.now() - 5_000, 'it runs again shortly');
  t.same((await events(url, raced)).map((e) => e.type), ['saga.started', 'saga.step_succeeded'], 'no failure event');
  await query(url, `DELETE FROM public.faults`);
  t.equal((await waitForSaga(client, raced, ['completed'], 10_000, () => client.sagas.tick())).steps[1]!.attempts, 1, 'then succeeds at attempt 1');
});

t.test('a worker step stops the inline run; a deadline passed between two steps compensates', async (t) => {
  const { client, url } = await setup(t);
  await client.sagas.define('i.worker', {
    steps: [
      { name: 'a', action: { sql: 'public.step_ok' } },
      { name: 'w', action: { worker: 'iq' } },
      { name: 'c', action: { sql: 'public.step_ok' } },
    ],
  });
  const id = await client.sagas.start('i.worker', {});
  const waiting = await client.sagas.status(id);
  t.same(stepStates(waiting), { a: 'succeeded', w: 'ready', c: 'pending' }, 'the worker step is ready for saga_lease');
  const [task] = await client.sagas.lease('iq', 'w1', 5);
  t.match(task, { step: 'w', attempt: 1, context: { a_action: 1 } });
  await client.sagas.complete(task!, { w: true });
  const done = await client.sagas.status(id);
  t.equal(done.status, 'completed', 'the SQL step after it ran in the worker\'s transaction');
  t.same((await events(url, id)).map((e) => e.type),
    ['saga.started', 'saga.step_succeeded', 'saga.step_succeeded', 'saga.step_succeeded', 'saga.completed']);

  await client.sagas.define('i.deadline', {
    deadline: 0.2,
    steps: [
      { name: 'slow', action: { sql: 'public.step_slow' }, compensation: { sql: 'public.step_ok' } },
      { name: 'never', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' } },
    ],
  });
  const late = await client.sagas.start('i.deadline', {});
  const status = await client.sagas.status(late);
  t.equal(status.status, 'compensated');
  t.equal(status.compensation_reason, 'deadline');
  t.same(stepStates(status), { slow: 'compensated', never: 'skipped' });
  t.same(await ledger(url, late), ['slow:action', 'slow:compensation'], 'the step after the deadline never ran');
});

t.test('definitions saved before migration 008 (no compiled steps) start alike; saga_define compiles them', async (t) => {
  const { client, url } = await setup(t);
  const definition = {
    steps: [
      { name: 'a', action: { sql: 'public.step_ok' }, backoff: { initial_ms: 5 } },
      { name: 'b', action: { sql: 'public.step_scalar' } },
    ],
  };
  t.equal(await client.sagas.define('i.old', definition), 1);
  const compiled = async () => (await query<{ steps: string | null }>(url, `SELECT steps::text FROM pgrelay.saga_definitions WHERE saga_type = 'i.old'`))[0]!.steps;
  const before = await compiled();
  t.ok(before !== null && before.includes('initial_ms'), 'saga_define stores the compiled steps');
  const fresh = await client.sagas.status(await client.sagas.start('i.old', {}));

  await query(url, `UPDATE pgrelay.saga_definitions SET steps = NULL WHERE saga_type = 'i.old'`);
  const old = await client.sagas.status(await client.sagas.start('i.old', {}));
  const shape = (s: typeof fresh) => ({ status: s.status, context: s.context, steps: s.steps.map(({ name, status, attempts, max_attempts, output, kind }) => ({ name, status, attempts, max_attempts, output, kind })) });
  t.same(shape(old), shape(fresh), 'the same saga from an uncompiled definition');
  const [backoff] = await query<{ backoff: unknown }>(url, `SELECT backoff FROM pgrelay.saga_steps WHERE saga_id = $1 AND name = 'a'`, [old.id]);
  t.same(backoff!.backoff, { initial_ms: 5, max_ms: 300000, multiplier: 2, jitter: 0.2 }, 'backoff normalised on the fly');

  t.equal(await client.sagas.define('i.old', definition), 1, 'defining it again keeps the version');
  t.equal(await compiled(), before, 'and fills in the compiled steps');
});

t.test('the saga row: written once in its final state without a key; claimed first with one', async (t) => {
  const { client, url } = await setup(t);
  await client.sagas.define('i.peek', {
    steps: [
      { name: 'a', action: { sql: 'public.step_peek' } },
      { name: 'b', action: { sql: 'public.step_peek' } },
    ],
  });
  // Row writes of this transaction alone (pg_stat_xact_user_tables), so other tests cannot blur them.
  const start = (key: string | null) =>
    withClient(url, async (c) => {
      await c.query('BEGIN');
      const { rows: [{ id }] } = await c.query<{ id: string }>(`SELECT pgrelay.saga_start('i.peek', '{"n": 1}', $1) AS id`, [key]);
      const { rows: [writes] } = await c.query<{ ins: number; upd: number }>(
        `SELECT n_tup_ins::int AS ins, n_tup_upd::int AS upd FROM pg_stat_xact_user_tables WHERE relid = 'pgrelay.sagas'::regclass`);
      await c.query('COMMIT');
      return { id: id!, writes };
    });

  const plain = await start(null);
  t.same(plain.writes, { ins: 1, upd: 0 }, 'without a key: one insert, no update of the saga row');
  const plainStatus = await client.sagas.status(plain.id);
  t.equal(plainStatus.status, 'completed');
  t.same(plainStatus.context, { a: true, b: true });
  t.same(await ledger(url, plain.id), ['a saw the saga row absent', 'b saw the saga row absent'],
    'without a key the inline steps run before the saga row is written');
  t.same((await events(url, plain.id)).map((e) => e.type),
    ['saga.started', 'saga.step_succeeded', 'saga.step_succeeded', 'saga.completed'], 'events as before');

  const keyed = await start('k-1');
  t.same(keyed.writes, { ins: 1, upd: 1 }, 'with a key: the claim (insert), then one update');
  t.equal((await client.sagas.status(keyed.id)).status, 'completed');
  t.same(await ledger(url, keyed.id), ['a saw the saga row running', 'b saw the saga row running']);
  t.equal((await start('k-1')).id, keyed.id, 'the same key returns the same saga');
  t.same(await ledger(url, keyed.id), ['a saw the saga row running', 'b saw the saga row running'], 'and runs nothing again');
});

t.test('concurrent starts with one key while the first one runs its steps: one saga, its steps run once', async (t) => {
  const { client, url } = await setup(t);
  await client.sagas.define('i.slowkey', { steps: [{ name: 'slow', action: { sql: 'public.step_slow' } }] });
  const ids = await Promise.all(Array.from({ length: 4 }, (_, i) => client.sagas.start('i.slowkey', { i }, { idempotencyKey: 'race' })));
  t.equal(new Set(ids).size, 1, 'every racer got the same saga (the losers waited for the winner to commit)');
  t.equal((await client.sagas.status(ids[0]!)).status, 'completed');
  t.same(await ledger(url, ids[0]!), ['slow:action'], 'the step ran once');
  const [count] = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pgrelay.sagas WHERE saga_type = 'i.slowkey'`);
  t.equal(count!.n, 1);
});
