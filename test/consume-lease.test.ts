// In-process consumers (client.consume): an unknown subscription is refused with NotFoundError
// (PR003) instead of a loop that retries forever, and a batch that takes longer than
// lease_seconds keeps its lease by heartbeat, so a second consumer never delivers it again.
import t from 'tap';
import { createClient, NotFoundError, type Message } from '../client/index.ts';
import { freshDatabase } from './helpers/db.ts';

t.test('consume on an unknown subscription rejects with NotFoundError', async (t) => {
  const db = await freshDatabase(t);
  const client = await createClient({ connectionString: db.connectionString });
  t.teardown(() => client.end());
  const error = await client.consume('no-such-subscription', async () => {}).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.type(error, NotFoundError);
  t.equal((error as NotFoundError).sqlState, 'PR003');
  t.equal((error as NotFoundError).argument, 'subscription');
  t.match((error as Error).message, /no-such-subscription/);
});

t.test('a batch slower than lease_seconds keeps its lease: delivered once across two consumers', async (t) => {
  const db = await freshDatabase(t);
  const client = await createClient({ connectionString: db.connectionString });
  t.teardown(() => client.end());
  await client.subscriptions.subscribe('slow', ['orders'], { type: 'consumer' }, { lease_seconds: 1 });
  const seen: Array<{ consumer: string; position: string }> = [];
  const handler = (consumer: string) => async (message: Message) => {
    seen.push({ consumer, position: message.position });
    await new Promise((resolve) => setTimeout(resolve, 2_500)); // 2.5 lease periods
  };
  const errors: unknown[] = [];
  const first = await client.consume('slow', handler('first'), { consumer: 'first', idlePollMs: 50, onError: (e) => errors.push(e) });
  await client.publish({ topic: 'orders', key: 'k', type: 'order.placed', data: {} });
  const deadline = Date.now() + 20_000;
  while (seen.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.equal(seen.length, 1, 'the first consumer took the message');
  // The second consumer polls fast all through the slow delivery.
  const second = await client.consume('slow', handler('second'), { consumer: 'second', idlePollMs: 50, onError: (e) => errors.push(e) });
  await new Promise((resolve) => setTimeout(resolve, 3_500));
  await Promise.all([first.stop(), second.stop()]);
  t.same(seen.map((s) => s.consumer), ['first'], 'delivered once, by the first consumer');
  t.equal(first.stats.leaseLost, 0, 'the lease was never lost');
  t.equal(first.stats.delivered, 1, 'and the batch was completed');
  t.same(errors, []);
});
