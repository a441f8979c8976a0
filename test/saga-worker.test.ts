// createSagaWorker against a real PostgreSQL, in process and as separate worker processes.
// Proves: a worker PROCESS SIGKILLed mid-step leaves a lease that expires, another worker retries
// the step (same idempotency key, next attempt) and the saga completes; a worker frozen past its
// lease (SIGSTOP) and then resumed changes nothing; a stale worker's result is rejected by the
// fencing token in SQL and dropped; heartbeats keep a step longer than its timeout; a failing
// worker step compensates the completed one through the worker; a compensation that keeps failing
// ends 'failed' and retry after the fix ends 'compensated'.
import t, { type Test } from 'tap';
import { z } from 'zod';
import { createSagaWorker, defineSaga, NonRetryableError, type PgrelayClient, type SagaWorker } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';
import { newClient, recordingLogger, sleep, startWorkerProcess, stepStates, waitForSaga, waitUntil } from './fixtures/sagas.ts';

const PROC_SETUP = `
  CREATE TABLE public.proc_effects (
    idempotency_key text PRIMARY KEY, saga_id uuid NOT NULL, step text NOT NULL, phase text NOT NULL,
    worker text NOT NULL, attempt int NOT NULL);
  CREATE TABLE public.proc_orders (saga_id uuid PRIMARY KEY, charged_by text);
  CREATE FUNCTION public.proc_confirm(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$
    INSERT INTO public.proc_orders VALUES ((context ->> 'saga_id')::uuid, context ->> 'charged_by');
    SELECT '{"confirmed": true}'::jsonb $$;
`;

const NO_BACKOFF = { initial_ms: 0, max_ms: 0, jitter: 0 };

async function procDatabase(t: Test): Promise<{ url: string; client: PgrelayClient }> {
  const db = await freshDatabase(t);
  await query(db.connectionString, PROC_SETUP);
  return { url: db.connectionString, client: await newClient(t, db.connectionString) };
}

const effects = (url: string, sagaId: string) =>
  query<{ step: string; phase: string; worker: string; attempt: number }>(
    url,
    'SELECT step, phase, worker, attempt FROM public.proc_effects WHERE saga_id = $1 ORDER BY step, phase',
    [sagaId],
  );

function stopAtTeardown(t: Test, worker: SagaWorker): SagaWorker {
  t.teardown(() => worker.stop({ timeoutMs: 1000 }));
  return worker;
}

t.test('a worker process SIGKILLed mid-step: the lease expires, another worker retries the step, the saga completes', async (t) => {
  const { url, client } = await procDatabase(t);
  const [a, b] = await Promise.all([
    startWorkerProcess(t, 'saga-worker-process.ts', { DATABASE_URL: url, PROC_MODE: 'hang', PROC_WORKER: 'worker-a', PROC_TIMEOUT: '1' }),
    startWorkerProcess(t, 'saga-worker-process.ts', { DATABASE_URL: url, PROC_MODE: 'normal', PROC_WORKER: 'worker-b', PROC_TIMEOUT: '1', PROC_START_PAUSED: '1' }),
  ]);
  const sagaId = await client.sagas.start('proc.order', { order: 1 });
  const started = await a.waitFor((e) => e.event === 'started' && e.saga_id === sagaId);
  t.equal(started.attempt, 1, 'worker a holds attempt 1 of charge');
  // Heartbeats keep the hanging step leased while worker a lives.
  await sleep(1500);
  const held = await client.sagas.status(sagaId);
  t.match(held.steps[1], { name: 'charge', status: 'leased', attempts: 1, lease_owner: 'worker-a' }, 'still leased by a after longer than its timeout (heartbeats)');

  a.kill('SIGKILL');
  t.equal(await a.exited, 'SIGKILL', 'worker a is dead');
  t.match((await client.sagas.status(sagaId)).steps[1], { status: 'leased', lease_owner: 'worker-a' }, 'its lease outlives it');

  b.kill('SIGUSR1'); // worker b, started paused, begins leasing now
  await b.waitFor((e) => e.event === 'going');
  const done = await waitForSaga(client, sagaId, ['completed', 'compensated', 'failed'], 30_000);
  t.equal(done.status, 'completed', 'the saga completes');
  t.match(done.steps[1], { name: 'charge', status: 'succeeded', attempts: 2, timed_out: true }, 'charge: attempt 1 timed out, attempt 2 succeeded');
  t.match(done.context, { reserved_by: 'worker-a', charged_by: 'worker-b', charge_attempt: 2, confirmed: true });
  t.ok(b.events.some((e) => e.event === 'started' && e.saga_id === sagaId && e.attempt === 2), 'worker b ran attempt 2');
  t.same(
    await effects(url, sagaId),
    [
      { step: 'charge', phase: 'action', worker: 'worker-b', attempt: 2 },
      { step: 'reserve', phase: 'action', worker: 'worker-a', attempt: 1 },
    ],
    'one effect per step (the idempotency key is stable across attempts)',
  );
  t.same(await query(url, 'SELECT charged_by FROM public.proc_orders WHERE saga_id = $1', [sagaId]), [{ charged_by: 'worker-b' }], 'the SQL step ran once, after the retried step');
  const events = await query<{ type: string }>(url, `SELECT type FROM pgrelay.messages WHERE key = $1 ORDER BY position`, [sagaId]);
  t.ok(events.some((e) => e.type === 'saga.step_failed'), 'the timed-out attempt was published as saga.step_failed');
  b.kill('SIGTERM');
  t.equal(await b.exited, 0, 'worker b stops cleanly on SIGTERM');
});

t.test('a worker process frozen past its lease (SIGSTOP) and resumed after another worker finished changes nothing', async (t) => {
  const { url, client } = await procDatabase(t);
  const [a, b] = await Promise.all([
    startWorkerProcess(t, 'saga-worker-process.ts', { DATABASE_URL: url, PROC_MODE: 'slow', PROC_SLOW_MS: '300', PROC_WORKER: 'worker-a', PROC_TIMEOUT: '1' }),
    startWorkerProcess(t, 'saga-worker-process.ts', { DATABASE_URL: url, PROC_MODE: 'normal', PROC_WORKER: 'worker-b', PROC_TIMEOUT: '1', PROC_START_PAUSED: '1' }),
  ]);
  const sagaId = await client.sagas.start('proc.order', { order: 2 });
  await a.waitFor((e) => e.event === 'started' && e.saga_id === sagaId);
  a.kill('SIGSTOP');
  b.kill('SIGUSR1');
  const done = await waitForSaga(client, sagaId, ['completed', 'compensated', 'failed'], 30_000);
  t.equal(done.status, 'completed');
  t.match(done.context, { charged_by: 'worker-b', charge_attempt: 2 });
  const before = JSON.stringify(await client.sagas.status(sagaId));
  a.kill('SIGCONT');
  // Worker a wakes with its handler's timer due and its lease long gone; give it time to try.
  await sleep(1500);
  t.equal(JSON.stringify(await client.sagas.status(sagaId)), before, 'the resumed stale worker changed nothing in the saga');
  t.same((await effects(url, sagaId)).filter((e) => e.step === 'charge'), [{ step: 'charge', phase: 'action', worker: 'worker-b', attempt: 2 }], 'its late effect was deduplicated by the idempotency key');
  t.match(a.stderr(), /lease was lost|no heartbeat got through/, 'worker a logged that it lost the lease');
  t.ok(b.events.some((e) => e.event === 'started' && e.attempt === 2), 'worker b ran attempt 2');
});

t.test('in process: a stale result is rejected by the fencing token in SQL and dropped', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  const client = await newClient(t, url);
  let release: () => void = () => {};
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  let runs = 0;
  const saga = defineSaga({
    type: 'w.fence',
    input: z.object({}),
    steps: [
      {
        name: 'slow',
        timeout: 30,
        backoff: NO_BACKOFF,
        action: async (run) => {
          runs += 1;
          if (run.attempt === 1) await gate;
          return { by_attempt: run.attempt };
        },
      },
    ],
  });
  await saga.register(client);
  const logger = recordingLogger();
  // concurrency 1: busy with attempt 1, it cannot lease attempt 2 itself.
  const stale = stopAtTeardown(t, createSagaWorker({ client, sagas: [saga], worker: 'stale', tickIntervalMs: 0, logger, concurrency: 1 }));
  const id = await saga.start(client, {});
  await waitUntil('attempt 1 running', () => runs === 1);
  // The lease ends (as if the worker had been cut off); saga_tick turns it into a timed-out attempt.
  await query(url, `UPDATE pgrelay.saga_steps SET lease_expires_at = clock_timestamp() - interval '1 second' WHERE saga_id = $1`, [id]);
  t.equal(await client.sagas.tick(), 1);
  const [task] = await client.sagas.lease('w.fence', 'other');
  t.match(task, { step: 'slow', attempt: 2 }, 'another worker holds attempt 2');
  release();
  await waitUntil('the stale result to be dropped', () => stale.stats.leaseLost === 1);
  t.equal(stale.stats.completed, 0, 'the stale worker completed nothing');
  t.match(logger.lines, [{ level: 'warn', message: 'saga step result dropped: the lease was lost', fields: { step: 'slow', attempt: 1 } }]);
  t.equal((await client.sagas.status(id)).status, 'running', 'the saga still waits for attempt 2');
  await client.sagas.complete(task!, { by_attempt: 2 });
  const done = await client.sagas.status(id);
  t.equal(done.status, 'completed');
  t.same(done.context, { by_attempt: 2 }, "only attempt 2's output counts");
});

t.test('in process: heartbeats keep a step that runs longer than its timeout', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);
  const saga = defineSaga({
    type: 'w.long',
    input: z.object({ ms: z.number() }),
    steps: [{ name: 'long', timeout: 0.6, maxAttempts: 1, action: async (run) => (await sleep(run.input.ms), { slept: run.input.ms }) }],
  });
  await saga.register(client);
  stopAtTeardown(t, createSagaWorker({ client, sagas: [saga], tickIntervalMs: 100 }));
  const id = await saga.start(client, { ms: 2000 });
  const done = await waitForSaga(client, id, undefined, 20_000);
  t.equal(done.status, 'completed', 'completed although it ran more than three times its timeout');
  t.match(done.steps[0], { attempts: 1, timed_out: false });
});

t.test('in process: the second step fails, the worker compensates the first; NonRetryableError is not retried', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);
  const log: string[] = [];
  const saga = defineSaga({
    type: 'w.fail2',
    input: z.object({ fatal: z.boolean() }),
    steps: [
      {
        name: 'reserve',
        backoff: NO_BACKOFF,
        action: async (run) => (log.push(`reserve ${run.sagaId.slice(0, 4)}`), { reservation: run.idempotencyKey }),
        compensate: async (run) => void log.push(`release ${run.context.reservation === `${run.sagaId}:reserve:action`}`),
      },
      {
        name: 'charge',
        maxAttempts: 3,
        backoff: NO_BACKOFF,
        action: async (run) => {
          if (run.input.fatal) throw new NonRetryableError('card stolen');
          throw new Error(`declined on attempt ${run.attempt}`);
        },
        compensate: async () => void log.push('refund (must not run: charge never succeeded)'),
      },
    ],
  });
  await saga.register(client);
  const worker = stopAtTeardown(t, createSagaWorker({ client, sagas: [saga], tickIntervalMs: 50, concurrency: 4 }));
  const retried = await saga.start(client, { fatal: false });
  const fatal = await saga.start(client, { fatal: true });
  const first = await waitForSaga(client, retried);
  const second = await waitForSaga(client, fatal);
  for (const status of [first, second]) {
    t.equal(status.status, 'compensated');
    t.same(stepStates(status), { reserve: 'compensated', charge: 'failed' });
  }
  t.equal(first.steps[1]!.attempts, 3, 'a thrown error is retried up to maxAttempts');
  t.match(first.steps[1]!.last_error, /declined on attempt 3/);
  t.equal(second.steps[1]!.attempts, 1, 'a NonRetryableError fails the step at once');
  t.match(second.steps[1]!.last_error, /NonRetryableError: card stolen/);
  t.equal(log.filter((l) => l === 'release true').length, 2, 'each reservation released once, with the context of its saga');
  t.notOk(log.some((l) => l.startsWith('refund')), 'the failed step is not compensated');
  t.ok(worker.stats.failed >= 4, 'the failures were recorded');
});

t.test('in process: a compensation that always fails ends failed; retry after the fix ends compensated', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);
  let broken = true;
  let released = 0;
  const saga = defineSaga({
    type: 'w.comp',
    input: z.object({}),
    steps: [
      {
        name: 'reserve',
        maxAttempts: 2,
        backoff: NO_BACKOFF,
        action: async () => ({}),
        compensate: async () => {
          if (broken) throw new Error('inventory service down');
          released += 1;
        },
      },
      { name: 'charge', maxAttempts: 1, action: async () => Promise.reject(new Error('declined')) },
    ],
  });
  await saga.register(client);
  stopAtTeardown(t, createSagaWorker({ client, sagas: [saga], tickIntervalMs: 50 }));
  const id = await saga.start(client, {});
  const failed = await waitForSaga(client, id);
  t.equal(failed.status, 'failed', 'a compensation out of attempts leaves the saga failed');
  t.match(failed.steps[0], { status: 'compensation_failed', attempts: 2, last_error: /inventory service down/ });
  await sleep(300);
  t.equal((await client.sagas.status(id)).status, 'failed', 'and it stays failed: it needs a person');
  broken = false;
  await client.sagas.retry(id);
  const done = await waitForSaga(client, id, ['compensated', 'failed']);
  t.equal(done.status, 'compensated', 'retry after the fix compensates');
  t.equal(released, 1);
});

t.test('in process: every connection killed mid-run (pg_terminate_backend); the worker reconnects and all sagas complete once', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  await query(url, `CREATE TABLE public.effects (idempotency_key text PRIMARY KEY, attempt int NOT NULL)`);
  const client = await newClient(t, url);
  const workerUrl = new URL(url);
  workerUrl.searchParams.set('application_name', 'saga-worker-under-fire');
  const workerClient = await newClient(t, workerUrl.toString(), 4);
  let started = 0;
  const saga = defineSaga({
    type: 'w.killed',
    input: z.object({ n: z.number() }),
    steps: ['one', 'two'].map((name) => ({
      name,
      timeout: 2,
      maxAttempts: 10,
      backoff: { initial_ms: 20, max_ms: 200, jitter: 0 },
      action: async (run: { idempotencyKey: string; attempt: number }) => {
        started += 1;
        await sleep(50);
        await query(url, 'INSERT INTO public.effects VALUES ($1, $2) ON CONFLICT DO NOTHING', [run.idempotencyKey, run.attempt]);
        return {};
      },
    })),
  });
  await saga.register(client);
  const worker = stopAtTeardown(t, createSagaWorker({ client: workerClient, sagas: [saga], concurrency: 8, tickIntervalMs: 100, logger: recordingLogger() }));
  const ids = await client.sagas.startMany(saga, Array.from({ length: 40 }, (_, n) => ({ input: { n } })));
  await waitUntil('steps to be running', () => started >= 8);
  let workerKilled = 0;
  for (let round = 0; round < 3; round += 1) {
    const [killed] = await query<{ n: number; worker: number }>(
      url,
      `SELECT count(*)::int AS n, count(*) FILTER (WHERE application_name = 'saga-worker-under-fire')::int AS worker
       FROM (SELECT pid, application_name, pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()) k`,
    );
    t.ok(killed!.n >= 1, `round ${round + 1}: killed ${killed!.n} connections`);
    workerKilled += killed!.worker;
    await sleep(150);
  }
  t.ok(workerKilled >= 1, `${workerKilled} of them were the worker's`);
  await waitUntil('all 40 sagas to complete', async () => {
    const [row] = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pgrelay.sagas WHERE status = 'completed'`);
    return row!.n === 40;
  }, 40_000);
  const [effects] = await query<{ n: number }>(url, 'SELECT count(*)::int AS n FROM public.effects');
  t.equal(effects!.n, 80, 'one effect per step (retried attempts deduplicated by the idempotency key)');
  t.comment(`worker: ${worker.stats.completed} completions, ${worker.stats.leaseLost} results dropped, ${worker.stats.errors} errors recovered from`);
  t.equal(ids.length, 40);
});
