// The real daemon process delivering to real HTTP endpoints and stdout (DESIGN invariants 1-4):
// concurrent producers commit out of order and roll some transactions back while a long
// transaction holds the horizon (with the A/B/C case of invariant 3 inside); the webhook receives
// exactly the committed messages as CloudEvents 1.0, signed, in order per key, each once; a message
// that always fails is dead-lettered after max_attempts and the rest of its key follows it; the
// stdout sink prints one JSON line per message; /healthz and /metrics answer, and /healthz says 503
// while the database is unreachable.
import t from 'tap';
import { freshDatabase } from './helpers/db.ts';
import { startDaemonProcess } from './helpers/daemon-process.ts';
import { startWebhookReceiver } from './helpers/webhook-receiver.ts';
import { startPostgresProxy } from './helpers/tcp-proxy.ts';
import { connect, daemonPort, duplicates, killAtEnd, perKeyOrderViolations, produce, readBack, waitUntil, type Published } from './fixtures/daemon.ts';

const SECRET = 'test-hook-secret-0123456789';

t.test('the real daemon delivers to a webhook, a failing webhook and stdout', async (t) => {
  const db = await freshDatabase(t);
  const hooks = await startWebhookReceiver(t, { secret: SECRET });
  // The second webhook always fails one message, and answers another's first attempt too late.
  const isSlowFirst = (event: { data: unknown; attempt: number }): boolean => (event.data as { slow?: boolean }).slow === true && event.attempt === 1;
  const poisoned = await startWebhookReceiver(t, {
    statusFor: (event) => ((event.data as { poison?: boolean }).poison === true ? 500 : isSlowFirst(event) ? 504 : 204),
    delayFor: (event) => (isSlowFirst(event) ? 10_000 : 0),
  });

  const admin = await connect(db.connectionString, 'test-admin');
  t.teardown(() => admin.end());
  await admin.query(`SELECT pgrelay.subscribe('hooks', '{orders}', $1::jsonb, '{"partitions":4,"max_attempts":5,"backoff":{"initial_ms":50,"max_ms":500}}')`, [
    JSON.stringify({ type: 'webhook', url: hooks.url, secret_env: 'PGRELAY_TEST_HOOK_SECRET', source: 'https://test.example/pgrelay' }),
  ]);
  await admin.query(`SELECT pgrelay.subscribe('poison', '{orders}', $1::jsonb, '{"partitions":2,"max_attempts":3,"backoff":{"initial_ms":100,"max_ms":200,"jitter":0}}')`, [
    JSON.stringify({ type: 'webhook', url: poisoned.url, timeout_ms: 2000 }),
  ]);
  await admin.query(`SELECT pgrelay.subscribe('lines', '{orders}', '{"type":"stdout"}')`);
  // A sink whose secret is missing from the environment: refused, named, never printed.
  await admin.query(`SELECT pgrelay.subscribe('unsigned', '{orders}', $1::jsonb)`, [
    JSON.stringify({ type: 'webhook', url: hooks.url, secret_env: 'PGRELAY_TEST_UNSET_SECRET' }),
  ]);

  // The daemon reaches the database through a proxy, so the test can cut it off.
  const proxy = await startPostgresProxy(t, db.connectionString);
  const daemon = killAtEnd(
    t,
    await startDaemonProcess({ connectionString: proxy.connectionString, args: ['--port', '0'], env: { PGRELAY_TEST_HOOK_SECRET: SECRET } }),
  );
  const port = await daemonPort(daemon);
  const http = (path: string): Promise<Response> => fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(10_000) });

  await t.test('/healthz says healthy and names the subscriptions served', async (t) => {
    const response = await http('/healthz');
    t.equal(response.status, 200);
    const body = (await response.json()) as { ok: boolean; subscriptions: string[] };
    t.equal(body.ok, true);
    t.same([...body.subscriptions].sort(), ['hooks', 'lines', 'poison'], 'not the one whose sink cannot start');
    const refused = await daemon.waitForLog((line) => line.msg === 'cannot start sink');
    t.equal(refused.subscription, 'unsigned');
    t.match(refused.err, /PGRELAY_TEST_UNSET_SECRET is not set/);
  });

  const publishOne = async (client: Awaited<ReturnType<typeof connect>>, key: string, data: object): Promise<string> =>
    (await client.query<{ id: string }>(`SELECT pgrelay.publish('orders', $1, 'order.changed', $2::jsonb, lock_key => true)::text AS id`, [key, JSON.stringify(data)]))
      .rows[0]!.id;

  // Invariant 3's case: A (older xid) publishes K after B (younger xid) published K and committed,
  // while C (xid between theirs) holds the horizon. B must reach the webhook before A.
  const a = await connect(db.connectionString, 'test-a');
  const c = await connect(db.connectionString, 'test-c-holds-horizon');
  const b = await connect(db.connectionString, 'test-b');
  t.teardown(() => Promise.all([a.end(), b.end(), c.end()]));
  await a.query('BEGIN');
  await a.query('SELECT pg_current_xact_id()');
  await c.query('BEGIN');
  await c.query('SELECT pg_current_xact_id()');
  const held = await publishOne(c, 'held', { by: 'C' });
  await b.query('BEGIN');
  await b.query('SELECT pg_current_xact_id()');
  const fromB = await publishOne(b, 'k-abc', { by: 'B' });
  await b.query('COMMIT');
  const fromA = await publishOne(a, 'k-abc', { by: 'A' });
  await a.query('COMMIT');

  // While C is open: out-of-order producers, and a key whose second message always fails.
  const poisonIds: string[] = [];
  for (const [i, data] of [{ n: 1 }, { n: 2, poison: true }, { n: 3 }, { n: 4 }].entries()) {
    poisonIds[i] = await publishOne(admin, 'k-poison', data);
  }
  const slow = await publishOne(admin, 'k-slow', { slow: true });
  const produced = await produce(db.connectionString, { producers: 5, transactionsEach: 20, keys: ['k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7', 'k8'] });

  await t.test('with the horizon held, B is pulled forward and delivered before A', async (t) => {
    await hooks.waitFor(() => hooks.acked().some((r) => r.id === fromA), 30_000, 'A delivered while C is open');
    const order = hooks.acked().filter((r) => r.key === 'k-abc').map((r) => r.id);
    t.same(order, [fromB, fromA]);
    t.notOk(hooks.acked().some((r) => r.id === held), "C's message is not delivered before C commits");
  });

  await c.query('COMMIT');
  const committed: Published[] = await readBack(db.connectionString, [
    fromB,
    fromA,
    held,
    ...poisonIds,
    slow,
    ...produced.committed.map((m) => m.id),
  ]);
  const committedIds = new Set(committed.map((m) => m.id));

  await t.test('the webhook receives exactly the committed messages, signed CloudEvents, once each, in key order', async (t) => {
    t.ok(produced.rolledBack.length > 0, 'some transactions rolled back');
    t.ok(produced.committed.length > 50, 'enough committed messages to matter');
    await hooks.waitFor(() => new Set(hooks.acked().map((r) => r.id)).size >= committedIds.size, 40_000, 'every committed message at the webhook');
    const acked = hooks.acked();
    t.same(hooks.problems, [], 'every request is a valid, correctly signed CloudEvent');
    t.same(new Set(acked.map((r) => r.id)), committedIds, 'exactly the committed set');
    t.same(
      acked.filter((r) => produced.rolledBack.includes(r.id)),
      [],
      'nothing rolled back',
    );
    t.same(duplicates(acked), [], 'no message delivered twice to a healthy sink');
    t.same(perKeyOrderViolations(acked, committed), [], 'per-key order');
    const byId = new Map(committed.map((m) => [m.id, m]));
    const mismatched = acked.filter((r) => {
      const m = byId.get(r.id)!;
      return r.position !== m.position || r.key !== m.key || r.topic !== 'orders' || r.type !== m.type || JSON.stringify(r.data) !== JSON.stringify(m.data);
    });
    t.same(mismatched, [], 'each event carries its message: position, subject, topic, type, data');
    t.ok(acked.every((r) => r.source === 'https://test.example/pgrelay' && r.subscription === 'hooks' && r.attempt === 1));
  });

  await t.test('a message that always fails is dead-lettered after max_attempts; its key goes on after it', async (t) => {
    const poison = poisonIds[1]!;
    await poisoned.waitFor(
      () => new Set(poisoned.acked().map((r) => r.id)).size >= committedIds.size - 1,
      40_000,
      'everything but the poison at the second webhook',
    );
    const attempts = poisoned.requests.filter((r) => r.id === poison);
    t.same(attempts.map((r) => r.attempt), [1, 2, 3], 'tried max_attempts times, attempt header counting');
    t.same(new Set(poisoned.acked().map((r) => r.id)), new Set([...committedIds].filter((id) => id !== poison)), 'the rest of the log delivered');
    const twice = duplicates(poisoned.acked());
    t.same(twice, [], 'nothing acknowledged twice', { requests: poisoned.requests.filter((r) => twice.includes(r.id)) });
    t.same(perKeyOrderViolations(poisoned.acked(), committed.filter((m) => m.id !== poison)), []);
    const lastAttempt = attempts.at(-1)!.seq;
    const after = poisoned.acked().filter((r) => r.id === poisonIds[2] || r.id === poisonIds[3]);
    t.ok(after.length === 2 && after.every((r) => r.seq > lastAttempt), "the key's later messages only after the dead-lettering");
    const { rows } = await admin.query<{ position: string; attempts: number; last_error: string }>(
      `SELECT position::text, attempts, last_error FROM pgrelay.dead_letters WHERE subscription = 'poison'`,
    );
    t.equal(rows.length, 1);
    t.equal(rows[0]?.position, String(committed.find((m) => m.id === poison)!.position));
    t.equal(rows[0]?.attempts, 3);
    t.match(rows[0]?.last_error, /HTTP 500/);
    const dead = await admin.query(`SELECT 1 FROM pgrelay.dead_letters WHERE subscription <> 'poison'`);
    t.equal(dead.rowCount, 0, 'no dead letters elsewhere');
  });

  await t.test('a webhook that answers too late (timeout_ms) is tried again', async (t) => {
    const attempts = poisoned.requests.filter((r) => r.id === slow).sort((x, y) => x.attempt - y.attempt);
    t.same(attempts.map((r) => [r.attempt, r.status]), [[1, 504], [2, 204]], 'a second attempt, acknowledged');
    t.ok(attempts[1]!.arrivedAt - attempts[0]!.arrivedAt < 10_000, 'sent before the first answer could come: the daemon stopped waiting');
    t.equal(poisoned.acked().filter((r) => r.id === slow).length, 1);
  });

  await t.test('the stdout sink prints one JSON line per message', async (t) => {
    const lines = () => daemon.logs.filter((l) => l.subscription === 'lines' && l.specversion === '1.0');
    await waitUntil(() => new Set(lines().map((l) => l.id)).size >= committedIds.size, 30_000, 'every message on stdout');
    t.equal(lines().length, committedIds.size, 'one line each');
    t.same(new Set(lines().map((l) => l.id)), committedIds);
    t.same(
      perKeyOrderViolations(
        lines().map((l) => ({ id: String(l.id), key: typeof l.subject === 'string' ? l.subject : null, position: BigInt(String(l.pgrelayposition)) })),
        committed,
      ),
      [],
    );
  });

  await t.test('/metrics counts what was delivered and dead-lettered', async (t) => {
    await waitUntil(
      async () => /pgrelay_dead_lettered_total\{subscription="poison"\} 1\b/.test(await (await http('/metrics')).text()),
      15_000,
      'dead letter counted',
    );
    const response = await http('/metrics');
    t.equal(response.status, 200);
    t.match(response.headers.get('content-type'), /text\/plain/);
    const text = await response.text();
    const delivered = /pgrelay_delivered_total\{subscription="hooks"\} (\d+)/.exec(text);
    t.equal(Number(delivered?.[1]), committedIds.size, 'delivered_total of hooks');
    t.match(text, /pgrelay_failed_total\{subscription="poison"\} 4\b/, "three failures of the poison, one timeout");
    t.match(text, /pgrelay_delivery_latency_seconds_bucket\{le="[^"]+",subscription="hooks"\}/);
    t.match(text, /pgrelay_horizon_stall_seconds /);
    t.equal((await http('/nothing')).status, 404);
  });

  await t.test('/healthz says 503 while the database is unreachable, and recovers', async (t) => {
    await proxy.close();
    let unhealthy: { status: number; body: { ok: boolean; error?: string } } | undefined;
    await waitUntil(
      async () => {
        const response = await http('/healthz');
        unhealthy = { status: response.status, body: (await response.json()) as { ok: boolean; error?: string } };
        return response.status === 503;
      },
      20_000,
      '/healthz unhealthy',
    );
    t.equal(unhealthy?.body.ok, false);
    t.type(unhealthy?.body.error, 'string', 'says why');
    t.equal(daemon.child.exitCode, null, 'the daemon keeps running');
    await proxy.open();
    await waitUntil(async () => (await http('/healthz')).status === 200, 30_000, '/healthz healthy again');
    const late = await publishOne(admin, 'k-late', { late: true });
    await hooks.waitFor(() => hooks.acked().some((r) => r.id === late), 30_000, 'a message published after the outage');
    t.pass('delivers again after the outage');
  });

  await t.test('SIGTERM: exits 0', async (t) => {
    const deadline = new Promise<string>((resolve) => setTimeout(() => resolve('still running after 20 s'), 20_000).unref());
    const exit = await Promise.race([daemon.kill('SIGTERM'), deadline]);
    t.equal(exit, 0, 'exit code', { lastLogs: exit === 0 ? undefined : daemon.logs.filter((l) => l.specversion === undefined).slice(-15) });
  });
});
