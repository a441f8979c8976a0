// Migration 009 keeps the references between the saga tables by triggers on delete instead of
// foreign keys checked on every insert, and checks sagas.status by a domain instead of a CHECK
// constraint. Proves what the keys did on the delete side still holds: deleting or truncating
// sagas removes their steps; a definition version that sagas use cannot be deleted, renumbered or
// truncated away (SQLSTATE 23503), an unused one can; a status outside the six is refused
// (23514); and the keys and the check come back on migrate down.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, freshDatabase, query, withClient } from './helpers/db.ts';
import { newClient } from './fixtures/sagas.ts';
import { migrate } from '../client/migrate.ts';

const NOOP = `CREATE FUNCTION public.noop(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$`;
const DEF = { steps: [{ name: 'a', action: { sql: 'public.noop' } }, { name: 'b', action: { sql: 'public.noop' } }] };

const sqlState = async (url: string, text: string): Promise<string | undefined> => {
  try {
    await query(url, text);
    return undefined;
  } catch (error) {
    return (error as { code?: string }).code;
  }
};
const count = async (url: string, text: string): Promise<number> => (await query<{ n: number }>(url, text))[0]!.n;

t.test('deleting or truncating sagas removes their steps; definitions in use stay; statuses are checked', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  await query(url, NOOP);
  const client = await newClient(t, url);
  await client.sagas.define('r.one', DEF);
  const [keep, drop] = await client.sagas.startMany('r.one', [{ input: {} }, { input: {} }]);
  await client.sagas.define('r.one', { steps: [...DEF.steps, { name: 'c', action: { sql: 'public.noop' } }] }); // version 2, unused

  await query(url, `DELETE FROM pgrelay.sagas WHERE id = $1`, [drop]);
  t.equal(await count(url, `SELECT count(*)::int AS n FROM pgrelay.saga_steps WHERE saga_id = '${drop}'`), 0, 'the deleted saga\'s steps are gone');
  t.equal(await count(url, `SELECT count(*)::int AS n FROM pgrelay.saga_steps WHERE saga_id = '${keep}'`), 2, 'the other saga keeps its steps');

  t.equal(await sqlState(url, `DELETE FROM pgrelay.saga_definitions WHERE saga_type = 'r.one' AND version = 1`), '23503', 'a version in use cannot be deleted');
  t.equal(await sqlState(url, `UPDATE pgrelay.saga_definitions SET version = 7 WHERE saga_type = 'r.one' AND version = 1`), '23503', 'nor renumbered');
  t.equal(await sqlState(url, `TRUNCATE pgrelay.saga_definitions`), '23503', 'nor truncated away');
  t.equal(await sqlState(url, `UPDATE pgrelay.saga_definitions SET steps = steps WHERE saga_type = 'r.one' AND version = 1`), undefined, 'other columns may change');
  t.equal(await sqlState(url, `DELETE FROM pgrelay.saga_definitions WHERE saga_type = 'r.one' AND version = 2`), undefined, 'an unused version can be deleted');

  t.equal(await sqlState(url, `UPDATE pgrelay.sagas SET status = 'done' WHERE id = '${keep}'`), '23514', 'an unknown status is refused');
  t.equal(await sqlState(url, `UPDATE pgrelay.sagas SET status = 'cancelled' WHERE id = '${keep}'`), undefined, 'a known one is taken');
  t.equal(await sqlState(url, `INSERT INTO pgrelay.sagas (id, saga_type, version, status, input) VALUES (gen_random_uuid(), 'r.one', 1, 'Running', '{}')`),
    '23514', 'also on insert');

  await query(url, `TRUNCATE pgrelay.sagas`);
  t.equal(await count(url, `SELECT count(*)::int AS n FROM pgrelay.saga_steps`), 0, 'truncating sagas truncates their steps');
  t.equal(await sqlState(url, `DELETE FROM pgrelay.saga_definitions`), undefined, 'with no sagas left the definitions can go');
});

t.test('deleting a definition waits for a start of that version still in flight, then refuses (23503)', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  await query(url, NOOP);
  const client = await newClient(t, url);
  await client.sagas.define('r.race', DEF);
  const starter = await connect(t, url, 'race-starter');
  const admin = await connect(t, url, 'race-admin');
  await starter.query('BEGIN');
  await starter.query(`SELECT pgrelay.saga_start('r.race', '{}'::jsonb)`);
  const pid = (await admin.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  const deleting = admin.query(`DELETE FROM pgrelay.saga_definitions WHERE saga_type = 'r.race' AND version = 1`).then(
    () => undefined,
    (error: { code?: string }) => error.code,
  );
  const observer = await connect(t, url, 'race-observer');
  let waiting = false;
  for (let i = 0; i < 200 && !waiting; i++) {
    waiting = (await observer.query<{ w: boolean }>(`SELECT wait_event_type = 'Lock' AS w FROM pg_stat_activity WHERE pid = $1`, [pid])).rows[0]?.w === true;
    if (!waiting) await new Promise((resolve) => setTimeout(resolve, 25));
  }
  t.ok(waiting, 'the delete waits for the uncommitted start');
  await starter.query('COMMIT');
  t.equal(await deleting, '23503', 'and is refused once the start commits: the saga keeps its definition');
  t.equal(await count(url, `SELECT count(*)::int AS n FROM pgrelay.sagas s JOIN pgrelay.saga_definitions d USING (saga_type, version) WHERE s.saga_type = 'r.race'`), 1,
    'the saga and its definition are both there');
});

t.test('migrate down puts the foreign keys back', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  const keys = `SELECT coalesce(string_agg(conname, ',' ORDER BY conname), '') AS k FROM pg_constraint
                WHERE contype = 'f' AND conrelid IN ('pgrelay.sagas'::regclass, 'pgrelay.saga_steps'::regclass)`;
  t.equal((await query<{ k: string }>(url, keys))[0]!.k, '', 'no foreign keys on the saga tables after migrate up');
  const file = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', 'migrations', '009_saga-cheaper-constraints.sql'), 'utf8');
  const downSql = file.slice(file.indexOf('-- Down Migration'));
  const restored = await withClient(url, async (c) => {
    await c.query('BEGIN');
    await c.query(downSql);
    const { rows } = await c.query<{ k: string }>(keys);
    const { rows: checks } = await c.query<{ c: string; t: string }>(
      `SELECT (SELECT conname FROM pg_constraint WHERE conrelid = 'pgrelay.sagas'::regclass AND contype = 'c') AS c,
              (SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'pgrelay.sagas'::regclass AND attname = 'status') AS t`);
    await c.query('ROLLBACK');
    return { keys: rows[0]!.k, ...checks[0]! };
  });
  t.same(restored, { keys: 'saga_steps_saga_id_fkey,sagas_saga_type_version_fkey', c: 'sagas_status_check', t: 'text' },
    "009's down migration restores both keys and the status check");
  const down = await migrate({ connectionString: url, direction: 'down' });
  t.equal(down.migrations[0], '009_saga-cheaper-constraints', 'and the whole way down runs from 009');
});
