// The idle consumer's doorbell protocol loses no wake-up. Each race is forced by a connection
// wrapper that runs a step at the exact moment it matters; the consumer's safety poll is 60 s,
// so a lost wake-up shows up as a message that does not arrive within the deadline.
//  - a ring that arrives while an (empty) fetch is in flight;
//  - a publisher that read the doorbell before it was armed and commits between the last fetch
//    and the moment the consumer sees every such publisher has ended.
// And fetch_batch's precheck: an empty fetch takes no lock and writes nothing.
import t, { type Test } from 'tap';
import type { CommonQueryMethods } from 'slonik';
import type pg from 'pg';
import { createClient, createWaker, startConsumer, type Handler, type Message, type PgrelayClient, type Waker } from '../client/index.ts';
import { createBarePool } from '../client/pool.ts';
import type { PgQueryable } from '../client/consume.ts';
import { connect, freshDatabase } from './helpers/db.ts';

const SAFETY_POLL_MS = 60_000;
const DEADLINE_MS = 15_000;

async function setup(t: Test): Promise<{ url: string; client: PgrelayClient; waker: Waker }> {
  const { connectionString: url } = await freshDatabase(t);
  const client = await createClient({ connectionString: url, maximumPoolSize: 4 });
  t.teardown(() => client.end());
  const waker = await createWaker(url);
  t.teardown(() => waker.close());
  await client.subscriptions.subscribe('wake', ['orders'], { type: 'consumer' }, { start: 'earliest' });
  return { url, client, waker };
}

type Hooks = {
  /** After a query ran: its text and result; may do things before the loop sees the result. */
  after?: (text: string, result: unknown) => Promise<void>;
  /** Before a query runs. */
  before?: (text: string) => Promise<void>;
};

/** The pool, with hooks around every query the consumer makes. */
function hooked(connection: CommonQueryMethods, hooks: Hooks): CommonQueryMethods {
  return new Proxy(connection, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver);
      if (typeof value !== 'function') return value;
      return async (query: { sql: string }, ...rest: unknown[]) => {
        const text = typeof query === 'object' && query !== null && 'sql' in query ? query.sql : String(query);
        await hooks.before?.(text);
        const result = await (value as (...a: unknown[]) => Promise<unknown>).call(target, query, ...rest);
        await hooks.after?.(text, result);
        return result;
      };
    },
  });
}

/**
 * The same hooks on the node-postgres pool a consumer gets from createClient (ConsumeOptions.pgPool):
 * `after` sees the rows, or the one value of a one-row, one-column result, like slonik's any/oneFirst.
 */
function hookedPg(pool: PgQueryable, hooks: Hooks): PgQueryable {
  return {
    async query(config: pg.QueryConfig) {
      await hooks.before?.(config.text);
      const result = await pool.query(config);
      const value = result.fields.length === 1 && result.rows.length === 1 ? Object.values(result.rows[0])[0] : result.rows;
      await hooks.after?.(config.text, value);
      return result;
    },
  };
}

/** Paths a consumer loop can run its statements on: the slonik pool, or plain node-postgres. */
const PATHS = ['slonik', 'node-postgres'] as const;
type Path = (typeof PATHS)[number];

function startHooked(t: Test, path: Path, url: string, client: PgrelayClient, waker: Waker, hooks: Hooks, handler: Handler) {
  if (path === 'slonik') return startConsumer(hooked(client.connection, hooks), 'wake', handler, { waker, idlePollMs: SAFETY_POLL_MS });
  const pool = createBarePool(url, { maximumPoolSize: 4 });
  t.teardown(() => pool.end());
  return startConsumer(client.connection, 'wake', handler, { waker, idlePollMs: SAFETY_POLL_MS, pgPool: hookedPg(pool, hooks) });
}

async function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T | 'late'> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), ms)));
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
    void what;
  }
}

async function waitFor(condition: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + DEADLINE_MS;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const publishSql = `SELECT pgrelay.publish('orders', 'k', 'placed', $1::jsonb)`;

for (const path of PATHS) t.test(`${path}: a ring that arrives while a fetch is in flight wakes the consumer`, async (t) => {
  const { url, client, waker } = await setup(t);
  const producer = await connect(t, url, 'wake-producer');
  let settledSeen = false;
  let fired = false;
  let rang = false;
  let notificationsBefore = 0;
  const hooks: Hooks = {
    after: async (text, result) => {
      if (/doorbell_settled/.test(text) && result === true) settledSeen = true;
      // The first empty fetch once the consumer is asleep-ready: its snapshot predates the
      // publish below, whose ring arrives before the loop gets the empty answer.
      if (!fired && settledSeen && /fetch_batch/.test(text) && Array.isArray(result) && result.length === 0) {
        fired = true;
        notificationsBefore = waker.notifications;
        await producer.query(publishSql, [JSON.stringify({ n: 1 })]);
        await waitFor(() => waker.notifications > notificationsBefore, 'the ring to reach the waker');
        rang = true;
      }
    },
  };
  const delivered: Message[] = [];
  let arrived: () => void = () => {};
  const got = new Promise<void>((resolve) => (arrived = resolve));
  const consumer = startHooked(t, path, url, client, waker, hooks, async (message) => {
    delivered.push(message);
    arrived();
  });
  t.teardown(() => consumer.stop());
  await waitFor(() => rang, 'the consumer to settle, fetch once more, and the ring to arrive meanwhile');
  t.ok(waker.notifications > notificationsBefore, 'the publish rang while the fetch was in flight');
  const outcome = await within(DEADLINE_MS, got, 'delivery');
  t.not(outcome, 'late', `the message is delivered at once, not after the ${SAFETY_POLL_MS / 1000} s safety poll`);
  t.same(delivered.map((m) => m.data), [{ n: 1 }], 'the published message, once');
  await consumer.stop();
});

for (const path of PATHS) t.test(`${path}: a publisher that missed the arming and commits just before the settled check is not left behind`, async (t) => {
  const { url, client, waker } = await setup(t);
  const producer = await connect(t, url, 'wake-late-producer');
  // The publisher reads the doorbell (disarmed: nobody armed it yet), so it will not ring.
  await producer.query('BEGIN');
  await producer.query(publishSql, [JSON.stringify({ n: 'late' })]);
  let committed = false;
  const hooks: Hooks = {
    before: async (text) => {
      // Between the consumer's last fetch (which could not see the open transaction) and its
      // check that every publisher older than its watermark has ended.
      if (!committed && /doorbell_settled/.test(text)) {
        committed = true;
        await producer.query('COMMIT');
      }
    },
  };
  const notificationsBefore = waker.notifications;
  const delivered: Message[] = [];
  let arrived: () => void = () => {};
  const got = new Promise<void>((resolve) => (arrived = resolve));
  const consumer = startHooked(t, path, url, client, waker, hooks, async (message) => {
    delivered.push(message);
    arrived();
  });
  t.teardown(() => consumer.stop());
  await waitFor(() => committed, 'the consumer to arm and check the doorbell');
  const outcome = await within(DEADLINE_MS, got, 'delivery');
  t.equal(waker.notifications, notificationsBefore, 'the late publisher did not ring (it read the doorbell before the arming)');
  t.not(outcome, 'late', `its message is delivered at once, not after the ${SAFETY_POLL_MS / 1000} s safety poll`);
  t.same(delivered.map((m) => m.data), [{ n: 'late' }], 'the late message, once');
  await consumer.stop();
});

t.test('an empty fetch locks nothing and writes nothing; work, retries and expired leases are still found', async (t) => {
  const { url, client } = await setup(t);
  const c = await connect(t, url, 'precheck');
  const fetchInTransaction = async (): Promise<{ rows: number; xid: string | null }> => {
    await c.query('BEGIN');
    try {
      const { rowCount } = await c.query(`SELECT * FROM pgrelay.fetch_batch('wake', 'me')`);
      const { rows } = await c.query<{ xid: string | null }>('SELECT pg_current_xact_id_if_assigned()::text AS xid');
      await c.query('COMMIT');
      return { rows: rowCount ?? 0, xid: rows[0]!.xid };
    } catch (error) {
      await c.query('ROLLBACK');
      throw error;
    }
  };
  // The first fetch marks the consumer alive (pgrelay.subscription_consumers, for the fair share
  // of partitions); that mark is rewritten only once per quarter of lease_seconds, so the empty
  // polls after it write nothing.
  const first = await fetchInTransaction();
  t.equal(first.rows, 0, 'nothing to fetch');
  const empty = await fetchInTransaction();
  t.equal(empty.rows, 0, 'still nothing to fetch');
  t.equal(empty.xid, null, 'the empty fetch took no transaction id: no row lock, no write, no WAL flush at commit');

  await client.publish({ topic: 'other', key: 'k', type: 'placed', data: {} });
  const otherTopic = await fetchInTransaction();
  t.equal(otherTopic.rows, 0, 'a message of another topic is not work for this subscription');
  t.equal(otherTopic.xid, null, 'and the fetch still writes nothing');

  await client.publish({ topic: 'orders', key: 'k', type: 'placed', data: { n: 1 } });
  // (Another session's open transaction may hold the read horizon for a while: wait for it.)
  let batch: Array<{ position: string; lease_token: string; partition_index: number }> = [];
  await waitFor(async () => {
    batch = (await c.query(`SELECT position, lease_token, partition_index FROM pgrelay.fetch_batch('wake', 'me')`)).rows;
    return batch.length > 0;
  }, 'the message to be fetched');
  t.equal(batch.length, 1, 'a pending message is found and leased');
  const lease = batch[0]!;

  // A lease that expires is work for the next fetch (its batch comes again).
  await c.query(`UPDATE pgrelay.subscription_partitions SET lease_expires_at = now() - interval '1 second' WHERE subscription = 'wake'`);
  const { rows: again } = await c.query<{ position: string; lease_token: string }>(`SELECT position, lease_token FROM pgrelay.fetch_batch('wake', 'you')`);
  t.same(again.map((r) => r.position), [lease.position], 'an expired lease is taken over and its batch delivered again');

  // A failed delivery becomes a retry: due at once (backoff 0), it is found although the log is done.
  await c.query(`SELECT pgrelay.subscribe('wake', ARRAY['orders'], '{"type":"consumer"}', '{"backoff":{"initial_ms":0,"max_ms":0}}')`);
  await c.query(`SELECT pgrelay.complete_batch('wake', $1, $2, '{}', ARRAY[$3::bigint], ARRAY['boom'])`, [
    lease.partition_index,
    again[0]!.lease_token,
    lease.position,
  ]);
  await waitFor(async () => {
    const { rows } = await c.query<{ due: boolean }>(`SELECT bool_and(next_attempt_at <= clock_timestamp()) AS due FROM pgrelay.retries WHERE subscription = 'wake'`);
    return rows[0]!.due === true;
  }, 'the retry to be due');
  const { rows: retry } = await c.query<{ position: string; attempt: number }>(`SELECT position, attempt FROM pgrelay.fetch_batch('wake', 'me')`);
  t.same(retry.map((r) => [r.position, r.attempt]), [[lease.position, 2]], 'a due retry is fetched (second attempt)');
});

t.test('the doorbell watermark covers a publisher that took its xid after the arming transaction did', async (t) => {
  const { url } = await setup(t);
  const relay = await connect(t, url, 'doorbell-relay');
  const publisher = await connect(t, url, 'doorbell-publisher');
  // The relay's arming transaction takes its xid first...
  await relay.query('BEGIN');
  await relay.query('SELECT pgrelay.doorbell_arm()');
  const { rows: armXid } = await relay.query<{ xid: string }>('SELECT pg_current_xact_id()::text AS xid');
  // ...then a publisher takes a younger one and reads the doorbell before the arming commits: it
  // sees it disarmed and will not ring.
  await publisher.query('BEGIN');
  await publisher.query(publishSql, [JSON.stringify({ n: 'unrung' })]);
  const { rows: publisherXid } = await publisher.query<{ xid: string }>('SELECT pg_current_xact_id()::text AS xid');
  t.ok(BigInt(publisherXid[0]!.xid) > BigInt(armXid[0]!.xid), 'the publisher holds the younger xid');
  await relay.query('COMMIT');
  const { rows: w } = await relay.query<{ w: string }>('SELECT pgrelay.doorbell_watermark()::text AS w');
  t.ok(BigInt(w[0]!.w) > BigInt(publisherXid[0]!.xid), 'the watermark is above the publisher that missed the arming');
  const settled = async (): Promise<boolean> =>
    (await relay.query<{ s: boolean }>('SELECT pgrelay.doorbell_settled($1::xid8) AS s', [w[0]!.w])).rows[0]!.s;
  t.equal(await settled(), false, 'not settled while that publisher runs: the relay keeps polling instead of sleeping');
  await publisher.query('COMMIT');
  await waitFor(settled, 'the doorbell to settle once the publisher has ended');
  t.pass('settled once the publisher ended');
});
