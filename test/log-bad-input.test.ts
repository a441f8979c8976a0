// DESIGN invariant 6 for the message log: every bad argument of publish, publish_batch and read
// raises SQLSTATE PR001 (invalid argument) or PR002 (payload too large), never XX000 or a generic
// error, with a message and a COLUMN field naming the argument, and nothing is written. The
// TypeScript client maps them to InvalidArgumentError / PayloadTooLargeError.
import t, { type Test } from 'tap';
import pg from 'pg';
import { sql } from 'slonik';
import {
  createClient,
  createPgrelayPool,
  InvalidArgumentError,
  PayloadTooLargeError,
  PgrelayError,
  START,
} from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';

type Expected = { code: 'PR001' | 'PR002'; fn: string; argument: string };

async function connect(t: Test, connectionString: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString, application_name: 'bad-input', connectionTimeoutMillis: 15_000 });
  client.on('error', () => {});
  await client.connect();
  await client.query(`SET statement_timeout = '20s'`);
  t.teardown(() => client.end().catch(() => {}));
  return client;
}

/** Runs one statement that must fail as expected; returns nothing, asserts everything. */
async function expectError(t: Test, client: pg.Client, label: string, text: string, params: unknown[], expected: Expected): Promise<void> {
  let error: (Error & { code?: string; column?: string }) | undefined;
  try {
    await client.query(text, params);
  } catch (caught) {
    error = caught as Error & { code?: string; column?: string };
  }
  if (error === undefined) {
    t.fail(`${label}: succeeded, expected ${expected.code} naming ${expected.argument}`);
    return;
  }
  t.equal(error.code, expected.code, `${label}: SQLSTATE ${expected.code} (got ${error.code}: ${error.message})`);
  t.equal(error.column, expected.argument, `${label}: the COLUMN field names ${expected.argument}`);
  t.ok(
    error.message.startsWith(`${expected.fn}: argument ${expected.argument} `),
    `${label}: the message names the function and argument: ${JSON.stringify(error.message.slice(0, 160))}`,
  );
}

const valid = { topic: 'orders', key: 'k', type: 'order.created', data: { a: 1 } };
const PUBLISH = 'pgrelay.publish';
const BATCH = 'pgrelay.publish_batch';
const READ = 'pgrelay.read';

t.test('publish: bad arguments raise PR001/PR002 naming the argument, and write nothing', async (t) => {
  const db = await freshDatabase(t);
  const client = await connect(t, db.connectionString);
  const publish = `SELECT pgrelay.publish(topic => $1, key => $2, type => $3, data => $4::jsonb, metadata => $5::jsonb, lock_key => $6)`;
  const args = (over: Partial<{ topic: unknown; key: unknown; type: unknown; data: unknown; metadata: unknown; lockKey: unknown }>) => {
    const merged = { topic: valid.topic, key: valid.key, type: valid.type, data: JSON.stringify(valid.data), metadata: '{}', lockKey: false, ...over };
    return [merged.topic, merged.key, merged.type, merged.data, merged.metadata, merged.lockKey];
  };
  const cases: Array<[string, unknown[], Expected]> = [
    ['NULL topic', args({ topic: null }), { code: 'PR001', fn: PUBLISH, argument: 'topic' }],
    ['empty topic', args({ topic: '' }), { code: 'PR001', fn: PUBLISH, argument: 'topic' }],
    ['201-character topic', args({ topic: 'a'.repeat(201) }), { code: 'PR001', fn: PUBLISH, argument: 'topic' }],
    ['topic with a space', args({ topic: 'order created' }), { code: 'PR001', fn: PUBLISH, argument: 'topic' }],
    ['topic with a slash', args({ topic: 'orders/created' }), { code: 'PR001', fn: PUBLISH, argument: 'topic' }],
    ['topic with a star', args({ topic: 'orders*' }), { code: 'PR001', fn: PUBLISH, argument: 'topic' }],
    ['topic with a trailing newline', args({ topic: 'orders\n' }), { code: 'PR001', fn: PUBLISH, argument: 'topic' }],
    ['topic with non-ASCII letters', args({ topic: 'ordérs' }), { code: 'PR001', fn: PUBLISH, argument: 'topic' }],
    ['SQL injection in topic', args({ topic: "x'); DROP TABLE pgrelay.messages; --" }), { code: 'PR001', fn: PUBLISH, argument: 'topic' }],
    ['NULL type', args({ type: null }), { code: 'PR001', fn: PUBLISH, argument: 'type' }],
    ['empty type', args({ type: '' }), { code: 'PR001', fn: PUBLISH, argument: 'type' }],
    ['201-character type', args({ type: 't'.repeat(201) }), { code: 'PR001', fn: PUBLISH, argument: 'type' }],
    ['NULL data', args({ data: null }), { code: 'PR001', fn: PUBLISH, argument: 'data' }],
    ['metadata an array', args({ metadata: '[]' }), { code: 'PR001', fn: PUBLISH, argument: 'metadata' }],
    ['metadata a string', args({ metadata: '"trace"' }), { code: 'PR001', fn: PUBLISH, argument: 'metadata' }],
    ['metadata a JSON null', args({ metadata: 'null' }), { code: 'PR001', fn: PUBLISH, argument: 'metadata' }],
    ['metadata SQL NULL', args({ metadata: null }), { code: 'PR001', fn: PUBLISH, argument: 'metadata' }],
    ['1001-character key', args({ key: 'k'.repeat(1001) }), { code: 'PR001', fn: PUBLISH, argument: 'key' }],
    ['NULL lock_key', args({ lockKey: null }), { code: 'PR001', fn: PUBLISH, argument: 'lock_key' }],
  ];
  for (const [label, params, expected] of cases) await expectError(t, client, label, publish, params, expected);

  // Positional form, as a plain SQL caller writes it.
  await expectError(t, client, 'positional NULL topic', `SELECT pgrelay.publish(NULL, 'k', 't', '{}')`, [], { code: 'PR001', fn: PUBLISH, argument: 'topic' });
  await expectError(t, client, 'positional NULL data', `SELECT pgrelay.publish('orders', 'k', 't', NULL)`, [], { code: 'PR001', fn: PUBLISH, argument: 'data' });

  // The payload limit, lowered for this session.
  await client.query('SET pgrelay.max_payload_bytes = 1000');
  await expectError(t, client, 'data over pgrelay.max_payload_bytes', publish, args({ data: JSON.stringify({ blob: 'x'.repeat(2000) }) }), {
    code: 'PR002',
    fn: PUBLISH,
    argument: 'data',
  });
  await expectError(t, client, 'metadata pushing the message over the limit', publish, args({ metadata: JSON.stringify({ blob: 'x'.repeat(2000) }) }), {
    code: 'PR002',
    fn: PUBLISH,
    argument: 'data',
  });
  t.equal(Number((await query<{ n: string }>(db.connectionString, 'SELECT count(*) AS n FROM pgrelay.messages'))[0]!.n), 0, 'no bad publish wrote anything');

  // The limits are inclusive and the error path has not broken anything: good values still work.
  await client.query(publish, args({ data: JSON.stringify({ blob: 'x'.repeat(500) }) }));
  await client.query('RESET pgrelay.max_payload_bytes');
  await client.query(publish, args({ topic: 'a'.repeat(200), key: 'k'.repeat(1000), type: 't'.repeat(200) }));
  await client.query(publish, args({ data: JSON.stringify({ blob: 'x'.repeat(2000) }) }));
  // SQL injection in the free-text fields is stored verbatim.
  const injection = "x'); DROP TABLE pgrelay.messages; --";
  await client.query(publish, args({ key: injection, type: injection, data: JSON.stringify({ s: injection }) }));
  const [stored] = await query<{ n: string; injected: string }>(
    db.connectionString,
    `SELECT count(*)::text AS n, count(*) FILTER (WHERE key = $1 AND type = $1 AND data->>'s' = $1)::text AS injected FROM pgrelay.messages`,
    [injection],
  );
  t.same(stored, { n: '4', injected: '1' }, 'the good publishes (at the limits, and with hostile text in key/type/data) were stored as given');
  t.same(await query(db.connectionString, `SELECT to_regclass('pgrelay.messages')::text AS t`), [{ t: 'pgrelay.messages' }], 'pgrelay.messages still exists');
});

t.test('publish_batch: bad arguments raise PR001/PR002 naming the element, and write nothing', async (t) => {
  const db = await freshDatabase(t);
  const client = await connect(t, db.connectionString);
  const batch = `SELECT pgrelay.publish_batch($1::jsonb)`;
  const json = (value: unknown): string => JSON.stringify(value);
  const cases: Array<[string, unknown[], Expected]> = [
    ['NULL messages', [null], { code: 'PR001', fn: BATCH, argument: 'messages' }],
    ['an object', [json(valid)], { code: 'PR001', fn: BATCH, argument: 'messages' }],
    ['a string', [json('orders')], { code: 'PR001', fn: BATCH, argument: 'messages' }],
    ['an array holding a number', [json([1])], { code: 'PR001', fn: BATCH, argument: 'messages[0]' }],
    ['an array holding a JSON null', [json([valid, null])], { code: 'PR001', fn: BATCH, argument: 'messages[1]' }],
    ['an element with a bad topic', [json([valid, { ...valid, topic: 'bad topic' }])], { code: 'PR001', fn: BATCH, argument: 'messages[1].topic' }],
    ['SQL injection in a topic', [json([{ ...valid, topic: "x'); DROP TABLE pgrelay.messages; --" }])], { code: 'PR001', fn: BATCH, argument: 'messages[0].topic' }],
    ['a missing topic', [json([{ type: 'e', data: 1 }])], { code: 'PR001', fn: BATCH, argument: 'messages[0].topic' }],
    ['a numeric topic', [json([{ ...valid, topic: 5 }])], { code: 'PR001', fn: BATCH, argument: 'messages[0].topic' }],
    ['a missing type', [json([valid, valid, { topic: 'o', data: 1 }])], { code: 'PR001', fn: BATCH, argument: 'messages[2].type' }],
    ['an empty type', [json([{ ...valid, type: '' }])], { code: 'PR001', fn: BATCH, argument: 'messages[0].type' }],
    ['a missing data', [json([valid, { topic: 'o', type: 'e' }])], { code: 'PR001', fn: BATCH, argument: 'messages[1].data' }],
    ['a numeric key', [json([{ ...valid, key: 5 }])], { code: 'PR001', fn: BATCH, argument: 'messages[0].key' }],
    ['an object key', [json([{ ...valid, key: { id: 1 } }])], { code: 'PR001', fn: BATCH, argument: 'messages[0].key' }],
    ['a 1001-character key', [json([{ ...valid, key: 'k'.repeat(1001) }])], { code: 'PR001', fn: BATCH, argument: 'messages[0].key' }],
    ['array metadata', [json([{ ...valid, metadata: [] }])], { code: 'PR001', fn: BATCH, argument: 'messages[0].metadata' }],
    ['null metadata', [json([{ ...valid, metadata: null }])], { code: 'PR001', fn: BATCH, argument: 'messages[0].metadata' }],
    ['10001 elements', [json(Array.from({ length: 10001 }, () => valid))], { code: 'PR001', fn: BATCH, argument: 'messages' }],
  ];
  for (const [label, params, expected] of cases) await expectError(t, client, label, batch, params, expected);
  await expectError(t, client, 'NULL lock_keys', `SELECT pgrelay.publish_batch($1::jsonb, NULL)`, [json([valid])], {
    code: 'PR001',
    fn: BATCH,
    argument: 'lock_keys',
  });

  await client.query('SET pgrelay.max_payload_bytes = 1000');
  await expectError(t, client, 'an element over the payload limit', batch, [json([valid, { ...valid, data: 'x'.repeat(2000) }])], {
    code: 'PR002',
    fn: BATCH,
    argument: 'messages[1].data',
  });
  await client.query('RESET pgrelay.max_payload_bytes');

  t.equal(Number((await query<{ n: string }>(db.connectionString, 'SELECT count(*) AS n FROM pgrelay.messages'))[0]!.n), 0, 'no bad batch wrote anything (not even its valid elements)');

  // The upper bound is inclusive: 10000 elements are accepted (rolled back to keep the check above meaningful).
  await client.query('BEGIN');
  const ok = await client.query<{ n: number }>(`SELECT cardinality(pgrelay.publish_batch($1::jsonb)) AS n`, [json(Array.from({ length: 10000 }, () => valid))]);
  await client.query('ROLLBACK');
  t.equal(ok.rows[0]!.n, 10000, '10000 elements are accepted');
  const good = await client.query<{ ids: string[] }>(`SELECT pgrelay.publish_batch($1::jsonb) AS ids`, [json([{ ...valid, data: null, key: null }])]);
  t.equal(good.rows[0]!.ids.length, 1, 'a JSON null data and a null key are accepted');
});

t.test('read: bad arguments raise PR001 naming the argument', async (t) => {
  const db = await freshDatabase(t);
  const client = await connect(t, db.connectionString);
  const read = `SELECT * FROM pgrelay.read(after_xid => $1::xid8, after_position => $2::bigint, max_messages => $3::int,
                                           topics => $4::text[], partition_index => $5::int, partition_count => $6::int)`;
  const args = (over: Partial<{ xid: unknown; position: unknown; max: unknown; topics: unknown; index: unknown; count: unknown }>) => {
    const merged = { xid: '0', position: '0', max: 100, topics: null, index: 0, count: 1, ...over };
    return [merged.xid, merged.position, merged.max, merged.topics, merged.index, merged.count];
  };
  const cases: Array<[string, unknown[], Expected]> = [
    ['NULL after_xid', args({ xid: null }), { code: 'PR001', fn: READ, argument: 'after_xid' }],
    ['negative after_position', args({ position: '-1' }), { code: 'PR001', fn: READ, argument: 'after_position' }],
    ['NULL after_position', args({ position: null }), { code: 'PR001', fn: READ, argument: 'after_position' }],
    ['max_messages 0', args({ max: 0 }), { code: 'PR001', fn: READ, argument: 'max_messages' }],
    ['max_messages 10001', args({ max: 10001 }), { code: 'PR001', fn: READ, argument: 'max_messages' }],
    ['max_messages NULL', args({ max: null }), { code: 'PR001', fn: READ, argument: 'max_messages' }],
    ['partition_count 0', args({ count: 0 }), { code: 'PR001', fn: READ, argument: 'partition_count' }],
    ['partition_count NULL', args({ count: null }), { code: 'PR001', fn: READ, argument: 'partition_count' }],
    ['partition_index = partition_count', args({ index: 2, count: 2 }), { code: 'PR001', fn: READ, argument: 'partition_index' }],
    ['partition_index > partition_count', args({ index: 7, count: 4 }), { code: 'PR001', fn: READ, argument: 'partition_index' }],
    ['negative partition_index', args({ index: -1, count: 4 }), { code: 'PR001', fn: READ, argument: 'partition_index' }],
    ['NULL partition_index', args({ index: null }), { code: 'PR001', fn: READ, argument: 'partition_index' }],
    ['empty topics array', args({ topics: [] }), { code: 'PR001', fn: READ, argument: 'topics' }],
    ['an invalid topic pattern', args({ topics: ['orders', 'bad topic'] }), { code: 'PR001', fn: READ, argument: 'topics' }],
    ['a star inside a pattern', args({ topics: ['ord*ers'] }), { code: 'PR001', fn: READ, argument: 'topics' }],
    ['a NULL pattern', args({ topics: [null] }), { code: 'PR001', fn: READ, argument: 'topics' }],
    ['SQL injection in a pattern', args({ topics: ["x'); DROP TABLE pgrelay.messages; --"] }), { code: 'PR001', fn: READ, argument: 'topics' }],
  ];
  for (const [label, params, expected] of cases) await expectError(t, client, label, read, params, expected);
  t.same((await client.query(read, args({ max: 10000, topics: ['*'], index: 1023, count: 1024 }))).rows, [], 'the bounds are inclusive');
  t.same(await query(db.connectionString, `SELECT to_regclass('pgrelay.messages')::text AS t`), [{ t: 'pgrelay.messages' }], 'pgrelay.messages still exists');
});

t.test('the TypeScript client maps these errors to typed errors', async (t) => {
  const db = await freshDatabase(t);
  const client = await createClient({ connectionString: db.connectionString, maximumPoolSize: 2 });
  t.teardown(() => client.end());

  const expectTyped = async (label: string, run: () => Promise<unknown>, cls: typeof InvalidArgumentError, sqlState: string, argument: string): Promise<void> => {
    let error: unknown;
    try {
      await run();
    } catch (caught) {
      error = caught;
    }
    t.ok(error instanceof cls, `${label}: ${cls.name} (got ${(error as Error | undefined)?.name}: ${(error as Error | undefined)?.message})`);
    t.ok(error instanceof PgrelayError, `${label}: a PgrelayError`);
    t.equal((error as PgrelayError | undefined)?.sqlState, sqlState, `${label}: .sqlState ${sqlState}`);
    t.equal((error as PgrelayError | undefined)?.argument, argument, `${label}: .argument ${argument}`);
    t.match((error as Error | undefined)?.message, argument, `${label}: the message names ${argument}`);
  };

  await expectTyped('publish, bad topic', () => client.publish({ ...valid, topic: 'bad topic' }), InvalidArgumentError, 'PR001', 'topic');
  await expectTyped('publish, empty type', () => client.publish({ ...valid, type: '' }), InvalidArgumentError, 'PR001', 'type');
  await expectTyped('publish, array metadata', () => client.publish({ ...valid, metadata: [] as unknown as Record<string, unknown> }), InvalidArgumentError, 'PR001', 'metadata');
  await expectTyped(
    'publishMany, bad second topic',
    () => client.publishMany([valid, { ...valid, topic: 'x y' }]),
    InvalidArgumentError,
    'PR001',
    'messages[1].topic',
  );
  await expectTyped('read, max 0', () => client.read(START, { maxMessages: 0 }), InvalidArgumentError, 'PR001', 'max_messages');
  await expectTyped('read, no topics', () => client.read(START, { topics: [] }), InvalidArgumentError, 'PR001', 'topics');
  await expectTyped('read, bad partition', () => client.read(START, { partition: 4, partitions: 4 }), InvalidArgumentError, 'PR001', 'partition_index');

  const pool = await createPgrelayPool(db.connectionString, { maximumPoolSize: 1 });
  t.teardown(() => pool.end());
  await pool.connect(async (connection) => {
    await connection.query(sql.unsafe`SET pgrelay.max_payload_bytes = 1000`);
    const scoped = await createClient({ connection });
    await expectTyped('publish over the payload limit', () => scoped.publish({ ...valid, data: 'x'.repeat(2000) }), PayloadTooLargeError, 'PR002', 'data');
    await expectTyped(
      'publishMany over the payload limit',
      () => scoped.publishMany([valid, valid, { ...valid, data: 'x'.repeat(2000) }]),
      PayloadTooLargeError,
      'PR002',
      'messages[2].data',
    );
  });
  t.equal(Number((await query<{ n: string }>(db.connectionString, 'SELECT count(*) AS n FROM pgrelay.messages'))[0]!.n), 0, 'nothing was written');
});
