// 1,000 all-SQL order sagas (examples/order-saga) with daemon processes as the only thing moving
// them: no TypeScript worker alive, and two daemons, so each saga_tick races another. Every saga
// must end in a terminal state and the shop's tables must balance, as in saga-concurrency.test.ts.
import t from 'tap';
import { orderSagaSqlOnly } from '../examples/order-saga/index.ts';
import { startDaemonProcess } from './helpers/daemon-process.ts';
import { query } from './helpers/db.ts';
import { sleep, waitUntil } from './fixtures/sagas.ts';
import { assertConsistent, orders, SAGAS, shop, terminalCount } from './fixtures/order-sagas.ts';

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

