// DESIGN invariant 3, the case the design names: transaction A (older xid) publishes key K after
// B (younger xid) published K and committed, both serialised by a row lock, while an unrelated
// transaction C, whose xid lies between theirs, holds the visibility horizon. A reader walking
// (xid, position) sees A's message and not yet B's: it must hold A back, never deliver A's K first.
import t, { type Test } from 'tap';
import pg from 'pg';
import { freshDatabase } from './helpers/db.ts';

type Row = { position: string; xid: string; id: string; topic: string; key: string | null; type: string; data: Record<string, unknown> };
type Cursor = { xid: string; position: string };
const START: Cursor = { xid: '0', position: '0' };

async function connect(t: Test, connectionString: string, name: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: name, connectionTimeoutMillis: 15_000 });
  client.on('error', () => {});
  await client.connect();
  // B's lock wait (if the test is wrong) or a stuck read must fail, not hang the suite.
  await client.query(`SET statement_timeout = '20s'`);
  await client.query(`SET lock_timeout = '10s'`);
  t.teardown(() => client.end().catch(() => {}));
  return client;
}

async function read(client: pg.Client, cursor: Cursor, maxMessages = 100): Promise<{ rows: Row[]; cursor: Cursor }> {
  const result = await client.query<Row>(
    `SELECT position::text AS position, xid::text AS xid, id::text AS id, topic, key, type, data
       FROM pgrelay.read($1::xid8, $2::bigint, $3)`,
    [cursor.xid, cursor.position, maxMessages],
  );
  let next = cursor;
  for (const row of result.rows) {
    const [x, p, nx, np] = [BigInt(row.xid), BigInt(row.position), BigInt(next.xid), BigInt(next.position)];
    if (x > nx || (x === nx && p > np)) next = { xid: row.xid, position: row.position };
  }
  return { rows: result.rows, cursor: next };
}

/** Reads until an empty batch; returns everything in delivery order. */
async function drain(client: pg.Client, cursor: Cursor, maxMessages = 100): Promise<{ rows: Row[]; cursor: Cursor; batches: Row[][] }> {
  const rows: Row[] = [];
  const batches: Row[][] = [];
  for (let i = 0; i < 1000; i++) {
    const batch = await read(client, cursor, maxMessages);
    if (batch.rows.length === 0) return { rows, cursor, batches };
    rows.push(...batch.rows);
    batches.push(batch.rows);
    cursor = batch.cursor;
  }
  throw new Error('drain: the reader never ran dry');
}

/**
 * Waits until every transaction that had ended or was running when called has ended: the
 * horizon is cluster-wide, so another test file's open transaction may hold it for a moment.
 */
async function settle(client: pg.Client, timeoutMs = 30_000): Promise<void> {
  const mark = (await client.query<{ w: string }>('SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS w')).rows[0]!.w;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const done = await client.query<{ ok: boolean }>('SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::xid8 AS ok', [mark]);
    if (done.rows[0]!.ok) return;
    if (Date.now() > deadline) throw new Error(`the horizon did not pass ${mark} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const xidOf = async (client: pg.Client): Promise<bigint> =>
  BigInt((await client.query<{ x: string }>('SELECT pg_current_xact_id()::text AS x')).rows[0]!.x);

const publish = async (client: pg.Client, key: string, data: object, lockKey = false): Promise<string> =>
  (
    await client.query<{ id: string }>(
      `SELECT pgrelay.publish('orders', $1, 'order.changed', $2::jsonb, lock_key => $3) AS id`,
      [key, JSON.stringify(data), lockKey],
    )
  ).rows[0]!.id;

const publishBatch = async (client: pg.Client, messages: Array<{ key: string; data: object }>): Promise<string[]> =>
  (
    await client.query<{ ids: string[] }>(`SELECT pgrelay.publish_batch($1::jsonb, lock_keys => true) AS ids`, [
      JSON.stringify(messages.map((m) => ({ topic: 'orders', key: m.key, type: 'order.changed', data: m.data }))),
    ])
  ).rows[0]!.ids;

/**
 * How A and B are serialised on K: the application's row lock on R (A under READ COMMITTED),
 * publish's lock_key (A under READ COMMITTED or REPEATABLE READ, where no next_xid bound is
 * known), or publish_batch's lock_keys.
 */
type Serialisation = 'row lock' | 'lock_key' | 'lock_key, A in REPEATABLE READ' | 'publish_batch lock_keys';
const SERIALISATIONS: Serialisation[] = ['row lock', 'lock_key', 'lock_key, A in REPEATABLE READ', 'publish_batch lock_keys'];

type Scenario = { a: string; aOther: string; b: string; xids: { a: bigint; b: bigint; c: bigint }; c: pg.Client; reader: pg.Client; db: string };

/**
 * A takes an xid, then C, then B. B locks row R, publishes K, commits. A locks R, publishes K
 * (position after B's, xid before B's) and key L, commits. C is still open when this returns.
 */
async function scenario(t: Test, options: { cPublishes?: boolean; serialise?: Serialisation } = {}): Promise<Scenario> {
  const serialise = options.serialise ?? 'row lock';
  const db = await freshDatabase(t);
  const [a, b, c, reader] = await Promise.all(
    ['A', 'B', 'C', 'reader'].map((name) => connect(t, db.connectionString, `held-horizon-${name}`)),
  );
  await reader!.query(`CREATE TABLE public.aggregates (id text PRIMARY KEY, version integer NOT NULL)`);
  await reader!.query(`INSERT INTO public.aggregates VALUES ('R', 0)`);

  await a!.query(serialise === 'lock_key, A in REPEATABLE READ' ? 'BEGIN ISOLATION LEVEL REPEATABLE READ' : 'BEGIN');
  const xa = await xidOf(a!);
  await c!.query('BEGIN');
  const xc = await xidOf(c!);
  await b!.query('BEGIN');
  const xb = await xidOf(b!);
  t.ok(xa < xc && xc < xb, `xids in the order A < C < B (${xa} < ${xc} < ${xb})`);

  let idA: string;
  let idB: string;
  let idAOther: string;
  if (serialise === 'row lock') {
    await b!.query(`UPDATE public.aggregates SET version = version + 1 WHERE id = 'R'`);
    idB = await publish(b!, 'K', { from: 'B', version: 1 });
    await b!.query('COMMIT');

    await a!.query(`SELECT version FROM public.aggregates WHERE id = 'R' FOR UPDATE`);
    await a!.query(`UPDATE public.aggregates SET version = version + 1 WHERE id = 'R'`);
    idA = await publish(a!, 'K', { from: 'A', version: 2 });
    idAOther = await publish(a!, 'L', { from: 'A' });
    await a!.query('COMMIT');
  } else if (serialise === 'publish_batch lock_keys') {
    [idB] = (await publishBatch(b!, [{ key: 'K', data: { from: 'B' } }])) as [string];
    // A blocks on K's lock until B commits.
    let waiting = true;
    const aPublishing = publishBatch(a!, [{ key: 'K', data: { from: 'A' } }, { key: 'L', data: { from: 'A' } }]).finally(() => {
      waiting = false;
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    t.ok(waiting, "A's publish_batch waits for B's key lock");
    await b!.query('COMMIT');
    [idA, idAOther] = (await aPublishing) as [string, string];
    await a!.query('COMMIT');
  } else {
    idB = await publish(b!, 'K', { from: 'B' }, true);
    // A blocks on K's advisory lock until B commits.
    let waiting = true;
    const aPublishing = publish(a!, 'K', { from: 'A' }, true).finally(() => {
      waiting = false;
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    t.ok(waiting, "A's publish waits for B's key lock");
    await b!.query('COMMIT');
    idA = await aPublishing;
    idAOther = await publish(a!, 'L', { from: 'A' }, true);
    await a!.query('COMMIT');
  }

  if (options.cPublishes) await publish(c!, 'Z', { from: 'C' });

  const positions = await reader!.query<{ id: string; position: string; xid: string; next_xid: string | null }>(
    `SELECT id::text AS id, position::text AS position, xid::text AS xid, next_xid::text AS next_xid FROM pgrelay.messages ORDER BY position`,
  );
  if (serialise === 'lock_key, A in REPEATABLE READ') {
    t.equal(positions.rows.find((row) => row.id === idA)?.next_xid, null, "A's message has no next_xid bound (REPEATABLE READ)");
  }
  const byId = new Map(positions.rows.map((row) => [row.id, row]));
  t.ok(BigInt(byId.get(idB)!.position) < BigInt(byId.get(idA)!.position), "B's K has the smaller position");
  t.equal(byId.get(idA)!.xid, String(xa), "A's K carries A's (older) xid");
  t.equal(byId.get(idB)!.xid, String(xb), "B's K carries B's (younger) xid");
  return { a: idA, aOther: idAOther, b: idB, xids: { a: xa, b: xb, c: xc }, c: c!, reader: reader!, db: db.connectionString };
}

for (const serialise of SERIALISATIONS) t.test(`A (older xid) publishes K after B committed K, C holds the horizon between them (${serialise})`, async (t) => {
  const s = await scenario(t, { serialise });

  // While C is open, B's message lies above the horizon: nothing of K may come out, and A's K
  // above all must not come out before B's. Read repeatedly and with several batch sizes.
  let cursor = START;
  const early: Row[] = [];
  for (const max of [100, 1, 2, 10000, 100]) {
    const batch = await read(s.reader, cursor, max);
    early.push(...batch.rows);
    cursor = batch.cursor;
  }
  t.same(
    early.filter((row) => row.key === 'K').map((row) => row.data.from),
    [],
    'while C is open no message of K is returned',
  );
  t.notOk(early.some((row) => row.id === s.a), "A's K is held back");
  t.notOk(early.some((row) => row.id === s.b), "B's K (above the horizon) is not returned");

  await s.c.query('COMMIT');
  await settle(s.reader);

  const after = await drain(s.reader, cursor);
  const delivered = [...early, ...after.rows];
  t.same(
    delivered.filter((row) => row.key === 'K').map((row) => row.id),
    [s.b, s.a],
    "after C commits: B's K, then A's K (position order, which is commit order)",
  );
  t.same(delivered.filter((row) => row.key === 'L').map((row) => row.id), [s.aOther], "A's other key is delivered once");
  t.equal(delivered.length, 3, 'three messages in all, none twice');

  // A reader starting from scratch after everything committed sees the same order.
  const fresh = await drain(s.reader, START);
  t.same(fresh.rows.filter((row) => row.key === 'K').map((row) => row.id), [s.b, s.a], 'a fresh reader: B then A');
});

t.test('the same with max_messages => 1 does not stall and keeps B before A', async (t) => {
  const s = await scenario(t);

  const whileOpen = await read(s.reader, START, 1);
  t.notOk(whileOpen.rows.some((row) => row.key === 'K'), 'while C is open, max_messages => 1 returns nothing of K');

  await s.c.query('COMMIT');
  await settle(s.reader);

  const first = await read(s.reader, whileOpen.cursor, 1);
  t.ok(first.rows.length > 0, 'after C commits, the first read with max_messages => 1 returns a batch');
  const firstK = first.rows.filter((row) => row.key === 'K').map((row) => row.id);
  t.ok(firstK.length === 0 || firstK[0] === s.b, "the batch does not start key K with A's message");
  const rest = await drain(s.reader, first.cursor, 1);
  const all = [...whileOpen.rows, ...first.rows, ...rest.rows];
  t.same(all.filter((row) => row.key === 'K').map((row) => row.id), [s.b, s.a], 'B then A, each once');
  t.equal(all.length, 3, 'three messages in all');
  t.ok(rest.batches.length + 1 <= 3, `no empty or repeated batches (${rest.batches.length + 1} batches)`);
});

t.test('C publishes too: its message is delivered, and K keeps B before A', async (t) => {
  const s = await scenario(t, { cPublishes: true });
  const whileOpen = await drain(s.reader, START);
  t.notOk(whileOpen.rows.some((row) => row.key === 'K' || row.key === 'Z'), 'nothing of K or Z while C is open');
  await s.c.query('COMMIT');
  await settle(s.reader);
  const after = await drain(s.reader, whileOpen.cursor);
  const all = [...whileOpen.rows, ...after.rows];
  t.same(all.filter((row) => row.key === 'K').map((row) => row.id), [s.b, s.a], 'B then A');
  t.same(all.filter((row) => row.key === 'Z').map((row) => row.data.from), ['C'], "C's message once");
  t.equal(all.length, 4, 'four messages in all');
});

t.test('topic, prefix and partition readers hold A back too', async (t) => {
  const s = await scenario(t);
  const readIds = async (sqlText: string, params: unknown[] = []): Promise<string[]> =>
    (await s.reader.query<{ id: string }>(sqlText, params)).rows.map((row) => row.id);
  const whileOpen: Array<[string, string[]]> = [
    ['topic', await readIds(`SELECT id::text AS id FROM pgrelay.read('0', 0, 100, ARRAY['orders'])`)],
    ['prefix', await readIds(`SELECT id::text AS id FROM pgrelay.read('0', 0, 100, ARRAY['ord*'])`)],
  ];
  for (let p = 0; p < 4; p++) {
    whileOpen.push([`partition ${p}/4`, await readIds(`SELECT id::text AS id FROM pgrelay.read('0', 0, 1, NULL, $1, 4)`, [p])]);
  }
  for (const [label, ids] of whileOpen) {
    t.notOk(ids.includes(s.a), `${label} reader: A's K is held back while C is open`);
    t.notOk(ids.includes(s.b), `${label} reader: B's K is not returned while C is open`);
  }
  await s.c.query('COMMIT');
  await settle(s.reader);
  const perPartition: string[][] = [];
  for (let p = 0; p < 4; p++) {
    perPartition.push(
      await readIds(`SELECT id::text AS id FROM pgrelay.read('0', 0, 1, NULL, $1, 4) WHERE key = 'K'`, [p]),
    );
  }
  const withK = perPartition.filter((ids) => ids.length > 0);
  t.equal(withK.length, 1, 'key K lives in exactly one partition');
  t.same(withK[0], [s.b, s.a], 'its partition reader with max_messages => 1 returns B then A in one batch');
  t.same(
    await readIds(`SELECT id::text AS id FROM pgrelay.read('0', 0, 1, ARRAY['orders']) WHERE key = 'K'`),
    [s.b, s.a],
    'topic reader with max_messages => 1: B then A',
  );
});

t.test('publish_batch in one transaction: array order is position order and delivery order', async (t) => {
  const db = await freshDatabase(t);
  const client = await connect(t, db.connectionString, 'held-horizon-batch');
  const messages = [
    { topic: 'orders', key: 'K', type: 'e', data: { n: 1 } },
    { topic: 'orders', key: 'L', type: 'e', data: { n: 2 } },
    { topic: 'orders', key: 'K', type: 'e', data: { n: 3 } },
    { topic: 'orders', key: null, type: 'e', data: { n: 4 } },
    { topic: 'orders', key: 'K', type: 'e', data: { n: 5 } },
    { topic: 'other', key: 'K', type: 'e', data: { n: 6 } },
  ];
  await client.query('BEGIN');
  const first = await publish(client, 'K', { n: 0 });
  const ids = (
    await client.query<{ ids: string[] }>(`SELECT pgrelay.publish_batch($1::jsonb) AS ids`, [JSON.stringify(messages)])
  ).rows[0]!.ids;
  const last = await publish(client, 'K', { n: 7 });
  await client.query('COMMIT');
  await settle(client);
  t.equal(ids.length, messages.length, 'one id per message');
  t.equal(new Set(ids).size, ids.length, 'ids are distinct');

  const stored = await client.query<{ id: string; position: string; n: number }>(
    `SELECT id::text AS id, position::text AS position, (data->>'n')::int AS n FROM pgrelay.messages ORDER BY position`,
  );
  t.same(stored.rows.map((row) => row.n), [0, 1, 2, 3, 4, 5, 6, 7], 'positions follow call order, then array order');
  t.same(stored.rows.map((row) => row.id), [first, ...ids, last], 'returned ids are in input order');

  const delivered = await drain(client, START, 1);
  t.same(delivered.rows.map((row) => row.data.n), [0, 1, 2, 3, 4, 5, 6, 7], 'delivered in array order, one at a time');
});
