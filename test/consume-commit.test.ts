// How the in-process consumer commits, and why at-least-once and fencing survive it:
//  - the acknowledgement (complete_batch) commits without waiting for the WAL flush; an
//    acknowledgement a crash loses is, to the database, one that never committed: the batch stays
//    leased until lease_seconds pass, then comes again with a new fencing token, and the stale
//    token can no longer acknowledge it;
//  - the lease (fetch_batch) is still committed durably, and WAL is flushed in order, so a lease
//    taken after an acknowledgement makes that acknowledgement durable too.
import t from 'tap';
import { sql } from 'slonik';
import { z } from 'zod';
import { createClient, LeaseLostError, type Delivery } from '../client/index.ts';
import { completeBatch, fetchBatch } from '../client/consume.ts';
import { connect, freshDatabase } from './helpers/db.ts';
import { failure } from './helpers/errors.ts';

t.test('the acknowledgement skips the WAL flush; one lost in a crash means redelivery after the lease, with a new token', async (t) => {
  const db = await freshDatabase(t);
  const client = await createClient({ connectionString: db.connectionString, maximumPoolSize: 3 });
  t.teardown(() => client.end());
  await client.subscriptions.subscribe('acks', ['orders'], { type: 'consumer' }, { start: 'earliest', lease_seconds: 1 });
  await client.publish({ topic: 'orders', key: 'k', type: 'placed', data: { n: 1 } });
  const c = await connect(t, db.connectionString, 'acks');

  let batch: Delivery[] = [];
  const deadline = Date.now() + 15_000;
  while (batch.length === 0 && Date.now() < deadline) {
    batch = await fetchBatch(client.connection, 'acks', 'first', null);
    if (batch.length === 0) await new Promise((resolve) => setTimeout(resolve, 20));
  }
  t.equal(batch.length, 1, 'the message is leased');
  const first = batch[0]!;
  const outcome = { acked: [first.message.position], failed: [], errors: [], latenciesMs: [] };

  // The statement the client acknowledges with turns synchronous_commit off for its own
  // transaction (seen here inside a transaction that is then rolled back: the lost commit).
  const setting = await client.connection
    .transaction(async (tx) => {
      await completeBatch(tx, first, outcome);
      const value = await tx.oneFirst(sqlShow());
      throw Object.assign(new Error('crash before the flush'), { value });
    })
    .catch((error: { value?: string }) => error.value);
  t.equal(setting, 'off', 'the acknowledgement commits without waiting for the WAL flush');
  const { rows: stillLeased } = await c.query<{ lease_owner: string | null; cursor_position: string }>(
    `SELECT lease_owner, cursor_position::text FROM pgrelay.subscription_partitions WHERE subscription = 'acks'`,
  );
  t.same(stillLeased.map((r) => r.lease_owner), ['first'], 'after the lost acknowledgement the batch is still leased to its consumer');
  t.same(stillLeased.map((r) => r.cursor_position), ['0'], 'and the cursor has not moved');

  const early = await fetchBatch(client.connection, 'acks', 'second', null);
  t.same(early, [], 'nobody else gets it while the lease holds');

  await new Promise((resolve) => setTimeout(resolve, 1_200)); // lease_seconds
  const again = await fetchBatch(client.connection, 'acks', 'second', null);
  t.same(again.map((d) => d.message.position), [first.message.position], 'after the lease expires the batch is delivered again');
  t.ok(BigInt(again[0]!.leaseToken) > BigInt(first.leaseToken), 'with a new fencing token');

  const stale = await failure(() => completeBatch(client.connection, first, outcome));
  t.type(stale, LeaseLostError, 'the stale token can no longer acknowledge it');
  t.equal((stale as LeaseLostError | undefined)?.sqlState, 'PR005');
  await completeBatch(client.connection, again[0]!, { ...outcome, acked: [again[0]!.message.position] });
  const { rows: done } = await c.query<{ lease_owner: string | null; delivered_count: string }>(
    `SELECT lease_owner, delivered_count::text FROM pgrelay.subscription_partitions WHERE subscription = 'acks'`,
  );
  t.same(done, [{ lease_owner: null, delivered_count: '1' }], 'the new holder acknowledges it once');
});

function sqlShow() {
  return sql.type(z.object({ synchronous_commit: z.string() }))`SHOW synchronous_commit`;
}
