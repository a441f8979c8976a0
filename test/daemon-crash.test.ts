// DESIGN invariant 5 with the real daemon process: SIGKILL at any moment of a stream loses nothing
// (every committed message reaches the webhook at least once, and a key's messages never overtake
// each other, redeliveries included); connections killed with pg_terminate_backend are re-opened
// and the daemon catches up; SIGTERM finishes the in-flight batch, releases its lease and exits 0.
import t, { type Test } from 'tap';
import { freshDatabase } from './helpers/db.ts';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.ts';
import { startWebhookReceiver, type WebhookReceiver } from './helpers/webhook-receiver.ts';
import { connect, killAtEnd, perKeyOrderViolations, produce, sleep, waitUntil, type Produced } from './fixtures/daemon.ts';

// The four cases are independent (a database, a webhook and daemons each) and spend most of their
// time waiting for processes to start and leases to expire: run them two at a time.
t.jobs = 2;

const KEYS = Array.from({ length: 10 }, (_, i) => `k${i}`);

async function setUp(t: Test, options: { delayMs?: number; subscription: string; leaseSeconds?: number }) {
  const db = await freshDatabase(t);
  const receiver = await startWebhookReceiver(t, { delayMs: options.delayMs });
  const admin = await connect(db.connectionString, 'test-admin');
  t.teardown(() => admin.end());
  await admin.query(`SELECT pgrelay.subscribe($1, '{orders}', $2::jsonb, $3::jsonb)`, [
    options.subscription,
    JSON.stringify({ type: 'webhook', url: receiver.url }),
    JSON.stringify({ partitions: 3, batch_size: 20, lease_seconds: options.leaseSeconds ?? 2, backoff: { initial_ms: 50, max_ms: 500 } }),
  ]);
  const start = async (): Promise<DaemonProcess> => killAtEnd(t, await startDaemonProcess({ connectionString: db.connectionString }));
  return { db, receiver, admin, start };
}

/** Waits until the webhook has acknowledged every committed message, then checks what it saw. */
async function expectAllDelivered(t: Test, receiver: WebhookReceiver, produced: Produced, timeoutMs: number): Promise<void> {
  const committed = new Set(produced.committed.map((m) => m.id));
  const ackedIds = () => new Set(receiver.acked().map((r) => r.id));
  await receiver.waitFor(
    () => {
      const acked = ackedIds();
      return [...committed].every((id) => acked.has(id));
    },
    timeoutMs,
    'every committed message acknowledged',
  );
  const acked = receiver.acked();
  t.same(receiver.problems, []);
  t.same(ackedIds(), committed, 'every committed message acknowledged at least once, nothing else');
  t.same(
    acked.filter((r) => produced.rolledBack.includes(r.id)),
    [],
    'no rolled-back message',
  );
  t.same(perKeyOrderViolations(acked, produced.committed), [], 'per-key order in the acknowledgement sequence');
  t.comment(`${produced.committed.length} committed, ${acked.length} acknowledgements (${acked.length - committed.size} redeliveries)`);
}

t.test('SIGKILL mid-stream, again and again: nothing lost, key order kept', { buffered: true }, async (t) => {
  const { db, receiver, start } = await setUp(t, { delayMs: 10, subscription: 'crashy', leaseSeconds: 1 }); // a killed daemon's leases expire fast
  let producing = true;
  const producing$ = produce(db.connectionString, {
    producers: 3,
    transactionsEach: 100_000,
    keys: KEYS,
    jitterMs: 20,
    pauseMs: 150,
    until: () => !producing,
  });
  const kills: Array<number | string> = [];
  for (let round = 0; round < 3; round += 1) {
    const started = Date.now();
    const daemon = await start();
    const before = receiver.requests.length;
    await receiver.waitFor(() => receiver.requests.length >= before + 15, 20_000, `round ${round}: the daemon delivers`);
    await sleep(Math.random() * 200);
    // Killed the moment a request arrives: that message is in flight, its batch not completed.
    const inFlight = receiver.requests.length;
    await receiver.waitFor(() => receiver.requests.length > inFlight, 20_000, `round ${round}: a request in flight`);
    kills.push(await daemon.kill('SIGKILL'));
    t.comment(`round ${round}: ${receiver.requests.length - before} requests in ${Date.now() - started} ms`);
  }
  producing = false;
  const produced = await producing$;
  t.same(kills, ['SIGKILL', 'SIGKILL', 'SIGKILL'], 'killed three times');
  t.ok(produced.committed.length > 60 && produced.rolledBack.length > 0, `${produced.committed.length} committed, some rolled back`);
  let mark = Date.now();
  const last = await start();
  t.comment(`last daemon started in ${Date.now() - mark} ms`);
  mark = Date.now();
  await expectAllDelivered(t, receiver, produced, 40_000);
  t.comment(`drained in ${Date.now() - mark} ms`);
  t.ok(receiver.acked().length > produced.committed.length, 'batches cut short by the kills were delivered again');
  t.equal(await last.kill('SIGTERM'), 0);
});

t.test('pg_terminate_backend on every daemon connection: it reconnects and catches up', { buffered: true }, async (t) => {
  const { db, receiver, admin, start } = await setUp(t, { delayMs: 2, subscription: 'cut' });
  const daemon = await start();
  let producing = true;
  const producing$ = produce(db.connectionString, { producers: 3, transactionsEach: 100_000, keys: KEYS, jitterMs: 20, until: () => !producing });
  const terminated: number[] = [];
  for (let round = 0; round < 2; round += 1) {
    const before = receiver.requests.length;
    await receiver.waitFor(() => receiver.requests.length >= before + 15, 20_000, `round ${round}: the daemon delivers`);
    // Both kinds back (the pool's and the LISTEN connection) before cutting them again.
    await waitUntil(
      async () =>
        (
          await admin.query(`SELECT DISTINCT application_name FROM pg_stat_activity
                              WHERE datname = current_database() AND application_name IN ('pgrelay-daemon', 'pgrelay-listen')`)
        ).rowCount === 2,
      20_000,
      `round ${round}: the daemon's connections are open`,
    );
    const { rows } = await admin.query<{ n: string }>(
      `SELECT count(pg_terminate_backend(pid))::text AS n FROM pg_stat_activity
        WHERE datname = current_database() AND application_name IN ('pgrelay-daemon', 'pgrelay-listen')`,
    );
    terminated.push(Number(rows[0]!.n));
  }
  producing = false;
  const produced = await producing$;
  t.ok(terminated.every((n) => n >= 2), `connections terminated each round: ${terminated.join(', ')}`);
  await expectAllDelivered(t, receiver, produced, 40_000);
  t.equal(daemon.child.exitCode, null, 'the daemon survived');
  await daemon.waitForLog((line) => line.msg === 'listen connection lost: reconnecting', 10_000);
  t.pass('its LISTEN connection was re-opened');
  // Idle again: a new message still wakes it (LISTEN or safety poll on fresh connections).
  await sleep(1500);
  const { rows } = await admin.query<{ id: string }>(`SELECT pgrelay.publish('orders', 'k-after', 'order.changed', '{}')::text AS id`);
  await receiver.waitFor(() => receiver.acked().some((r) => r.id === rows[0]!.id), 20_000, 'a message published after the cuts');
  t.pass('delivers what is published afterwards');
  t.equal(await daemon.kill('SIGTERM'), 0);
});

t.test('SIGTERM: the deliveries in flight finish, what was delivered is acknowledged, the lease released, exit 0', { buffered: true }, async (t) => {
  const { receiver, admin, start } = await setUp(t, { delayMs: 150, subscription: 'graceful' });
  const daemon = await start();
  await admin.query('BEGIN');
  const ids: string[] = [];
  for (let i = 0; i < 12; i += 1) {
    const { rows } = await admin.query<{ id: string }>(`SELECT pgrelay.publish('orders', 'k-one', 'order.changed', $1::jsonb)::text AS id`, [
      JSON.stringify({ i }),
    ]);
    ids.push(rows[0]!.id);
  }
  await admin.query('COMMIT');
  await receiver.waitFor(() => receiver.requests.length >= 1, 20_000, 'the batch is in flight');
  const deadline = new Promise<string>((resolve) => setTimeout(() => resolve('still running after 20 s'), 20_000).unref());
  t.equal(await Promise.race([daemon.kill('SIGTERM'), deadline]), 0, 'exit code 0');
  const before = receiver.acked().map((r) => r.id);
  t.ok(before.length >= 1, `${before.length} of 12 delivered before the exit`);
  t.same(before, ids.slice(0, before.length), 'in order, no gap');
  const { rows: leases } = await admin.query<{ lease_owner: string | null }>(
    `SELECT lease_owner FROM pgrelay.subscription_partitions WHERE subscription = 'graceful'`,
  );
  t.same(
    leases.map((l) => l.lease_owner),
    [null, null, null],
    'no partition left leased',
  );
  const { rows: lag } = await admin.query<{ pending: string }>(`SELECT sum(pending)::text AS pending FROM pgrelay.subscription_lag('graceful')`);
  t.equal(Number(lag[0]?.pending), 12 - before.length, 'what was delivered is acknowledged in the database, the rest pending');
  // The next daemon delivers the rest, and nothing that was acknowledged again.
  const next = await start();
  const { rows } = await admin.query<{ id: string }>(`SELECT pgrelay.publish('orders', 'k-one', 'order.changed', '{"i":12}')::text AS id`);
  await receiver.waitFor(() => receiver.acked().some((r) => r.id === rows[0]!.id), 20_000, 'the next message');
  t.same(
    receiver.acked().map((r) => r.id),
    [...ids, rows[0]!.id],
    'every message once, in order',
  );
  t.equal(await next.kill('SIGTERM'), 0);
});

t.test('SIGTERM during start-up: start-up completes, then a clean exit 0', { buffered: true }, async (t) => {
  const { db } = await setUp(t, { subscription: 'early' });
  const daemon = killAtEnd(t, await startDaemonProcess({ connectionString: db.connectionString, waitReady: false }));
  await daemon.waitForLog((line) => line.msg === 'serving subscription');
  t.equal(await daemon.kill('SIGTERM'), 0);
  t.ok(daemon.logs.some((line) => line.msg === 'relay stopped'), 'it shut down, it was not killed by the signal');
});

t.test('a database without pgrelay: the daemon says so and exits 1', { buffered: true }, async (t) => {
  const db = await freshDatabase(t, { migrated: false });
  const daemon = killAtEnd(t, await startDaemonProcess({ connectionString: db.connectionString, waitReady: false }));
  const deadline = new Promise<string>((resolve) => setTimeout(() => resolve('still running after 20 s'), 20_000).unref());
  t.equal(await Promise.race([daemon.exited, deadline]), 1);
  t.ok(daemon.logs.some((line) => /run `pgrelay migrate up` first/.test(String(line.msg))), 'the reason is printed');
});
