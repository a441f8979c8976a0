// The TypeScript client: the three ways to create it, transactions (its own and the caller's),
// the result-parser interceptor that makes sql.type(...) schemas real, and bigint-safe positions.
import t from 'tap';
import { SchemaValidationError, sql } from 'slonik';
import { z } from 'zod';
import { createClient, createPgrelayPool, START, type PgrelayClient } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';

const message = (key: string, data: unknown = { key }) => ({ topic: 'orders', key, type: 'order.created', data });

async function settle(connectionString: string): Promise<void> {
  const [row] = await query<{ w: string }>(connectionString, 'SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS w');
  const deadline = Date.now() + 30_000;
  while (!(await query<{ ok: boolean }>(connectionString, 'SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::xid8 AS ok', [row!.w]))[0]!.ok) {
    if (Date.now() > deadline) throw new Error('the horizon did not pass');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const keysIn = async (connectionString: string): Promise<string[]> =>
  (await query<{ key: string }>(connectionString, 'SELECT key FROM pgrelay.messages ORDER BY position')).map((row) => row.key);

async function readAll(client: PgrelayClient): Promise<string[]> {
  const keys: string[] = [];
  let cursor = START;
  for (let i = 0; i < 100; i++) {
    const batch = await client.read(cursor, { maxMessages: 3 });
    if (batch.messages.length === 0) return keys;
    keys.push(...batch.messages.map((m) => m.key ?? 'null'));
    cursor = batch.cursor;
  }
  throw new Error('never ran dry');
}

t.test('createClient({ connectionString }): its own pool, closed by end()', async (t) => {
  const db = await freshDatabase(t);
  const client = await createClient({ connectionString: db.connectionString, applicationName: 'pgrelay-client-test' });
  let ended = false;
  t.teardown(async () => {
    if (!ended) await client.end();
  });
  const [installed] = await query<{ v: string }>(db.connectionString, 'SELECT pgrelay.version() AS v');
  t.equal(await client.version(), installed!.v, 'version() is pgrelay.version()');
  const id = await client.publish(message('a'));
  const ids = await client.publishMany([message('b'), message('c')]);
  t.same(await keysIn(db.connectionString), ['a', 'b', 'c'], 'publish and publishMany write');
  await settle(db.connectionString);
  const batch = await client.read();
  t.same(batch.messages.map((m) => m.id), [id, ...ids], 'read() from the start returns them');
  t.same(batch.cursor, { xid: batch.messages[2]!.xid, position: batch.messages[2]!.position }, 'the cursor is the last (xid, position)');
  const names = await query<{ n: number }>(
    db.connectionString,
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pgrelay-client-test'`,
  );
  t.ok(names[0]!.n >= 1, 'applicationName reaches the server');
  await client.end();
  ended = true;
  await t.rejects(client.publish(message('d')), 'after end() the client no longer works');
});

t.test('createClient({ pool }): uses the caller’s pool and leaves it open', async (t) => {
  const db = await freshDatabase(t);
  const pool = await createPgrelayPool(db.connectionString, { maximumPoolSize: 2 });
  t.teardown(() => pool.end());
  const client = await createClient({ pool });
  await client.publish(message('a'));
  await client.transaction(async (tx) => {
    await tx.publish(message('b'));
    await tx.connection.query(sql.unsafe`SELECT 1`);
  });
  await client.end();
  t.equal(await pool.oneFirst(sql.type(z.object({ n: z.string() }))`SELECT count(*) AS n FROM pgrelay.messages`), '2', 'end() leaves the pool open; both messages exist');
  await settle(db.connectionString);
  t.same(await readAll(client), ['a', 'b'], 'reads work through the pool');
});

t.test('createClient({ connection }) inside the caller’s slonik transaction', async (t) => {
  const db = await freshDatabase(t);
  const pool = await createPgrelayPool(db.connectionString, { maximumPoolSize: 2 });
  t.teardown(() => pool.end());
  await pool.query(sql.unsafe`CREATE TABLE public.orders (id text PRIMARY KEY)`);

  await t.rejects(
    pool.transaction(async (connection) => {
      const client = await createClient({ connection });
      await connection.query(sql.unsafe`INSERT INTO public.orders VALUES ('rolled-back')`);
      await client.publish(message('rolled-back'));
      await client.publishMany([message('rolled-back-2')]);
      throw new Error('abort');
    }),
    { message: 'abort' },
  );
  t.same(await keysIn(db.connectionString), [], 'rolled back: no message');
  t.same(await query(db.connectionString, 'SELECT id FROM public.orders'), [], 'rolled back: no business row');

  await pool.transaction(async (connection) => {
    const client = await createClient({ connection });
    await connection.query(sql.unsafe`INSERT INTO public.orders VALUES ('kept')`);
    await client.publish(message('kept'));
    // A nested transaction() is a savepoint: its failure undoes only its own publish.
    await t.rejects(
      client.transaction(async (tx) => {
        await tx.publish(message('inner'));
        throw new Error('inner abort');
      }),
      { message: 'inner abort' },
    );
    await client.publish(message('kept-2'));
    t.same(
      await connection.anyFirst(sql.type(z.object({ key: z.string() }))`SELECT key FROM pgrelay.messages ORDER BY position`),
      ['kept', 'kept-2'],
      'inside the transaction: the savepoint took the inner publish with it',
    );
    t.same(await keysIn(db.connectionString), [], 'not visible to others before the commit');
  });
  t.same(await keysIn(db.connectionString), ['kept', 'kept-2'], 'committed with the caller’s transaction');
  t.same(await query(db.connectionString, 'SELECT id FROM public.orders'), [{ id: 'kept' }], 'together with the business row');
});

t.test('the result-parser interceptor validates sql.type(...) rows', async (t) => {
  const db = await freshDatabase(t);
  const pool = await createPgrelayPool(db.connectionString, { maximumPoolSize: 1 });
  t.teardown(() => pool.end());

  const failure = async (run: () => Promise<unknown>): Promise<unknown> => {
    try {
      await run();
    } catch (error) {
      return error;
    }
    return undefined;
  };
  const wrongType = await failure(() => pool.one(sql.type(z.object({ n: z.string() }))`SELECT 1 AS n`));
  t.ok(wrongType instanceof SchemaValidationError, `a number where the schema wants a string throws SchemaValidationError (got ${String(wrongType)})`);
  t.same((wrongType as SchemaValidationError | undefined)?.row, { n: 1 }, 'the error carries the offending row');
  const refinement = await failure(() => pool.any(sql.type(z.object({ id: z.string().uuid() }))`SELECT 'not-a-uuid' AS id`));
  t.ok(refinement instanceof SchemaValidationError, 'a string failing a refinement throws SchemaValidationError too');
  t.same(
    await pool.one(sql.type(z.object({ n: z.string().transform((value) => Number(value) * 2) }))`SELECT '21' AS n`),
    { n: 42 },
    'a passing row is the parsed (transformed) value',
  );
  t.same(await pool.one(sql.unsafe`SELECT 1 AS n`), { n: 1 }, 'queries without a schema are left alone');

  // The client's own queries go through the same check: a read returning a wrong shape must fail.
  const client = await createClient({ pool });
  await query(db.connectionString, `SELECT pgrelay.publish('orders', 'k', 'e', '{}')`);
  await settle(db.connectionString);
  const { messages, cursor } = await client.read();
  t.equal(messages.length, 1, 'a well-formed read passes validation');
  // A row publish would never write (metadata not an object), put there behind pgrelay's back.
  await query(
    db.connectionString,
    `INSERT INTO pgrelay.messages (position, xid, topic, type, data, metadata)
     VALUES (nextval('pgrelay.message_position_seq'), pg_current_xact_id(), 'orders', 'e', '{}', '[1]')`,
  );
  await settle(db.connectionString);
  const malformed = await failure(() => client.read(cursor));
  t.ok(malformed instanceof SchemaValidationError, `client.read rejects a row of the wrong shape with SchemaValidationError (got ${String(malformed)})`);
});

t.test('positions, xids and bigints come back as exact decimal strings', async (t) => {
  const db = await freshDatabase(t);
  const pool = await createPgrelayPool(db.connectionString, { maximumPoolSize: 1 });
  t.teardown(() => pool.end());
  const client = await createClient({ pool });

  t.equal(await pool.oneFirst(sql.unsafe`SELECT 9007199254740993::int8 AS n`), '9007199254740993', 'int8 stays a string, beyond 2^53');
  // Positions past 2^53, as in a long-lived log.
  await query(db.connectionString, 'ALTER SEQUENCE pgrelay.message_position_seq RESTART WITH 9007199254740993');
  const id = await client.publish(message('big'));
  await client.publish(message('big'));
  await settle(db.connectionString);
  const first = await client.read(START, { maxMessages: 1 });
  t.equal(first.messages[0]!.id, id, 'the first message');
  t.equal(first.messages[0]!.position, '9007199254740993', 'its position is exact (2^53 + 1)');
  t.equal(typeof first.messages[0]!.xid, 'string', 'xid is a string');
  t.match(first.messages[0]!.xid, /^\d+$/, 'xid is a decimal string');
  t.match(first.messages[0]!.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'created_at is an ISO string');
  const second = await client.read(first.cursor, { maxMessages: 1 });
  t.equal(second.messages[0]!.position, '9007199254740994', 'the next position is exact too (would round to ...992/...996 as a number)');
  t.same(second.cursor, { xid: second.messages[0]!.xid, position: '9007199254740994' }, 'the cursor keeps the exact position');
  t.same((await client.read(second.cursor)).messages, [], 'nothing after it');
});
