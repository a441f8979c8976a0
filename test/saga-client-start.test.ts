// client.sagas.start of a client made from a connection string runs on a bare `pg` pool of its
// own (client/pool.ts createLeanQuery), not through slonik. Proves it is the same call: the id,
// the idempotency key, pgrelay's errors mapped to their classes; that inside transaction() start
// still joins the transaction (a rollback leaves no saga); that the pool's connections carry the
// application name; and that end() closes them.
import t from 'tap';
import { createClient, InvalidArgumentError, NotFoundError } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';

const NOOP = `CREATE FUNCTION public.noop(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
  CREATE FUNCTION public.settings(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('statement_timeout', current_setting('statement_timeout'),
                              'idle_in_transaction_session_timeout', current_setting('idle_in_transaction_session_timeout')) $$`;

t.test('start on the lean pool: same results and errors; transaction() still joins; end() closes it', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  await query(url, NOOP);
  const client = await createClient({ connectionString: url, maximumPoolSize: 4, applicationName: 'lean-start-test' });
  let ended = false;
  t.teardown(async () => {
    if (!ended) await client.end();
  });
  await client.sagas.define('l.one', { steps: [{ name: 'a', action: { sql: 'public.noop' } }] });

  const ids = await Promise.all(Array.from({ length: 12 }, (_, i) => client.sagas.start('l.one', { i })));
  t.equal(new Set(ids).size, 12);
  t.ok(ids.every((id) => /^[0-9a-f-]{36}$/.test(id)), 'uuids');
  const statuses = await Promise.all(ids.map((id) => client.sagas.status(id)));
  t.same(statuses.map((s) => s.status), ids.map(() => 'completed'));
  t.same(statuses.map((s) => s.input), ids.map((_, i) => ({ i })), 'inputs as given');

  const keyed = await client.sagas.start('l.one', {}, { idempotencyKey: 'k' });
  t.equal(await client.sagas.start('l.one', { other: true }, { idempotencyKey: 'k' }), keyed, 'the same key, the same saga');

  const failure = async (fn: () => Promise<unknown>) => fn().then(() => undefined, (error: unknown) => error);
  const unknown = await failure(() => client.sagas.start('l.none', {}));
  t.type(unknown, NotFoundError, 'an unknown saga type: NotFoundError');
  t.equal((unknown as NotFoundError).argument, 'saga_type');
  t.type(await failure(() => client.sagas.start('l.one', {}, { idempotencyKey: 'x'.repeat(256) })), InvalidArgumentError);

  await client.sagas.define('l.settings', { steps: [{ name: 's', action: { sql: 'public.settings' } }] });
  const settings = await client.sagas.status(await client.sagas.start('l.settings', {}));
  t.same(settings.context, { statement_timeout: '1min', idle_in_transaction_session_timeout: '1min' },
    'the lean pool\'s connections run with the slonik pool\'s timeouts');

  const [app] = await query<{ n: number }>(url,
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'lean-start-test'`);
  t.ok(app!.n >= 1, 'the lean pool\'s connections carry the application name');

  const inTx = await failure(() => client.transaction(async (tx) => {
    const id = await tx.sagas.start('l.one', { rolled: 'back' });
    const [seen] = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pgrelay.sagas WHERE id = $1`, [id]);
    t.equal(seen!.n, 0, 'inside transaction() the saga is not visible to others before commit');
    throw new Error('roll back');
  }));
  t.match(inTx, { message: 'roll back' });
  const [rolled] = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pgrelay.sagas WHERE input = '{"rolled": "back"}'`);
  t.equal(rolled!.n, 0, 'a rolled-back transaction leaves no saga: start joined it');

  await client.end();
  ended = true;
  // A backend leaves pg_stat_activity shortly after its client's Terminate: wait up to 5 s.
  let left = -1;
  for (let tries = 0; tries < 50 && left !== 0; tries += 1) {
    if (tries > 0) await new Promise((resolve) => setTimeout(resolve, 100));
    left = (await query<{ n: number }>(url,
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'lean-start-test'`))[0]!.n;
  }
  t.equal(left, 0, 'end() closed every connection');
  t.rejects(client.sagas.start('l.one', {}), 'start after end() fails');
});
