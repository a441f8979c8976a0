// Scaling out (DESIGN "Scaling out", invariant 3): two real daemon processes on one subscription
// with several partitions share it through leases: every committed message is delivered, none
// twice to a healthy sink, each key in order, and both daemons do part of the work. The sink is
// slow enough that a key's run in one batch outlasts lease_seconds, so the leases only hold
// because the daemons heartbeat them: a lost lease would show up as a duplicate.
import t from 'tap';
import { freshDatabase } from './helpers/db.ts';
import { startDaemonProcess } from './helpers/daemon-process.ts';
import { startWebhookReceiver } from './helpers/webhook-receiver.ts';
import { connect, daemonPort, duplicates, killAtEnd, perKeyOrderViolations, produce } from './fixtures/daemon.ts';

t.test('two daemons, one subscription, six partitions: all delivered, nothing twice', async (t) => {
  const db = await freshDatabase(t);
  const receiver = await startWebhookReceiver(t, { delayMs: 250 });
  const admin = await connect(db.connectionString, 'test-admin');
  t.teardown(() => admin.end());
  await admin.query(`SELECT pgrelay.subscribe('shared', '{orders}', $1::jsonb, '{"partitions":6,"batch_size":40,"lease_seconds":2}')`, [
    JSON.stringify({ type: 'webhook', url: receiver.url }),
  ]);
  const daemons = [
    killAtEnd(t, await startDaemonProcess({ connectionString: db.connectionString, args: ['--port', '0'] })),
    killAtEnd(t, await startDaemonProcess({ connectionString: db.connectionString, args: ['--port', '0'] })),
  ];
  const ports = await Promise.all(daemons.map(daemonPort));

  const keys = Array.from({ length: 24 }, (_, i) => `k${i}`);
  const produced = await produce(db.connectionString, { producers: 4, transactionsEach: 40, keys, maxPerTransaction: 3 });
  const committed = new Set(produced.committed.map((m) => m.id));
  t.ok(committed.size > 150, `${committed.size} committed`);

  await receiver.waitFor(() => new Set(receiver.acked().map((r) => r.id)).size >= committed.size, 45_000, 'everything delivered');
  const acked = receiver.acked();
  t.same(new Set(acked.map((r) => r.id)), committed, 'exactly the committed messages');
  t.same(duplicates(acked), [], 'no message delivered twice');
  t.same(perKeyOrderViolations(acked, produced.committed), [], 'per-key order');
  t.same(receiver.problems, []);

  const delivered = await Promise.all(
    ports.map(async (port) => {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      return Number(/pgrelay_delivered_total\{subscription="shared"\} (\d+)/.exec(text)?.[1] ?? 0);
    }),
  );
  t.ok(delivered.every((n) => n > 0), `both daemons delivered: ${delivered.join(' + ')}`);
  t.equal(delivered[0]! + delivered[1]!, committed.size, 'their counts add up to the whole');
  t.same(await Promise.all(daemons.map((d) => d.kill('SIGTERM'))), [0, 0], 'both exit 0 on SIGTERM');
});

t.test('one of two daemons SIGKILLed mid-stream: the other takes its partitions over, nothing lost', async (t) => {
  const db = await freshDatabase(t);
  const receiver = await startWebhookReceiver(t, { delayMs: 3 });
  const admin = await connect(db.connectionString, 'test-admin');
  t.teardown(() => admin.end());
  await admin.query(`SELECT pgrelay.subscribe('shared', '{orders}', $1::jsonb, '{"partitions":4,"batch_size":20,"lease_seconds":1}')`, [
    JSON.stringify({ type: 'webhook', url: receiver.url }),
  ]);
  const [doomed, survivor] = [
    killAtEnd(t, await startDaemonProcess({ connectionString: db.connectionString })),
    killAtEnd(t, await startDaemonProcess({ connectionString: db.connectionString })),
  ];
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
