// Sagas through the typed client (client.sagas), driven by hand: SQL steps run inside saga_start;
// worker steps are leased, completed and failed with their attempt number as the fencing token.
// Proves: compensation of completed steps in reverse when a later step fails; a compensation that
// always fails ends 'failed', and saga_retry after the fault is fixed ends 'compensated'; cancel
// and deadline compensate; a stale worker's completion is rejected; the same idempotency key
// starts one saga; errors are typed by SQLSTATE.
import t, { type Test } from 'tap';
import { z } from 'zod';
import {
  defineSaga,
  InvalidArgumentError,
  InvalidStateError,
  LeaseLostError,
  NotFoundError,
  type PgrelayClient,
  type SagaDefinitionJson,
} from '../client/index.ts';
import { query } from './helpers/db.ts';
import { ledger, sagaDatabase, sleep, stepStates, waitForSaga } from './fixtures/sagas.ts';

const NO_BACKOFF = { initial_ms: 0, max_ms: 0, jitter: 0 };

/** Business stand-ins: a ledger of what ran, functions that succeed, fail, or fail while a fault is set. */
const SETUP = `
  CREATE TABLE public.ledger (id bigserial PRIMARY KEY, saga_id uuid NOT NULL, entry text NOT NULL);
  CREATE TABLE public.faults (name text PRIMARY KEY);
  CREATE FUNCTION public.step_ok(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO public.ledger (saga_id, entry) VALUES ((context ->> 'saga_id')::uuid, (context ->> 'step') || ':' || (context ->> 'phase'));
    RETURN jsonb_build_object((context ->> 'step') || '_' || (context ->> 'phase'), context -> 'attempt');
  END $$;
  CREATE FUNCTION public.step_fail(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO public.ledger (saga_id, entry) VALUES ((context ->> 'saga_id')::uuid, 'never committed');
    RAISE EXCEPTION 'step % refuses', context ->> 'step';
  END $$;
  CREATE FUNCTION public.step_flaky(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  BEGIN
    IF EXISTS (SELECT 1 FROM public.faults f WHERE f.name = context ->> 'step') THEN
      RAISE EXCEPTION 'fault on %', context ->> 'step';
    END IF;
    RETURN public.step_ok(input, context);
  END $$;
`;

const setup = (t: Test): Promise<{ client: PgrelayClient; url: string }> => sagaDatabase(t, SETUP);

async function failure(run: () => Promise<unknown>): Promise<unknown> {
  try {
    await run();
  } catch (error) {
    return error;
  }
  return new Error('did not throw');
}

t.test('define: versions, validation by SQLSTATE, defineSaga builds the JSON definition', async (t) => {
  const { client } = await setup(t);
  const definition: SagaDefinitionJson = { steps: [{ name: 'a', action: { sql: 'public.step_ok' } }] };
  t.equal(await client.sagas.define('s.define', definition), 1, 'first version');
  t.equal(await client.sagas.define('s.define', definition), 1, 'the same definition keeps its version');
  t.equal(await client.sagas.define('s.define', { ...definition, deadline: 60 }), 2, 'a changed one is version 2');
  const bad = await failure(() => client.sagas.define('s.define', { steps: [{ name: 'a', action: { sql: 'public.nope' } }] }));
  t.type(bad, InvalidArgumentError, 'an unknown SQL function is PR001');
  t.equal((bad as InvalidArgumentError).argument, 'definition', 'naming the definition');
  t.type(await failure(() => client.sagas.define('bad type!', definition)), InvalidArgumentError, 'a bad saga type is PR001');

  const saga = defineSaga({
    type: 's.typed',
    input: z.object({ n: z.number().int() }),
    deadline: 30,
    steps: [
      { name: 'sql', action: { sql: 'public.step_ok' }, compensate: { sql: 'public.step_ok' }, maxAttempts: 5, backoff: NO_BACKOFF },
      { name: 'ts', action: async () => ({}), compensate: async () => ({}), timeout: 7 },
      { name: 'other', action: { worker: 'elsewhere' }, queue: 'unused' },
      { name: 'own', action: async () => ({}), queue: 's.own-queue' },
    ],
  });
  t.same(saga.definition, {
    steps: [
      { name: 'sql', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' }, max_attempts: 5, backoff: NO_BACKOFF },
      { name: 'ts', action: { worker: 's.typed' }, compensation: { worker: 's.typed' }, timeout: 7 },
      { name: 'other', action: { worker: 'elsewhere' } },
      { name: 'own', action: { worker: 's.own-queue' } },
    ],
    deadline: 30,
  });
  t.same([...saga.queues].sort(), ['s.own-queue', 's.typed'], 'queues of its TypeScript handlers');
  t.ok(saga.handler('ts', 'compensation'), 'handlers by step and phase');
  t.equal(saga.handler('sql', 'action'), undefined, 'SQL steps have no handler');
  t.equal(await saga.register(client), 1, 'register() calls saga_define');
  t.throws(() => saga.parseInput({ n: 1.5 }), 'input is checked by the zod schema');
  await t.rejects(saga.start(client, { n: 'x' } as unknown as { n: number }), 'start() refuses a bad input before reaching SQL');
  t.throws(() => defineSaga({ type: 'x', input: z.object({}), steps: [{ name: 'a', action: { sql: 'f' } }, { name: 'a', action: { sql: 'f' } }] }), /duplicate/);
});

t.test('SQL steps: the whole saga runs in saga_start, context merged, lifecycle events on saga.<type>', async (t) => {
  const { client, url } = await setup(t);
  await client.sagas.define('s.sql', {
    steps: ['a', 'b', 'c'].map((name) => ({ name, action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' } })),
  });
  const id = await client.sagas.start('s.sql', { order: 1 });
  const status = await client.sagas.status(id);
  t.equal(status.status, 'completed', 'completed before start() returned');
  t.same(status.context, { a_action: 1, b_action: 1, c_action: 1 }, 'each output merged into the context');
  t.same(stepStates(status), { a: 'succeeded', b: 'succeeded', c: 'succeeded' });
  t.same(status.input, { order: 1 });
  t.same(await ledger(url, id), ['a:action', 'b:action', 'c:action']);
  const events = await query<{ topic: string; key: string; type: string }>(url, 'SELECT topic, key, type FROM pgrelay.messages ORDER BY position');
  t.same(
    events.map((e) => e.type),
    ['saga.started', 'saga.step_succeeded', 'saga.step_succeeded', 'saga.step_succeeded', 'saga.completed'],
    'lifecycle events in order',
  );
  t.ok(events.every((e) => e.topic === 's.sql'.replace(/^/, 'saga.') && e.key === id), 'on topic saga.<type>, keyed by saga id');

  const ids = await client.sagas.startMany('s.sql', [{ input: { order: 2 } }, { input: { order: 3 }, idempotencyKey: 'k3' }, { input: { order: 4 } }]);
  t.equal(ids.length, 3, 'startMany: one id per input');
  for (const [i, sagaId] of ids.entries()) {
    const s = await client.sagas.status(sagaId);
    t.equal(s.status, 'completed');
    t.same(s.input, { order: i + 2 }, 'ids in input order');
  }
  t.same(await client.sagas.startMany('s.sql', []), [], 'startMany of nothing');
});

t.test('the second step fails: the first is compensated, the saga ends compensated (SQL steps)', async (t) => {
  const { client, url } = await setup(t);
  await client.sagas.define('s.fail2', {
    steps: [
      { name: 'a', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' } },
      { name: 'b', action: { sql: 'public.step_fail' }, compensation: { sql: 'public.step_ok' }, max_attempts: 1 },
      { name: 'c', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' } },
    ],
  });
  const id = await client.sagas.start('s.fail2', {});
  const status = await client.sagas.status(id);
  t.equal(status.status, 'compensated');
  t.equal(status.compensation_reason, 'failed');
  t.same(stepStates(status), { a: 'compensated', b: 'failed', c: 'skipped' }, 'the failed step is not compensated; the later one never ran');
  t.match(status.steps[1]!.last_error, /step b refuses/);
  t.same(await ledger(url, id), ['a:action', 'a:compensation'], "the failed step's writes rolled back; a undone");
  t.match(status.error, { step: 'b' });
});

t.test('the second step fails: worker steps, compensation by a worker, retries with backoff', async (t) => {
  const { client } = await setup(t);
  await client.sagas.define('s.wfail', {
    steps: [
      { name: 'reserve', action: { worker: 'q' }, compensation: { worker: 'q' }, backoff: NO_BACKOFF },
      { name: 'charge', action: { worker: 'q' }, compensation: { worker: 'q' }, max_attempts: 2, backoff: NO_BACKOFF },
    ],
  });
  const id = await client.sagas.start('s.wfail', { amount: 5 });
  const [reserve] = await client.sagas.lease('q', 'w1', 10);
  t.match(reserve, { sagaId: id, step: 'reserve', phase: 'action', attempt: 1, idempotencyKey: `${id}:reserve:action`, input: { amount: 5 } });
  await client.sagas.complete(reserve!, { reservation: 'r1' });
  const [charge1] = await client.sagas.lease('q', 'w1', 10);
  t.match(charge1, { step: 'charge', attempt: 1, context: { reservation: 'r1' } }, 'the next step sees the context');
  await client.sagas.fail(charge1!, 'card declined (transient)');
  const [charge2] = await client.sagas.lease('q', 'w2', 10);
  t.match(charge2, { step: 'charge', attempt: 2, idempotencyKey: `${id}:charge:action` }, 'retried: attempt 2, same idempotency key');
  await client.sagas.fail(charge2!, 'card declined');
  t.equal((await client.sagas.status(id)).status, 'compensating', 'max_attempts reached: compensating');
  const comps = await client.sagas.lease('q', 'w1', 10);
  t.equal(comps.length, 1, 'only the completed step is compensated');
  t.match(comps[0], { step: 'reserve', phase: 'compensation', attempt: 1, idempotencyKey: `${id}:reserve:compensation` });
  await client.sagas.complete(comps[0]!);
  const status = await client.sagas.status(id);
  t.equal(status.status, 'compensated');
  t.same(stepStates(status), { reserve: 'compensated', charge: 'failed' });
  t.same(await client.sagas.lease('q', 'w1', 10), [], 'nothing left to lease');

  const noRetry = await client.sagas.start('s.wfail', { amount: 6 });
  await client.sagas.complete((await client.sagas.lease('q', 'w1'))[0]!);
  await client.sagas.fail((await client.sagas.lease('q', 'w1'))[0]!, 'insufficient funds', { retryable: false });
  t.equal((await client.sagas.status(noRetry)).steps[1]!.attempts, 1, 'retryable: false fails for good at once');
  t.equal((await client.sagas.status(noRetry)).status, 'compensating');
});

t.test('fencing: a worker whose lease expired cannot complete, fail or heartbeat the step', async (t) => {
  const { client } = await setup(t);
  await client.sagas.define('s.fence', {
    steps: [
      { name: 'slow', action: { worker: 'fq' }, timeout: 30, max_attempts: 3, backoff: NO_BACKOFF },
      { name: 'next', action: { worker: 'fq' } },
    ],
  });
  const id = await client.sagas.start('s.fence', {});
  const [stale] = await client.sagas.lease('fq', 'worker-a', 1, 0.3);
  t.equal(stale!.attempt, 1);
  const expires = await client.sagas.heartbeat(stale!, 0.3);
  t.ok(Date.parse(expires) > Date.now() - 1000, 'a live lease heartbeats');
  await sleep(450);
  t.type(await failure(() => client.sagas.complete(stale!, { done: 'a' })), LeaseLostError, 'an expired lease cannot complete, even before anyone else took the step');
  t.equal(await client.sagas.tick(), 1, 'saga_tick turns the expired lease into a timed-out attempt');
  const mid = await client.sagas.status(id);
  t.match(mid.steps[0], { status: 'ready', attempts: 1, timed_out: true });
  const [fresh] = await client.sagas.lease('fq', 'worker-b', 1);
  t.match(fresh, { step: 'slow', attempt: 2, idempotencyKey: stale!.idempotencyKey }, 'worker b holds attempt 2, same idempotency key');

  const late = await failure(() => client.sagas.complete(stale!, { done: 'a' }));
  t.type(late, LeaseLostError, "worker a's completion is rejected (PR005)");
  t.equal((late as LeaseLostError).sqlState, 'PR005');
  t.equal((late as LeaseLostError).argument, 'attempt');
  t.type(await failure(() => client.sagas.fail(stale!, 'x')), LeaseLostError, 'so is its failure');
  t.type(await failure(() => client.sagas.heartbeat(stale!)), LeaseLostError, 'and its heartbeat');
  t.type(await failure(() => client.sagas.complete({ ...stale!, attempt: 3 })), LeaseLostError, 'a future attempt number too');
  await client.sagas.complete(fresh!, { done: 'b' });
  const status = await client.sagas.status(id);
  t.same(status.context, { done: 'b' }, "only worker b's output is in the context");
  t.match(status.steps[0], { status: 'succeeded', attempts: 2 });
  t.type(await failure(() => client.sagas.completeMany([{ ...fresh!, output: {} }])), LeaseLostError, 'completeMany is fenced too');
});

t.test('a compensation that always fails ends failed; saga_retry after the fix ends compensated', async (t) => {
  const { client, url } = await setup(t);
  await query(url, `INSERT INTO public.faults VALUES ('a')`);
  await client.sagas.define('s.comp', {
    steps: [
      { name: 'a', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_flaky' }, max_attempts: 3, backoff: NO_BACKOFF },
      { name: 'b', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' } },
      { name: 'c', action: { sql: 'public.step_fail' }, max_attempts: 1 },
    ],
  });
  const id = await client.sagas.start('s.comp', {});
  const failed = await waitForSaga(client, id, ['failed'], 10_000, () => client.sagas.tick());
  t.same(stepStates(failed), { a: 'compensation_failed', b: 'compensated', c: 'failed' }, 'b undone, a could not be');
  t.equal(failed.steps[0]!.attempts, 3, 'a compensation is retried up to max_attempts');
  t.match(failed.error, { step: 'a', phase: 'compensation', error: /fault on a/ });
  await sleep(50);
  await client.sagas.tick();
  t.equal((await client.sagas.status(id)).status, 'failed', 'failed stays failed: it needs a person');

  await client.sagas.retry(id);
  const again = await waitForSaga(client, id, ['failed', 'compensated'], 10_000, () => client.sagas.tick());
  t.equal(again.status, 'failed', 'retrying before the fix fails again');

  await query(url, `DELETE FROM public.faults`);
  await client.sagas.retry(id);
  const done = await waitForSaga(client, id, ['failed', 'compensated'], 10_000, () => client.sagas.tick());
  t.equal(done.status, 'compensated', 'after the fix, retry compensates');
  t.same(stepStates(done), { a: 'compensated', b: 'compensated', c: 'failed' });
  t.same(await ledger(url, id), ['a:action', 'b:action', 'b:compensation', 'a:compensation']);
  t.type(await failure(() => client.sagas.retry(id)), InvalidStateError, 'retrying a compensated saga is PR007');
});

t.test('skip and resolve settle a failed saga by hand', async (t) => {
  const { client, url } = await setup(t);
  await query(url, `INSERT INTO public.faults VALUES ('b')`);
  await client.sagas.define('s.manual', {
    steps: [
      { name: 'a', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' } },
      { name: 'b', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_flaky' }, max_attempts: 1 },
      { name: 'c', action: { sql: 'public.step_fail' }, max_attempts: 1 },
    ],
  });
  const skipped = await client.sagas.start('s.manual', {});
  t.equal((await client.sagas.status(skipped)).status, 'failed');
  t.type(await failure(() => client.sagas.skip(skipped, 'a')), NotFoundError, 'only a failed compensation can be skipped');
  await client.sagas.skip(skipped, 'b');
  const afterSkip = await client.sagas.status(skipped);
  t.equal(afterSkip.status, 'compensated', 'the remaining compensations ran');
  t.same(stepStates(afterSkip), { a: 'compensated', b: 'skipped', c: 'failed' });

  const resolved = await client.sagas.start('s.manual', {});
  t.type(await failure(() => client.sagas.resolve(resolved, '')), InvalidArgumentError, 'resolve needs a note');
  await client.sagas.resolve(resolved, 'refunded by hand, ticket 42');
  const afterResolve = await client.sagas.status(resolved);
  t.equal(afterResolve.status, 'compensated');
  t.match(afterResolve.error, { resolved: 'refunded by hand, ticket 42' });
  t.type(await failure(() => client.sagas.resolve(resolved, 'again')), InvalidStateError);
  t.type(await failure(() => client.sagas.skip(resolved, 'b')), InvalidStateError);
});

t.test('cancel compensates completed steps and the leased one (outcome unknown), and fences its worker', async (t) => {
  const { client, url } = await setup(t);
  await client.sagas.define('s.cancel', {
    steps: [
      { name: 'a', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' } },
      { name: 'b', action: { worker: 'cq' }, compensation: { worker: 'cq' } },
      { name: 'c', action: { worker: 'cq' }, compensation: { worker: 'cq' } },
    ],
  });
  const id = await client.sagas.start('s.cancel', {});
  const [b] = await client.sagas.lease('cq', 'w', 5);
  t.equal(b!.step, 'b');
  await client.sagas.cancel(id, 'customer changed their mind');
  const cancelling = await client.sagas.status(id);
  t.equal(cancelling.status, 'compensating');
  t.equal(cancelling.compensation_reason, 'cancelled');
  t.same(stepStates(cancelling), { a: 'succeeded', b: 'compensation_ready', c: 'skipped' }, 'the leased step may have happened: it is compensated');
  t.type(await failure(() => client.sagas.complete(b!)), LeaseLostError, "the cancelled step's worker is fenced off");
  const [undo] = await client.sagas.lease('cq', 'w', 5);
  t.match(undo, { step: 'b', phase: 'compensation' });
  await client.sagas.complete(undo!);
  const status = await client.sagas.status(id);
  t.equal(status.status, 'cancelled');
  t.same(stepStates(status), { a: 'compensated', b: 'compensated', c: 'skipped' });
  t.same(await ledger(url, id), ['a:action', 'a:compensation']);
  t.type(await failure(() => client.sagas.cancel(id)), InvalidStateError, 'cancelling a cancelled saga is PR007');

  const done = await client.sagas.start('s.cancel', {});
  for (let i = 0; i < 2; i += 1) await client.sagas.complete((await client.sagas.lease('cq', 'w', 1))[0]!);
  t.equal((await client.sagas.status(done)).status, 'completed');
  t.type(await failure(() => client.sagas.cancel(done)), InvalidStateError, 'a completed saga cannot be cancelled');
});

t.test('a passed deadline compensates, with no worker alive (saga_tick)', async (t) => {
  const { client, url } = await setup(t);
  await client.sagas.define('s.deadline', {
    deadline: 0.5,
    steps: [
      { name: 'a', action: { sql: 'public.step_ok' }, compensation: { sql: 'public.step_ok' } },
      { name: 'b', action: { worker: 'nobody' }, compensation: { sql: 'public.step_ok' } },
    ],
  });
  const id = await client.sagas.start('s.deadline', {});
  const running = await client.sagas.status(id);
  t.equal(running.status, 'running');
  t.ok(running.deadline_at, 'deadline_at is set');
  await sleep(600);
  t.same(await client.sagas.lease('nobody', 'w', 5), [], 'past the deadline nothing is leased');
  t.ok((await client.sagas.tick()) >= 1, 'saga_tick picks the saga up');
  const status = await client.sagas.status(id);
  t.equal(status.status, 'compensated');
  t.equal(status.compensation_reason, 'deadline');
  t.same(stepStates(status), { a: 'compensated', b: 'skipped' });
  t.same(await ledger(url, id), ['a:action', 'a:compensation']);

  // The same with CALL pgrelay.saga_drive(), as pg_cron would run it.
  const other = await client.sagas.start('s.deadline', {});
  await sleep(600);
  await query(url, 'CALL pgrelay.saga_drive()');
  t.equal((await client.sagas.status(other)).status, 'compensated', 'saga_drive progresses it too');
});

t.test('the same idempotency key starts one saga, also under concurrency', async (t) => {
  const { client, url } = await setup(t);
  await client.sagas.define('s.idem', { steps: [{ name: 'a', action: { worker: 'iq' } }] });
  await client.sagas.define('s.idem2', { steps: [{ name: 'a', action: { worker: 'iq' } }] });
  const first = await client.sagas.start('s.idem', { n: 1 }, { idempotencyKey: 'order-1' });
  t.equal(await client.sagas.start('s.idem', { n: 2 }, { idempotencyKey: 'order-1' }), first, 'the same key returns the same saga');
  t.same((await client.sagas.status(first)).input, { n: 1 }, 'the first input stays');
  t.equal((await client.sagas.status(first)).idempotency_key, 'order-1');
  t.not(await client.sagas.start('s.idem2', { n: 1 }, { idempotencyKey: 'order-1' }), first, 'keys are per saga type');
  t.not(await client.sagas.start('s.idem', { n: 1 }), await client.sagas.start('s.idem', { n: 1 }), 'no key, no deduplication');

  const racers = await Promise.all(Array.from({ length: 16 }, (_, i) => client.sagas.start('s.idem', { i }, { idempotencyKey: 'order-2' })));
  t.equal(new Set(racers).size, 1, '16 concurrent starts with one key: one saga');
  const batch = await client.sagas.startMany('s.idem', [
    { input: {}, idempotencyKey: 'order-3' },
    { input: {}, idempotencyKey: 'order-3' },
    { input: {}, idempotencyKey: 'order-2' },
  ]);
  t.equal(batch[0], batch[1], 'startMany: a key repeated in the batch is one saga');
  t.equal(batch[2], racers[0], 'startMany: an existing key returns the existing saga');
  const [count] = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pgrelay.sagas WHERE idempotency_key IS NOT NULL`);
  t.equal(count!.n, 4, 'order-1 twice (two types), order-2, order-3');
  const tasks = await client.sagas.lease('iq', 'w', 100);
  t.equal(tasks.filter((task) => task.sagaId === racers[0]).length, 1, 'one step to run for the deduplicated saga');
});

t.test('errors are typed by SQLSTATE and name the argument', async (t) => {
  const { client } = await setup(t);
  const unknown = await failure(() => client.sagas.status('00000000-0000-4000-8000-000000000000'));
  t.type(unknown, NotFoundError);
  t.equal((unknown as NotFoundError).argument, 'saga_id');
  t.type(await failure(() => client.sagas.start('s.none', {})), NotFoundError, 'an undefined saga type');
  const lease = await failure(() => client.sagas.lease('q', 'w', 0));
  t.type(lease, InvalidArgumentError);
  t.equal((lease as InvalidArgumentError).argument, 'max_tasks');
  t.type(await failure(() => client.sagas.lease('bad queue!', 'w')), InvalidArgumentError);
  t.type(await failure(() => client.sagas.tick(0)), InvalidArgumentError);
  t.type(await failure(() => client.sagas.cancel('00000000-0000-4000-8000-000000000000')), NotFoundError);
  await client.sagas.define('s.err', { steps: [{ name: 'a', action: { worker: 'eq' } }] });
  const id = await client.sagas.start('s.err', {});
  t.type(await failure(() => client.sagas.complete({ sagaId: id, step: 'nope', attempt: 1 })), NotFoundError, 'an unknown step');
  t.type(await failure(() => client.sagas.complete({ sagaId: id, step: 'a', attempt: 1 })), LeaseLostError, 'a step nobody leased');
  t.type(await failure(() => client.sagas.start('s.err', {}, { idempotencyKey: 'x'.repeat(256) })), InvalidArgumentError);
});
