// Reconcile: rows changed by hand in a sync's target (deleted, altered, added) are found and
// repaired, from SQL (pgrelay.sync_reconcile, same database) and from the CLI (`pgrelay sync
// reconcile NAME`, across databases, with a report and progress); a reconcile running while
// writers change the source and the sync applies concurrently undoes none of the sync's work.
import t from 'tap';
import { createPgrelayPool } from '../client/index.ts';
import { sql, type DatabasePool } from 'slonik';
import { z } from 'zod';
import { listSyncs, runSyncStep, syncCheckpoint, type SyncDefinition } from '../daemon/sync-runner.ts';
import { reconcileSync } from '../daemon/reconcile.ts';
import { freshDatabase } from './helpers/db.ts';
import { cli, connect, runToEnd, settle, snapshot } from './helpers/sync.ts';

/** Runs a cross-database sync in process (the daemon's own step) until no source message is pending. */
async function catchUp(source: DatabasePool, target: DatabasePool, sync: SyncDefinition, batch = 500): Promise<void> {
  for (;;) {
    await runSyncStep(source, target, sync, batch);
    const cursor = await syncCheckpoint(target, sync.name);
    const lag = await source.oneFirst(sql.type(z.object({ pending: z.string() }))`
      SELECT pending::text FROM pgrelay.log_lag(${sql.array(sync.topics, 'text')}, ${cursor.xid}::xid8, ${cursor.position}::bigint)`);
    if (lag === '0') return;
  }
}

const USERS = `
  CREATE TABLE public.users (id int PRIMARY KEY, username text NOT NULL, email text, password text DEFAULT 'secret');
  SELECT pgrelay.cdc_enable('public.users');
`;
const SNAPSHOTS = 'CREATE TABLE public.user_snapshots (id int PRIMARY KEY, username text, email text)';
const PROJECTION = 'SELECT id, username, email FROM public.users';
const REPLICA = 'SELECT id, username, email FROM public.user_snapshots';
const TAMPER = `
  DELETE FROM public.user_snapshots WHERE id IN (3, 150, 299);
  UPDATE public.user_snapshots SET email = 'hand@edited.test' WHERE id IN (10, 11);
  UPDATE public.user_snapshots SET username = NULL WHERE id = 200;
  INSERT INTO public.user_snapshots VALUES (5000, 'ghost', 'ghost@x.test'), (-1, 'before-first', NULL);
`;

t.test('SQL: pgrelay.sync_reconcile repairs missing, different and extra rows of a same-database sync', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db.connectionString);
  await c.query(USERS);
  await c.query(SNAPSHOTS);
  await c.query(`SELECT pgrelay.sync_define('snap', ARRAY['cdc.public.users'],
                 '{"table": "public.user_snapshots", "key_columns": ["id"], "columns": {"id": "id", "username": "username", "email": "email"}}',
                 '{"source_table": "public.users"}')`);
  await c.query(`INSERT INTO public.users (id, username, email) SELECT g, 'u' || g, 'u' || g || '@x.test' FROM generate_series(1, 300) g`);
  await settle(db.connectionString);
  await runToEnd(c, 'snap');
  t.same(await snapshot(c, REPLICA), await snapshot(c, PROJECTION), 'in step before the tampering');

  await c.query(TAMPER);
  const first = await c.query(`SELECT rows::int, missing::int, different::int, extra::int FROM pgrelay.sync_reconcile('snap', 64)`);
  t.same(first.rows[0], { rows: 300, missing: 3, different: 3, extra: 2 }, 'the report counts each kind of drift');
  t.same(await snapshot(c, REPLICA), await snapshot(c, PROJECTION), 'the target equals the source again');
  const again = await c.query(`SELECT rows::int, missing::int, different::int, extra::int FROM pgrelay.sync_reconcile('snap', 1000)`);
  t.same(again.rows[0], { rows: 300, missing: 0, different: 0, extra: 0 }, 'a second reconcile finds nothing');

  // Later changes still apply after a reconcile.
  await c.query(`UPDATE public.users SET email = 'later@x.test' WHERE id IN (3, 10)`);
  await c.query('DELETE FROM public.users WHERE id = 150');
  await settle(db.connectionString);
  await runToEnd(c, 'snap');
  t.same(await snapshot(c, REPLICA), await snapshot(c, PROJECTION), 'changes after the reconcile apply normally');
});

t.test('CLI: `pgrelay sync reconcile NAME` repairs a cross-database target with a report and progress; `pgrelay status` shows the sync', async (t) => {
  const source = await freshDatabase(t);
  const target = await freshDatabase(t);
  const s = await connect(t, source.connectionString, 'reconcile-source');
  const d = await connect(t, target.connectionString, 'reconcile-target');
  await s.query(USERS);
  await d.query(SNAPSHOTS);
  await s.query(`SELECT pgrelay.sync_define('snap', ARRAY['cdc.public.users'],
                 '{"table": "public.user_snapshots", "key_columns": ["id"], "columns": {"id": "id", "username": "username", "email": "email"}, "database_env": "SNAP_TARGET_URL"}',
                 '{"source_table": "public.users"}')`);
  await s.query(`INSERT INTO public.users (id, username, email) SELECT g, 'u' || g, 'u' || g || '@x.test' FROM generate_series(1, 300) g`);
  await settle(source.connectionString);
  const sourcePool = await createPgrelayPool(source.connectionString, { maximumPoolSize: 2 });
  const targetPool = await createPgrelayPool(target.connectionString, { maximumPoolSize: 2 });
  t.teardown(async () => {
    await sourcePool.end();
    await targetPool.end();
  });
  const [sync] = await listSyncs(sourcePool);
  await catchUp(sourcePool, targetPool, sync!, 100);
  t.same(await snapshot(d, REPLICA), await snapshot(s, PROJECTION), 'in step before the tampering');

  await d.query(TAMPER);
  const env = { DATABASE_URL: source.connectionString, SNAP_TARGET_URL: target.connectionString };
  const run = await cli(['sync', 'reconcile', 'snap', '--chunk-size', '50'], env);
  t.equal(run.code, 0, `exit 0 (stderr: ${run.stderr.slice(-300)})`);
  t.same(JSON.parse(run.stdout), { rows: 300, missing: 3, different: 3, extra: 2, chunks: 7 }, 'the JSON report on stdout');
  t.match(run.stderr, /reconcile snap \[#+\] 100% 300\/300 rows/, 'a progress bar on stderr');
  t.match(run.stderr, /repaired 3 missing, 3 different, 2 extra/, 'a summary line');
  t.same(await snapshot(d, REPLICA), await snapshot(s, PROJECTION), 'the target equals the source again');

  const status = await cli(['status'], env);
  t.equal(status.code, 0, `pgrelay status exits 0 (stderr: ${status.stderr.slice(-300)})`);
  const syncs = JSON.parse(status.stdout).syncs as Array<Record<string, unknown>>;
  t.same(syncs.map((row) => [row.sync_name, row.pending]), [['snap', '0']], 'pgrelay status lists the sync with 0 pending');

  const missingEnv = await cli(['sync', 'reconcile', 'snap'], { DATABASE_URL: source.connectionString, SNAP_TARGET_URL: '' });
  t.equal(missingEnv.code, 1, 'without the target URL in the environment: exit 1');
  t.match(missingEnv.stderr, /SNAP_TARGET_URL/, 'the message names the variable');
  const unknown = await cli(['sync', 'reconcile', 'nope'], env);
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /no sync named nope/);
});

t.test('reconcile while writers change the source and the sync applies: nothing the sync applied is undone', async (t) => {
  const source = await freshDatabase(t);
  const target = await freshDatabase(t);
  const s = await connect(t, source.connectionString, 'race-source');
  const d = await connect(t, target.connectionString, 'race-target');
  await s.query(USERS);
  await d.query(SNAPSHOTS);
  await s.query(`SELECT pgrelay.sync_define('snap', ARRAY['cdc.public.users'],
                 '{"table": "public.user_snapshots", "key_columns": ["id"], "columns": {"id": "id", "username": "username", "email": "email"}, "database_env": "X"}',
                 '{"source_table": "public.users"}')`);
  await s.query(`INSERT INTO public.users (id, username, email) SELECT g, 'u' || g, 'u' || g || '@x.test' FROM generate_series(1, 400) g`);
  const sourcePool = await createPgrelayPool(source.connectionString, { maximumPoolSize: 4 });
  const targetPool = await createPgrelayPool(target.connectionString, { maximumPoolSize: 4 });
  t.teardown(async () => {
    await sourcePool.end();
    await targetPool.end();
  });
  const [sync] = await listSyncs(sourcePool);
  await settle(source.connectionString);
  await catchUp(sourcePool, targetPool, sync!);

  let writing = true;
  const writer = (async () => {
    const w = await connect(t, source.connectionString, 'race-writer');
    for (let i = 0; i < 800; i++) {
      const id = 1 + Math.floor(Math.random() * 450);
      const op = Math.random();
      if (op < 0.45) await w.query(`INSERT INTO public.users (id, username, email) VALUES ($1::int, 'n' || $2::text, 'n@x.test') ON CONFLICT (id) DO UPDATE SET username = excluded.username`, [id, i]);
      else if (op < 0.85) await w.query(`UPDATE public.users SET email = 'e' || $2::text || '@x.test' WHERE id = $1::int`, [id, i]);
      else await w.query('DELETE FROM public.users WHERE id = $1::int', [id]);
    }
    writing = false;
  })();
  const applier = (async () => {
    while (writing) await runSyncStep(sourcePool, targetPool, sync!, 50);
  })();
  let reconciles = 0;
  while (writing) {
    await reconcileSync(sourcePool, targetPool, sync!, { chunkSize: 40 });
    reconciles++;
  }
  await Promise.all([writer, applier]);
  t.ok(reconciles >= 1, `${reconciles} reconciles ran while the source changed`);
  await settle(source.connectionString);
  await catchUp(sourcePool, targetPool, sync!);
  t.same(await snapshot(d, REPLICA), await snapshot(s, PROJECTION), 'once caught up, the target equals the source');
  const report = await reconcileSync(sourcePool, targetPool, sync!, { chunkSize: 100 });
  t.same([report.missing, report.different, report.extra], [0, 0, 0], 'and a final reconcile finds no drift');
});
