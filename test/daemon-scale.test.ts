// Scaling out (DESIGN "Scaling out", invariant 3): two real daemon processes on one subscription
// with several partitions share it through leases: every committed message is delivered, none
// twice to a healthy sink, each key in order. The sink is slow enough that a key's run in one
// batch outlasts lease_seconds, so the leases only hold because the daemons heartbeat them: a
// lost lease would show up as a duplicate. Then one of two daemons is SIGKILLed mid-stream. And
// the fair share: two live daemons split a backlog, neither holding more than half the partitions.
import t from 'tap';
import { freshDatabase } from './helpers/db.ts';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.ts';
import { startWebhookReceiver } from './helpers/webhook-receiver.ts';
import { connect, daemonPort, duplicates, killAtEnd, perKeyOrderViolations, produce } from './fixtures/daemon.ts';

/**
 * Each daemon's pgrelay_delivered_total for the subscription. A daemon counts a batch once it is
 * completed, just after the sink answered: wait (bounded) until the counts reach the whole.
 */
async function deliveredCounts(ports: readonly number[], subscription: string, whole: number): Promise<number[]> {
  const pattern = new RegExp(`pgrelay_delivered_total\\{subscription="${subscription}"\\} (\\d+)`);
  const deadline = Date.now() + 10_000;
  for (;;) {
    const counts = await Promise.all(
      ports.map(async (port) => Number(pattern.exec(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text())?.[1] ?? 0)),
    );
    if (counts.reduce((a, b) => a + b, 0) >= whole || Date.now() > deadline) return counts;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

t.jobs = 2; // the two cases are independent (a database, a webhook and daemons each)

t.test('two daemons, one subscription, six partitions: all delivered, nothing twice', { buffered: true }, async (t) => {
  const db = await freshDatabase(t);
  const receiver = await startWebhookReceiver(t, { delayMs: 200 });
  const admin = await connect(db.connectionString, 'test-admin');
  t.teardown(() => admin.end());
  await admin.query(`SELECT pgrelay.subscribe('shared', '{orders}', $1::jsonb, '{"partitions":6,"batch_size":40,"lease_seconds":2}')`, [
    JSON.stringify({ type: 'webhook', url: receiver.url }),
  ]);
  const daemons = (
    await Promise.all([0, 1].map(() => startDaemonProcess({ connectionString: db.connectionString, args: ['--port', '0'] })))
  ).map((daemon) => killAtEnd(t, daemon));
  const ports = await Promise.all(daemons.map(daemonPort));

  // Few keys per partition: a key's run in one batch (200 ms a message) outlasts the lease.
  const keys = Array.from({ length: 12 }, (_, i) => `k${i}`);
  const produced = await produce(db.connectionString, { producers: 4, transactionsEach: 25, keys, maxPerTransaction: 3 });
  const committed = new Set(produced.committed.map((m) => m.id));
  t.ok(committed.size > 100, `${committed.size} committed`);

  await receiver.waitFor(() => new Set(receiver.acked().map((r) => r.id)).size >= committed.size, 45_000, 'everything delivered');
  const acked = receiver.acked();
  t.same(new Set(acked.map((r) => r.id)), committed, 'exactly the committed messages');
  t.same(duplicates(acked), [], 'no message delivered twice');
  t.same(perKeyOrderViolations(acked, produced.committed), [], 'per-key order');
  t.same(receiver.problems, []);

  const delivered = await deliveredCounts(ports, 'shared', committed.size);
  // This run trickles in while it is delivered, so the split is up to who is awake; the fair
  // share is asserted on a backlog below.
  t.comment(`split between the daemons: ${delivered.join(' + ')}`);
  t.equal(delivered[0]! + delivered[1]!, committed.size, "the daemons' delivered counts add up to the whole, once each");
  t.same(await Promise.all(daemons.map((d) => d.kill('SIGTERM'))), [0, 0], 'both exit 0 on SIGTERM');
});

t.test('two live daemons split a backlog fairly: each delivers a substantial share', { buffered: true }, async (t) => {
  const db = await freshDatabase(t);
  const receiver = await startWebhookReceiver(t, { delayMs: 15 });
  const admin = await connect(db.connectionString, 'test-admin');
  t.teardown(() => admin.end());
  await admin.query(`SELECT pgrelay.subscribe('fair', '{orders}', $1::jsonb, '{"partitions":6,"batch_size":10,"lease_seconds":2}')`, [
    JSON.stringify({ type: 'webhook', url: receiver.url }),
  ]);
  const daemons = (
    await Promise.all([0, 1].map(() => startDaemonProcess({ connectionString: db.connectionString, args: ['--port', '0'] })))
  ).map((daemon) => killAtEnd(t, daemon));
  const ports = await Promise.all(daemons.map(daemonPort));
  // Both daemons' idle loops poll, which marks them alive: wait until both count.
  const deadline = Date.now() + 20_000;
  for (;;) {
    const { rows } = await admin.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pgrelay.subscription_consumers WHERE subscription = 'fair' AND seen_at > clock_timestamp() - interval '2 seconds'`,
    );
    if (rows[0]!.n === 2) break;
    if (Date.now() > deadline) throw new Error(`both daemons alive: ${rows[0]!.n} within 20 s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  // One commit: a backlog of 60 keys spread over the six partitions, there all at once.
  const { rows: published } = await admin.query<{ id: string }>(
    `SELECT pgrelay.publish('orders', 'k' || (i % 60), 'test.event', jsonb_build_object('i', i))::text AS id FROM generate_series(1, 900) AS i`,
  );
  const committed = new Set(published.map((row) => row.id));
  t.equal(committed.size, 900);
  await receiver.waitFor(() => new Set(receiver.acked().map((r) => r.id)).size >= committed.size, 45_000, 'everything delivered');
  t.same(new Set(receiver.acked().map((r) => r.id)), committed, 'exactly the committed messages');
  t.same(duplicates(receiver.acked()), [], 'no message delivered twice');

  const delivered = await deliveredCounts(ports, 'fair', committed.size);
  t.comment(`split between the daemons: ${delivered.join(' + ')}`);
  t.equal(delivered[0]! + delivered[1]!, committed.size, "the daemons' delivered counts add up to the whole");
  for (const [i, n] of delivered.entries()) t.ok(n >= committed.size / 4, `daemon ${i} delivered at least a quarter (${n} of ${committed.size})`);
  t.same(await Promise.all(daemons.map((d) => d.kill('SIGTERM'))), [0, 0], 'both exit 0 on SIGTERM');
});

t.test('one of two daemons SIGKILLed mid-stream: the other takes its partitions over, nothing lost', { buffered: true }, async (t) => {
  const db = await freshDatabase(t);
  const receiver = await startWebhookReceiver(t, { delayMs: 3 });
  const admin = await connect(db.connectionString, 'test-admin');
  t.teardown(() => admin.end());
  await admin.query(`SELECT pgrelay.subscribe('shared', '{orders}', $1::jsonb, '{"partitions":4,"batch_size":20,"lease_seconds":1}')`, [
    JSON.stringify({ type: 'webhook', url: receiver.url }),
  ]);
  const [doomed, survivor] = (await Promise.all([0, 1].map(() => startDaemonProcess({ connectionString: db.connectionString })))).map(
    (daemon) => killAtEnd(t, daemon),
  ) as [DaemonProcess, DaemonProcess];
  let producing = true;
  const producing$ = produce(db.connectionString, {
    producers: 3,
    transactionsEach: 100_000,
    keys: Array.from({ length: 12 }, (_, i) => `k${i}`),
    pauseMs: 50,
    until: () => !producing,
  });
  await receiver.waitFor(() => receiver.requests.length >= 40, 20_000, 'both daemons at work');
  t.equal(await doomed.kill('SIGKILL'), 'SIGKILL');
  const afterKill = receiver.requests.length;
  await receiver.waitFor(() => receiver.requests.length >= afterKill + 40, 20_000, 'the survivor goes on');
  producing = false;
  const produced = await producing$;
  const committed = new Set(produced.committed.map((m) => m.id));
  await receiver.waitFor(
    () => {
      const acked = new Set(receiver.acked().map((r) => r.id));
      return [...committed].every((id) => acked.has(id));
    },
    30_000,
    'everything delivered by the survivor',
  );
  t.same(new Set(receiver.acked().map((r) => r.id)), committed, 'every committed message, at least once');
  t.same(perKeyOrderViolations(receiver.acked(), produced.committed), [], 'per-key order, redeliveries included');
  t.equal(survivor.child.exitCode, null);
  t.equal(await survivor.kill('SIGTERM'), 0);
});
