// 1,000 order sagas at once (examples/order-saga): with TypeScript workers in three processes'
// worth of pools and cancellations racing them; and all-SQL with daemon processes as the only
// thing moving them (no TypeScript worker alive; two daemons, so each saga_tick races another).
// Every saga must end in a terminal state and the shop's tables must balance: stock and money taken exactly for the completed orders, everything
// of a compensated or cancelled order given back, and no confirmed order that was not paid for.
import t, { type Test } from 'tap';
import pg from 'pg';
import { createSagaWorker, InvalidStateError, LeaseLostError, type PgrelayClient } from '../client/index.ts';
import { createOrderSaga, orderSagaSqlOnly, SHOP_SCHEMA, type OrderInput } from '../examples/order-saga/index.ts';
import { startDaemonProcess } from './helpers/daemon-process.ts';
import { freshDatabase, query } from './helpers/db.ts';
import { newClient, sleep, waitUntil } from './fixtures/sagas.ts';

const SAGAS = 1000;
const SKUS = 5;
const STOCK = 250; // per sku; about 300 are ordered per sku, so some orders run out
const CUSTOMERS = 50;
const BALANCE = 400; // per customer; about 500 is spent per customer, so some cannot pay

function orders(run: string): OrderInput[] {
  return Array.from({ length: SAGAS }, (_, i) => ({
    order_id: `${run}-${i}`,
    sku: `sku-${i % SKUS}`,
    quantity: 1 + (i % 2),
    customer: `customer-${i % CUSTOMERS}`,
    amount: 10 + (i % 31),
    ...(i % 3 === 0 ? { flaky_attempts: 1 } : {}),
  }));
}

async function shop(t: Test): Promise<{ url: string; client: PgrelayClient }> {
  const db = await freshDatabase(t);
  await query(db.connectionString, SHOP_SCHEMA);
  await query(db.connectionString, `INSERT INTO shop.inventory SELECT 'sku-' || n, ${STOCK} FROM generate_series(0, ${SKUS - 1}) n`);
  await query(db.connectionString, `INSERT INTO shop.accounts SELECT 'customer-' || n, ${BALANCE} FROM generate_series(0, ${CUSTOMERS - 1}) n`);
  return { url: db.connectionString, client: await newClient(t, db.connectionString, 10) };
}

const terminalCount = async (url: string): Promise<number> =>
  (await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pgrelay.sagas WHERE status IN ('completed', 'compensated', 'failed', 'cancelled')`))[0]!.n;

/** Every invariant of the shop, checked in SQL against the sagas' end states. */
async function assertConsistent(t: Test, url: string, sagaType: string): Promise<Record<string, number>> {
  const statuses = Object.fromEntries(
    (await query<{ status: string; n: number }>(url, `SELECT status, count(*)::int AS n FROM pgrelay.sagas WHERE saga_type = $1 GROUP BY status`, [sagaType])).map(
      (r) => [r.status, r.n],
    ),
  );
  t.equal(Object.values(statuses).reduce((a, b) => a + b, 0), SAGAS, `${SAGAS} sagas`);
  const stuck = await query<{ status: string; step: string; step_status: string; last_error: string }>(
    url,
    `SELECT s.status, st.name AS step, st.status AS step_status, st.last_error FROM pgrelay.sagas s JOIN pgrelay.saga_steps st ON st.saga_id = s.id
     WHERE s.saga_type = $1 AND s.status NOT IN ('completed', 'compensated', 'cancelled') AND st.last_error IS NOT NULL LIMIT 5`,
    [sagaType],
  );
  t.same(Object.keys(statuses).filter((s) => !['completed', 'compensated', 'cancelled'].includes(s)), [], `every saga completed, compensated or cancelled: ${JSON.stringify(statuses)} ${JSON.stringify(stuck)}`);
  t.ok((statuses.completed ?? 0) > 0 && (statuses.compensated ?? 0) > 0, 'some orders went through and some were undone');

  const [wrong] = await query<{ completed_unpaid: number; undone_kept: number; confirmed_not_completed: number; steps_not_final: number }>(
    url,
    `WITH s AS (SELECT id, status, input ->> 'order_id' AS order_id, (input ->> 'quantity')::int AS quantity,
                       (input ->> 'amount')::numeric AS amount FROM pgrelay.sagas WHERE saga_type = $1)
     SELECT
       (SELECT count(*)::int FROM s LEFT JOIN shop.reservations r USING (order_id) LEFT JOIN shop.payments p USING (order_id)
                                     LEFT JOIN shop.orders o USING (order_id)
         WHERE s.status = 'completed' AND (r.released IS DISTINCT FROM false OR r.quantity <> s.quantity
                                           OR p.refunded IS DISTINCT FROM false OR p.amount <> s.amount OR o.status IS DISTINCT FROM 'confirmed')) AS completed_unpaid,
       (SELECT count(*)::int FROM s LEFT JOIN shop.reservations r USING (order_id) LEFT JOIN shop.payments p USING (order_id)
         WHERE s.status <> 'completed' AND ((r.order_id IS NOT NULL AND NOT r.released) OR (p.order_id IS NOT NULL AND NOT p.refunded))) AS undone_kept,
       (SELECT count(*)::int FROM shop.orders o JOIN s USING (order_id) WHERE s.status <> 'completed') AS confirmed_not_completed,
       (SELECT count(*)::int FROM pgrelay.saga_steps st JOIN s ON s.id = st.saga_id
         WHERE st.status IN ('pending', 'ready', 'leased', 'compensation_ready', 'compensation_leased', 'unknown', 'succeeded')
           AND s.status <> 'completed') AS steps_not_final`,
    [sagaType],
  );
  t.same(wrong, { completed_unpaid: 0, undone_kept: 0, confirmed_not_completed: 0, steps_not_final: 0 }, 'each order: reserved, paid and confirmed exactly when its saga completed');

  const [totals] = await query<{ stock_taken: number; stock_held: number; money_taken: string; money_held: string }>(
    url,
    `SELECT (SELECT ${SKUS * STOCK} - sum(available) FROM shop.inventory)::int AS stock_taken,
            (SELECT coalesce(sum(quantity), 0) FROM shop.reservations WHERE NOT released)::int AS stock_held,
            (SELECT ${CUSTOMERS * BALANCE} - sum(balance) FROM shop.accounts)::text AS money_taken,
            (SELECT coalesce(sum(amount), 0) FROM shop.payments WHERE NOT refunded)::text AS money_held`,
  );
  t.equal(totals!.stock_taken, totals!.stock_held, `stock taken from inventory (${totals!.stock_taken}) = held by reservations`);
  t.equal(Number(totals!.money_taken), Number(totals!.money_held), `money taken from accounts (${totals!.money_taken}) = held by payments`);
  return statuses;
}

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

t.test('1,000 concurrent all-SQL order sagas, moved only by two daemon processes', async (t) => {
  const { url, client } = await shop(t);
  await client.sagas.define(orderSagaSqlOnly.type, orderSagaSqlOnly.definition);
  const inputs = orders('sql');
  const chunks = Array.from({ length: 10 }, (_, c) => inputs.slice(c * 100, c * 100 + 100));
  await Promise.all(chunks.map((chunk) => client.sagas.startMany(orderSagaSqlOnly.type, chunk.map((input) => ({ input, idempotencyKey: input.order_id })))));
  const waiting = SAGAS - (await terminalCount(url));
  t.ok(waiting >= 200, `${waiting} sagas wait for a retry after backoff: nothing in this process will tick them`);
  await sleep(300);
  t.equal(SAGAS - (await terminalCount(url)), waiting, 'with no driver, none of them moves');

  // Two daemons drive the same sagas: saga_tick locks each saga (SKIP LOCKED), so no step runs twice.
  const daemons = await Promise.all([0, 1].map(() => startDaemonProcess({ connectionString: url })));
  t.teardown(() => Promise.all(daemons.map((d) => d.kill('SIGKILL'))));
  await waitUntil('1,000 sagas to end', async () => (await terminalCount(url)) === SAGAS, 50_000);
  await assertConsistent(t, url, 'shop.order-sql');
  const [retried] = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pgrelay.saga_steps WHERE name = 'charge' AND status = 'succeeded' AND attempts = 2`);
  t.ok(retried!.n > 0, `${retried!.n} charges succeeded on their second attempt, run by the daemon's saga_tick`);
  for (const daemon of daemons) t.equal(await daemon.kill('SIGTERM'), 0, 'a daemon stops cleanly on SIGTERM');
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
