// Saga workers as real processes against a real PostgreSQL (test/fixtures/saga-worker-process.mjs).
// Proves: a worker PROCESS SIGKILLed mid-step leaves a lease that expires, another worker retries
// the step (same idempotency key, next attempt) and the saga completes; a worker frozen past its
// lease (SIGSTOP) and then resumed changes nothing.
import t, { type Test } from 'tap';
import type { PgrelayClient } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';
import { newClient, sleep, startWorkerProcess, waitForSaga } from './fixtures/sagas.ts';

const PROC_SETUP = `
  CREATE TABLE public.proc_effects (
    idempotency_key text PRIMARY KEY, saga_id uuid NOT NULL, step text NOT NULL, phase text NOT NULL,
    worker text NOT NULL, attempt int NOT NULL);
  CREATE TABLE public.proc_orders (saga_id uuid PRIMARY KEY, charged_by text);
  CREATE FUNCTION public.proc_confirm(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$
    INSERT INTO public.proc_orders VALUES ((context ->> 'saga_id')::uuid, context ->> 'charged_by');
    SELECT '{"confirmed": true}'::jsonb $$;
`;

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

t.test('a worker process SIGKILLed mid-step: the lease expires, another worker retries the step, the saga completes', async (t) => {
  const { url, client } = await procDatabase(t);
  const [a, b] = await Promise.all([
    startWorkerProcess(t, 'saga-worker-process.mjs', { DATABASE_URL: url, PROC_MODE: 'hang', PROC_WORKER: 'worker-a', PROC_TIMEOUT: '1' }),
    startWorkerProcess(t, 'saga-worker-process.mjs', { DATABASE_URL: url, PROC_MODE: 'normal', PROC_WORKER: 'worker-b', PROC_TIMEOUT: '1', PROC_START_PAUSED: '1' }),
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
    startWorkerProcess(t, 'saga-worker-process.mjs', { DATABASE_URL: url, PROC_MODE: 'slow', PROC_SLOW_MS: '300', PROC_WORKER: 'worker-a', PROC_TIMEOUT: '1' }),
    startWorkerProcess(t, 'saga-worker-process.mjs', { DATABASE_URL: url, PROC_MODE: 'normal', PROC_WORKER: 'worker-b', PROC_TIMEOUT: '1', PROC_START_PAUSED: '1' }),
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
