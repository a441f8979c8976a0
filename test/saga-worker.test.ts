// createSagaWorker in process against a real PostgreSQL (worker processes killed and frozen are
// in saga-worker-process.test.ts). Proves: a stale worker's result is rejected by the fencing
// token in SQL and dropped; heartbeats keep a step longer than its timeout; a failing
// worker step compensates the completed one through the worker; a compensation that keeps failing
// ends 'failed' and retry after the fix ends 'compensated'.
import t, { type Test } from 'tap';
import { z } from 'zod';
import { createSagaWorker, defineSaga, NonRetryableError, type SagaWorker } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';
import { newClient, recordingLogger, sleep, stepStates, waitForSaga, waitUntil } from './fixtures/sagas.ts';

const NO_BACKOFF = { initial_ms: 0, max_ms: 0, jitter: 0 };

function stopAtTeardown(t: Test, worker: SagaWorker): SagaWorker {
  t.teardown(() => worker.stop({ timeoutMs: 1000 }));
  return worker;
}

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
