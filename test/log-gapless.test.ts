// DESIGN invariant 2 (gapless ordered reads) and 3 (per-key order), adversarially: many producers
// take their transaction ids early, publish after random delays and commit (or roll back) in an
// order unrelated to their ids and positions, while readers walk pgrelay.read with the
// (xid, position) cursor. Every reader must end up with exactly the committed messages, each once,
// per key in causal order (a message committed before another was published comes first); when
// publishers of a key are serialised (publish's lock_key, or an application row lock) per-key
// delivery order must be position order and per-key commit order. Each variant also reports the
// delivery lag (commit to read) as a comment.
//
// PGRELAY_GAPLESS_ROUNDS sets the number of producer transactions per variant (default 300),
// PGRELAY_GAPLESS_PRODUCERS the number of producer connections (default 12), and
// PGRELAY_GAPLESS_STRICT_POSITION=1 also demands position order per key from unserialised producers.
import t, { type Test } from 'tap';
import pg from 'pg';
import { freshDatabase } from './helpers/db.ts';

const ROUNDS = Number(process.env.PGRELAY_GAPLESS_ROUNDS ?? 300);
const PRODUCERS = Number(process.env.PGRELAY_GAPLESS_PRODUCERS ?? 12);
const KEYS = ['k0', 'k1', 'k2', 'k3', 'k4'];
const TOPIC = 'orders';
const DEADLINE_MS = 90_000;
/** Also require position order per key from unserialised publishers (not promised: see below). */
const STRICT_POSITION = process.env.PGRELAY_GAPLESS_STRICT_POSITION === '1';

/**
 * plain: no serialisation; lock_key: publish(lock_key => true); lock_key_rr: the same from
 * REPEATABLE READ transactions (no next_xid bound: readers search every younger xid);
 * row_lock: an application row lock per key.
 */
type Variant = 'plain' | 'lock_key' | 'lock_key_rr' | 'row_lock';

type Delivered = {
  id: string;
  key: string | null;
  position: bigint;
  xid: bigint;
  data: Record<string, unknown>;
  /** performance.now() when the read returned it. */
  at: number;
  /** Whether some producer was still running when it was read. */
  duringLoad: boolean;
};

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const randomInt = (max: number): number => Math.floor(Math.random() * max); // 0 .. max-1

async function connect(t: Test, connectionString: string, name: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: name, connectionTimeoutMillis: 15_000 });
  client.on('error', () => {});
  await client.connect();
  // A hang anywhere must fail the test, not the suite.
  await client.query(`SET statement_timeout = '30s'`);
  t.teardown(() => client.end().catch(() => {}));
  return client;
}

function pickKeys(variant: Variant): Array<string | null> {
  const count = 1 + randomInt(3);
  if (variant === 'plain') {
    // Repeats allowed, some keyless messages (no ordering promise, still gapless).
    return Array.from({ length: count }, () => (Math.random() < 0.1 ? null : KEYS[randomInt(KEYS.length)]!));
  }
  // Serialised variants: distinct keys, locked in a fixed order so producers never deadlock.
  const keys = new Set<string>();
  while (keys.size < count) keys.add(KEYS[randomInt(KEYS.length)]!);
  return [...keys].sort();
}

type ProducerLog = {
  committed: Set<string>;
  /** id -> performance.now() just before its publish was sent. */
  publishedAt: Map<string, number>;
  /** id -> performance.now() just after its COMMIT returned. */
  committedAt: Map<string, number>;
  rolledBack: Set<string>;
  /** lock_key variant: id -> ticket taken while still holding the key locks (commit order per key). */
  tickets: Map<string, bigint>;
  xids: bigint[];
};

async function producer(client: pg.Client, variant: Variant, claim: () => boolean, log: ProducerLog, me: number): Promise<void> {
  let seq = 0;
  while (claim()) {
    seq += 1;
    const ids: string[] = [];
    await client.query(variant === 'lock_key_rr' ? 'BEGIN ISOLATION LEVEL REPEATABLE READ' : 'BEGIN');
    try {
      const xid = await client.query<{ xid: string }>('SELECT pg_current_xact_id()::text AS xid');
      log.xids.push(BigInt(xid.rows[0]!.xid));
      await sleep(randomInt(41));
      const started: number[] = [];
      for (const key of pickKeys(variant)) {
        let version: number | null = null;
        if (variant === 'row_lock') {
          // The application's row lock on the aggregate: serialises this key's publishers.
          const row = await client.query<{ version: number }>(
            'UPDATE public.aggregates SET version = version + 1 WHERE key = $1 RETURNING version',
            [key],
          );
          version = row.rows[0]!.version;
        }
        started.push(performance.now());
        const published = await client.query<{ id: string }>(
          `SELECT pgrelay.publish(topic => $1, key => $2, type => 'order.changed', data => $3::jsonb,
                                  lock_key => $4) AS id`,
          [TOPIC, key, JSON.stringify({ producer: me, seq, version }), variant === 'lock_key' || variant === 'lock_key_rr'],
        );
        ids.push(published.rows[0]!.id);
      }
      let ticket: bigint | null = null;
      if (variant === 'lock_key' || variant === 'lock_key_rr') {
        // Taken while this transaction still holds its keys' advisory locks: for one key, the
        // tickets of committed transactions increase in commit order.
        const row = await client.query<{ n: string }>(`SELECT nextval('public.tickets')::text AS n`);
        ticket = BigInt(row.rows[0]!.n);
      }
      await sleep(randomInt(41));
      if (Math.random() < 0.2) {
        await client.query('ROLLBACK');
        for (const id of ids) log.rolledBack.add(id);
      } else {
        await client.query('COMMIT');
        const now = performance.now();
        for (const [j, id] of ids.entries()) {
          log.committed.add(id);
          log.publishedAt.set(id, started[j]!);
          log.committedAt.set(id, now);
          if (ticket !== null) log.tickets.set(id, ticket);
        }
      }
    } catch (error) {
      await client.query('ROLLBACK').catch(() => {});
      throw error;
    }
  }
}

type ReaderResult = { delivered: Delivered[]; batches: number; unsortedBatches: number; emptyReads: number };

async function reader(
  client: pg.Client,
  maxMessages: number,
  producersDone: () => boolean,
  maxXid: () => bigint,
  deadline: number,
): Promise<ReaderResult> {
  let cursor = { xid: 0n, position: 0n };
  const result: ReaderResult = { delivered: [], batches: 0, unsortedBatches: 0, emptyReads: 0 };
  for (;;) {
    if (Date.now() > deadline) throw new Error(`reader (max ${maxMessages}) did not finish before the deadline`);
    // Read the "done" state before the read: an empty read after that, with the horizon past
    // every producer's xid, means nothing is left.
    const done = producersDone();
    const rows = await client.query<{ position: string; xid: string; id: string; key: string | null; data: Record<string, unknown> }>(
      `SELECT position::text AS position, xid::text AS xid, id::text AS id, key, data
         FROM pgrelay.read($1::xid8, $2::bigint, $3)`,
      [cursor.xid.toString(), cursor.position.toString(), maxMessages],
    );
    if (rows.rows.length === 0) {
      result.emptyReads += 1;
      if (done) {
        const horizon = await client.query<{ h: string }>('SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS h');
        if (BigInt(horizon.rows[0]!.h) > maxXid()) {
          // Every producer transaction has ended; one more read must still return nothing.
          const again = await client.query(`SELECT 1 FROM pgrelay.read($1::xid8, $2::bigint, 10000)`, [
            cursor.xid.toString(),
            cursor.position.toString(),
          ]);
          if (again.rows.length === 0) return result;
          continue;
        }
      }
      await sleep(2);
      continue;
    }
    result.batches += 1;
    let previous = -1n;
    let sorted = true;
    for (const row of rows.rows) {
      const message: Delivered = {
        id: row.id,
        key: row.key,
        position: BigInt(row.position),
        xid: BigInt(row.xid),
        data: row.data,
        at: performance.now(),
        duringLoad: !done,
      };
      if (message.position <= previous) sorted = false;
      previous = message.position;
      result.delivered.push(message);
      if (message.xid > cursor.xid || (message.xid === cursor.xid && message.position > cursor.position)) {
        cursor = { xid: message.xid, position: message.position };
      }
    }
    if (!sorted) result.unsortedBatches += 1;
  }
}

const sample = <T>(items: Iterable<T>, n = 10): string => JSON.stringify([...items].slice(0, n), (_k, v) => (typeof v === 'bigint' ? v.toString() : v));

async function runVariant(t: Test, variant: Variant): Promise<void> {
  const db = await freshDatabase(t);
  const deadline = Date.now() + DEADLINE_MS;
  const setup = await connect(t, db.connectionString, 'gapless-setup');
  await setup.query('CREATE TABLE public.aggregates (key text PRIMARY KEY, version integer NOT NULL)');
  await setup.query(`INSERT INTO public.aggregates SELECT k, 0 FROM unnest($1::text[]) AS k`, [KEYS]);
  await setup.query('CREATE SEQUENCE public.tickets');

  const log: ProducerLog = {
    committed: new Set(),
    publishedAt: new Map(),
    committedAt: new Map(),
    rolledBack: new Set(),
    tickets: new Map(),
    xids: [],
  };
  let remaining = ROUNDS;
  const claim = (): boolean => {
    if (remaining <= 0 || Date.now() > deadline) return false;
    remaining -= 1;
    return true;
  };
  let producersDone = false;
  let maxXid = 0n;
  const producerClients = await Promise.all(
    Array.from({ length: PRODUCERS }, (_, i) => connect(t, db.connectionString, `gapless-producer-${i}`)),
  );
  const readerSizes = [50, 1, 7];
  const readerClients = await Promise.all(readerSizes.map((n) => connect(t, db.connectionString, `gapless-reader-${n}`)));

  const producing = Promise.all(producerClients.map((client, i) => producer(client, variant, claim, log, i))).finally(() => {
    maxXid = log.xids.reduce((a, b) => (b > a ? b : a), 0n);
    producersDone = true;
  });
  const reading = Promise.all(
    readerClients.map((client, i) => reader(client, readerSizes[i]!, () => producersDone, () => maxXid, deadline)),
  );
  const [, results] = await Promise.all([producing, reading]);

  t.equal(remaining, 0, `all ${ROUNDS} producer transactions ran before the deadline`);
  t.ok(log.committed.size > 0 && log.rolledBack.size > 0, `${log.committed.size} committed and ${log.rolledBack.size} rolled-back messages`);

  // Atomic publish: the log holds exactly the committed messages.
  const stored = new Set((await setup.query<{ id: string }>('SELECT id::text AS id FROM pgrelay.messages')).rows.map((r) => r.id));
  t.same([...stored].filter((id) => !log.committed.has(id)), [], 'the log holds no message that was not committed');
  t.same([...log.committed].filter((id) => !stored.has(id)), [], 'the log holds every committed message');

  for (const [i, result] of results.entries()) {
    const label = `reader max_messages=${readerSizes[i]}`;
    const ids = result.delivered.map((m) => m.id);
    const seen = new Set<string>();
    const duplicates = ids.filter((id) => (seen.has(id) ? true : (seen.add(id), false)));
    const missing = [...log.committed].filter((id) => !seen.has(id));
    const rolledBack = ids.filter((id) => log.rolledBack.has(id));
    const unknown = ids.filter((id) => !log.committed.has(id) && !log.rolledBack.has(id));
    t.equal(duplicates.length, 0, `${label}: no message delivered twice ${sample(duplicates)}`);
    t.equal(missing.length, 0, `${label}: no committed message skipped (${missing.length} of ${log.committed.size} missing) ${sample(missing)}`);
    t.equal(rolledBack.length, 0, `${label}: no rolled-back message delivered ${sample(rolledBack)}`);
    t.equal(unknown.length, 0, `${label}: nothing unknown delivered`);
    t.equal(ids.length, log.committed.size, `${label}: delivered exactly the ${log.committed.size} committed messages`);
    t.equal(result.unsortedBatches, 0, `${label}: every batch is in position order`);

    const byKey = new Map<string, Delivered[]>();
    for (const message of result.delivered) {
      if (message.key === null) continue;
      const list = byKey.get(message.key) ?? [];
      list.push(message);
      byKey.set(message.key, list);
    }
    for (const [key, list] of [...byKey].sort()) {
      // Causal order, for every variant: a message whose transaction had committed (COMMIT
      // returned) before another message of the key was published must be delivered first.
      let causal: string | null = null;
      for (let j = 0; j < list.length && causal === null; j++) {
        const later = list[j]!;
        const startedAt = log.publishedAt.get(later.id)!;
        for (let k = j + 1; k < list.length; k++) {
          const earlier = list[k]!;
          if (log.committedAt.get(earlier.id)! < startedAt) {
            causal = `position ${later.position} (xid ${later.xid}) was delivered before position ${earlier.position} ` +
              `(xid ${earlier.xid}), whose transaction committed before it was published`;
            break;
          }
        }
      }
      t.equal(causal, null, `${label}: key ${key}: a message committed before another was published is delivered first`);

      const outOfOrder = list.findIndex((m, j) => j > 0 && m.position <= list[j - 1]!.position);
      let detail = '';
      if (outOfOrder > 0) {
        const pair = [list[outOfOrder - 1]!, list[outOfOrder]!];
        const rows = await setup.query(
          `SELECT position::text, xid::text, next_xid::text FROM pgrelay.messages WHERE position = ANY($1::bigint[]) ORDER BY position`,
          [pair.map((m) => m.position.toString())],
        );
        detail = ` - delivered position ${pair[0]!.position} then ${pair[1]!.position}: ${JSON.stringify(rows.rows)}`;
      }
      if (variant === 'plain' && !STRICT_POSITION) {
        // Unserialised publishers of a key get no commit-order promise (DESIGN invariant 3), and
        // pgrelay can only order what it can see: two transactions that were both still open
        // when they published may come out of position order. Report it; assert it only when asked.
        if (outOfOrder > 0) t.comment(`${label}: key ${key} not in position order (unserialised publishers)${detail}`);
      } else {
        t.equal(outOfOrder, -1, `${label}: key ${key} delivered in ascending position order (${list.length} messages)${detail}`);
      }
      if (variant === 'lock_key' || variant === 'lock_key_rr') {
        const tickets = list.map((m) => log.tickets.get(m.id)!);
        const bad = tickets.findIndex((x, j) => j > 0 && x <= tickets[j - 1]!);
        t.equal(bad, -1, `${label}: key ${key} delivered in commit order (tickets taken under the key lock increase)`);
      }
      if (variant === 'row_lock') {
        // Each committed transaction bumped the key's version once under the row lock, so the
        // versions of one key, in commit order, are exactly 1, 2, ..., n.
        const versions = list.map((m) => m.data.version);
        t.same(versions, list.map((_, j) => j + 1), `${label}: key ${key} delivered in commit order (versions 1..${list.length})`);
      }
    }
    const lags = result.delivered.map((m) => m.at - log.committedAt.get(m.id)!).sort((a, b) => a - b);
    const duringLoad = result.delivered.filter((m) => m.duringLoad).length;
    t.comment(
      `${label}: ${duringLoad} of ${lags.length} delivered before the last producer finished; delivery lag after commit ` +
        `p50 ${Math.round(lags[lags.length >> 1] ?? 0)} ms, max ${Math.round(lags.at(-1) ?? 0)} ms`,
    );
    t.comment(`${label}: ${result.batches} batches, ${result.emptyReads} empty reads`);
  }
}

t.test('unserialised producers: every committed message once, nothing rolled back, per key in causal order', (t) =>
  runVariant(t, 'plain'),
);

t.test('producers serialised by publish(lock_key => true): per-key delivery order is commit order', (t) =>
  runVariant(t, 'lock_key'),
);

t.test('REPEATABLE READ producers serialised by publish(lock_key => true): per-key delivery order is commit order', (t) =>
  runVariant(t, 'lock_key_rr'),
);

t.test('producers serialised by an application row lock: per-key delivery order is commit order', (t) =>
  runVariant(t, 'row_lock'),
);
