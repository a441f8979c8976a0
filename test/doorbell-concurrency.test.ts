// Two-session interleaving for pgrelay._ring_doorbell: publishers never wait on each other for
// the doorbell row. If they did, A (which disarmed the doorbell) waiting for a lock B holds while
// B waits for the doorbell row would be a deadlock, and one of two innocent business transactions
// would fail with 40P01.
import t, { type Test } from 'tap';
import pg from 'pg';
import { freshDatabase } from './helpers/db.ts';

async function connect(t: Test, connectionString: string, name: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: name, connectionTimeoutMillis: 15_000 });
  client.on('error', () => {});
  await client.connect();
  await client.query(`SET statement_timeout = '20s'`);
  t.teardown(() => client.end().catch(() => {}));
  return client;
}

const backendOf = async (client: pg.Client): Promise<number> => (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;

/** Waits until `pid` is blocked on a lock (so the interleaving really happened), or throws. */
async function waitUntilBlocked(observer: pg.Client, pid: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const { rows } = await observer.query<{ waiting: boolean }>(`SELECT cardinality(pg_blocking_pids($1)) > 0 AS waiting`, [pid]);
    if (rows[0]?.waiting) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`backend ${pid} never blocked`);
}

t.test('a publisher holding the doorbell and waiting on another publisher does not deadlock', async (t) => {
  const db = await freshDatabase(t);
  const [a, b, observer, listener] = await Promise.all(
    ['doorbell-a', 'doorbell-b', 'doorbell-observer', 'doorbell-listener'].map((name) => connect(t, db.connectionString, name)),
  );
  const notifications: string[] = [];
  listener.on('notification', (n) => notifications.push(String(n.payload)));
  await listener.query('LISTEN pgrelay');
  await observer.query('SELECT pgrelay.doorbell_arm()');
  const aPid = await backendOf(a);

  // A publishes first: it disarms the doorbell and holds its row until it commits.
  await a.query('BEGIN');
  await a.query(`SELECT pgrelay.publish('orders', 'x', 'order.placed', '{}')`);
  // B holds a business lock, then publishes while A holds the doorbell row.
  await b.query('BEGIN');
  await b.query('SELECT pg_advisory_xact_lock(4242)');
  const bPublished = b.query(`SELECT pgrelay.publish('orders', 'y', 'order.placed', '{}')`).then(
    () => 'published',
    (error: Error & { code?: string }) => `failed ${error.code}`,
  );
  // A now wants B's business lock.
  const aLocked = a.query('SELECT pg_advisory_xact_lock(4242)').then(
    () => 'locked',
    (error: Error & { code?: string }) => `failed ${error.code}`,
  );
  t.equal(await bPublished, 'published', "B's publish does not wait for the doorbell row");
  await waitUntilBlocked(observer, aPid);
  await b.query('COMMIT');
  t.equal(await aLocked, 'locked', 'A gets the lock once B commits: no deadlock');
  await a.query('COMMIT');

  const { rows } = await observer.query<{ n: number; armed: boolean }>(
    `SELECT (SELECT count(*)::int FROM pgrelay.messages) AS n, (SELECT armed FROM pgrelay.doorbell) AS armed`,
  );
  t.same(rows[0], { n: 2, armed: false }, 'both messages committed; the doorbell disarmed');
  const deadline = Date.now() + 10_000;
  while (notifications.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.same(notifications, ['orders'], 'one ring, from A');
});
