// The consumer loop's node-postgres path (ConsumeOptions.pgPool, what createClient passes to
// consume): the same deliveries as the slonik path, field for field; the same typed errors; and
// createClient's consumers really run their statements on it.
import t from 'tap';
import { createClient, LeaseLostError, type Message } from '../client/index.ts';
import { createBarePool } from '../client/pool.ts';
import { pgStatements, slonikStatements } from '../client/consume.ts';
import { connect, freshDatabase } from './helpers/db.ts';

t.test('node-postgres and slonik fetch the same deliveries; a stale token is LeaseLostError', async (t) => {
  const { connectionString: url } = await freshDatabase(t);
  const client = await createClient({ connectionString: url, maximumPoolSize: 2 });
  t.teardown(() => client.end());
  const pool = createBarePool(url, { maximumPoolSize: 2 });
  t.teardown(() => pool.end());
  await client.subscriptions.subscribe('same', ['orders'], { type: 'consumer' }, { start: 'earliest' });
  await client.publish({ topic: 'orders', key: 'k-1', type: 'placed', data: { n: 1, nested: { a: [1, 'two'] } }, metadata: { trace: 'x' } });
  await client.publish({ topic: 'orders', key: null, type: 'placed', data: 'a string' });

  const viaPg = pgStatements(pool);
  const viaSlonik = slonikStatements(client.connection);
  // Another database's open transaction on a shared server holds the read horizon: wait it out.
  let first = await viaPg.fetch('same', 'me', null);
  for (const deadline = Date.now() + 30_000; first.length === 0 && Date.now() < deadline; ) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    first = await viaPg.fetch('same', 'me', null);
  }
  t.equal(first.length, 2, 'node-postgres: both messages');
  const c = await connect(t, url, 'release');
  await c.query('SELECT pgrelay.release_batch($1, $2, $3)', ['same', first[0]!.partition, first[0]!.leaseToken]);
  const second = await viaSlonik.fetch('same', 'me', null);
  const withoutToken = (ds: typeof first) => ds.map(({ leaseToken: _, ...rest }) => rest);
  t.same(withoutToken(first), withoutToken(second), 'the same deliveries, field for field (types included)');
  t.strictSame(withoutToken(first), withoutToken(second), 'strictly: no number/string or Date/string differences');
  t.match(first[0]!.leaseToken, /^\d+$/, 'the lease token is a decimal string');
  t.match(first[0]!.message.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'created_at is an ISO string');

  const outcome = { acked: second.map((d) => d.message.position), failed: [], errors: [], latenciesMs: [] };
  const stale = await viaPg.complete(first[0]!, outcome).then(() => undefined, (error: unknown) => error);
  t.type(stale, LeaseLostError, 'node-postgres: completing with the released token is LeaseLostError');
  t.equal((stale as LeaseLostError).sqlState, 'PR005', 'SQLSTATE PR005');
  await viaPg.complete(second[0]!, outcome);
  t.same(await viaPg.fetch('same', 'me', null), [], 'completed: nothing left');
});

t.test("createClient's consume runs its loop on its own node-postgres pool", async (t) => {
  const { connectionString: url } = await freshDatabase(t);
  const client = await createClient({ connectionString: url, maximumPoolSize: 2 });
  t.teardown(() => client.end());
  await client.subscriptions.subscribe('wired', ['orders'], { type: 'consumer' }, { start: 'earliest' });
  const seen: Message[] = [];
  const consumer = await client.consume('wired', async (message) => {
    seen.push(message);
  }, { idlePollMs: 50 });
  t.teardown(() => consumer.stop());
  await client.publish({ topic: 'orders', key: 'k', type: 'placed', data: { n: 1 } });
  const deadline = Date.now() + 30_000;
  while (seen.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
  t.same(seen.map((m) => m.data), [{ n: 1 }], 'delivered');
  const c = await connect(t, url, 'observer');
  const { rows } = await c.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pgrelay-direct'`);
  t.ok(rows[0]!.n >= 1, "a pgrelay-direct connection (the client's bare pool) serves the loop");
  await consumer.stop();
});
