// 1,000 order sagas at once (examples/order-saga) with TypeScript workers in three processes'
// worth of pools and cancellations racing them (the all-SQL, daemon-driven run is in
// saga-daemon.test.ts). Every saga must end in a terminal state and the shop's tables must
// balance: stock and money taken exactly for the completed orders, everything of a compensated or
// cancelled order given back, and no confirmed order that was not paid for. Also: a SQL step that
// loses a deadlock is not charged an attempt.
import t from 'tap';
import pg from 'pg';
import { createSagaWorker, InvalidStateError, LeaseLostError } from '../client/index.ts';
import { createOrderSaga } from '../examples/order-saga/index.ts';
import { freshDatabase, query } from './helpers/db.ts';
import { newClient, waitUntil } from './fixtures/sagas.ts';
import { assertConsistent, orders, SAGAS, shop, terminalCount } from './fixtures/order-sagas.ts';

t.test('1,000 concurrent order sagas with TypeScript workers, cancellations racing them', async (t) => {
  const { url, client } = await shop(t);
  // Three workers, each with its own pool, as three processes would have.
  const workerClients = await Promise.all([0, 1, 2].map(() => newClient(t, url, 4)));
  const sagas = workerClients.map((c) => createOrderSaga(c.connection));
  await sagas[0]!.register(client);
  const lost: string[] = [];
  const workers = workerClients.map((c, i) =>
    createSagaWorker({
      client: c,
      sagas: [sagas[i]!],
      concurrency: 16,
      tickIntervalMs: 100,
      worker: `w${i}`,
      logger: { warn: () => {}, error: () => {} },
      onError: (error, task) => {
        if (error instanceof LeaseLostError && task !== undefined) lost.push(task.sagaId);
      },
    }),
  );
  t.teardown(() => Promise.all(workers.map((w) => w.stop({ timeoutMs: 2000 }))));

  const inputs = orders('ts');
  const saga = sagas[0]!;
  const ids = await Promise.all(inputs.map((input) => saga.start(client, input, { idempotencyKey: input.order_id })));
  t.equal(new Set(ids).size, SAGAS, 'one saga per order');
  // The same orders submitted again, concurrently, are the same sagas.
  const again = await Promise.all(inputs.slice(0, 100).map((input) => saga.start(client, input, { idempotencyKey: input.order_id })));
  t.same(again, ids.slice(0, 100), 'resubmitted orders return their sagas');

  let cancelled = 0;
  let refused = 0;
  await Promise.all(
    ids
      .filter((_, i) => i % 10 === 5)
      .map(async (id) => {
        try {
          await client.sagas.cancel(id, 'customer cancelled');
          cancelled += 1;
        } catch (error) {
          if (!(error instanceof InvalidStateError)) throw error;
          refused += 1; // it had already ended or was compensating
        }
      }),
  );
  t.equal(cancelled + refused, 100, `cancellations: ${cancelled} applied, ${refused} too late`);
  await waitUntil('1,000 sagas to end', async () => (await terminalCount(url)) === SAGAS, 50_000);
  const statuses = await assertConsistent(t, url, 'shop.order');
  t.equal(statuses.cancelled ?? 0, cancelled, 'every applied cancellation ended cancelled');
  t.ok(workers.every((w) => w.stats.completed > 0), 'all three workers took part');
  // No worker died, so a worker loses a lease only to a cancellation, which fences it off.
  const [lostNotCancelled] = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pgrelay.sagas WHERE id = ANY($1::uuid[]) AND status <> 'cancelled'`, [lost]);
  t.equal(lostNotCancelled!.n, 0, `the ${lost.length} results dropped for a lost lease all belong to cancelled sagas`);
});

t.test('a SQL step that loses a deadlock is run again later, not counted as a failed attempt', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  await query(
    url,
    `CREATE TABLE public.rows (id text PRIMARY KEY, n int NOT NULL);
     INSERT INTO public.rows VALUES ('a', 0), ('b', 0);
     CREATE FUNCTION public.touch_a_then_b(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
     BEGIN
       UPDATE public.rows SET n = n + 1 WHERE id = 'a';
       UPDATE public.rows SET n = n + 1 WHERE id = 'b';
       RETURN '{}';
     END $$;
     SELECT pgrelay.saga_define('deadlock', '{"steps": [{"name": "touch", "action": {"sql": "public.touch_a_then_b"}, "max_attempts": 1}]}');`,
  );
  const client = await newClient(t, url);
  const holder = new pg.Client({ connectionString: url });
  const starter = new pg.Client({ connectionString: url });
  await Promise.all([holder.connect(), starter.connect()]);
  t.teardown(() => Promise.all([holder.end(), starter.end()]));
  // A backend checks for a deadlock once, deadlock_timeout after it starts waiting. The saga's
  // backend waits first; its check must come after the holder closes the cycle (well within 3 s)
  // and long before the holder's own check: so the saga's backend is the victim.
  await starter.query(`SET deadlock_timeout = '3s'`);
  await holder.query(`SET deadlock_timeout = '60s'`);
  await holder.query('BEGIN');
  await holder.query(`UPDATE public.rows SET n = n + 100 WHERE id = 'b'`);
  const started = starter.query<{ id: string }>(`SELECT pgrelay.saga_start('deadlock', '{}') AS id`); // locks a, waits for b
  await waitUntil('the saga to wait for row b', async () => {
    const [row] = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`);
    return row!.n === 1;
  });
  const holderWaits = holder.query(`UPDATE public.rows SET n = n + 100 WHERE id = 'a'`); // closes the cycle
  const id = (await started).rows[0]!.id;
  await holderWaits;
  await holder.query('COMMIT');
  const after = await client.sagas.status(id);
  t.equal(after.status, 'running', 'the saga did not fail: its step lost a lock race, not its one attempt');
  t.match(after.steps[0], { status: 'ready', attempts: 0, last_error: /deadlock detected.*40P01/ });
  await waitUntil('the retry to be due', async () => (await client.sagas.tick()) > 0 || (await client.sagas.status(id)).status !== 'running', 10_000);
  const done = await client.sagas.status(id);
  t.equal(done.status, 'completed', 'saga_tick ran the step again and it succeeded');
  t.match(done.steps[0], { status: 'succeeded', attempts: 1 });
  t.same(await query(url, 'SELECT id, n FROM public.rows ORDER BY id'), [{ id: 'a', n: 101 }, { id: 'b', n: 101 }], 'the step took effect once');
});
