// Install, upgrade and uninstall (DESIGN invariant 7): `migrate up` is idempotent, `migrate down`
// leaves the catalog exactly as it was before the install, concurrent installs queue, stale
// functions are dropped on upgrade, a newer database is refused, and the plain SQL install
// script is equivalent to `migrate up`.
import t, { type Test } from 'tap';
import pg from 'pg';
import { installScript, migrate, migrationStatus } from '../client/index.ts';
import { migrationFiles } from '../client/sql-files.ts';
import { freshDatabase, query, withClient } from './helpers/db.ts';

const NOT_SYSTEM = `n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'`;

/** Every object a migration could make or leave behind, one line each, sorted. */
const CATALOG = `
SELECT line FROM (
  SELECT 'schema ' || n.nspname AS line FROM pg_namespace n WHERE ${NOT_SYSTEM}
  UNION ALL
  SELECT format('relation %s.%s kind=%s', n.nspname, c.relname, c.relkind)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE ${NOT_SYSTEM}
  UNION ALL
  SELECT format('column %s.%s.%s %s', n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE ${NOT_SYSTEM} AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT format('function %s.%s(%s) kind=%s md5=%s', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prokind, md5(p.prosrc))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE ${NOT_SYSTEM}
  UNION ALL
  SELECT format('type %s.%s kind=%s', n.nspname, ty.typname, ty.typtype)
    FROM pg_type ty JOIN pg_namespace n ON n.oid = ty.typnamespace WHERE ${NOT_SYSTEM}
  UNION ALL
  SELECT format('trigger %s on %s.%s', tg.tgname, n.nspname, c.relname)
    FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE ${NOT_SYSTEM} AND NOT tg.tgisinternal -- foreign keys' internal triggers have OID names; constraints cover them
  UNION ALL
  SELECT format('constraint %s on %s', co.conname, co.conrelid::regclass) FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace WHERE ${NOT_SYSTEM}
  UNION ALL
  SELECT 'extension ' || extname FROM pg_extension
  UNION ALL
  SELECT 'event trigger ' || evtname FROM pg_event_trigger
  UNION ALL
  SELECT 'publication ' || pubname FROM pg_publication
  UNION ALL
  SELECT format('policy %s on %s', polname, polrelid::regclass) FROM pg_policy
) objects
ORDER BY line`;

async function catalog(connectionString: string): Promise<string[]> {
  return (await query<{ line: string }>(connectionString, CATALOG)).map((row) => row.line);
}

const migrationNames = (): string[] => migrationFiles().map((file) => file.name);

/** A short, readable difference for assertion messages. */
function diff(before: string[], after: string[]): string {
  const a = new Set(before);
  const b = new Set(after);
  const added = after.filter((line) => !a.has(line));
  const removed = before.filter((line) => !b.has(line));
  return JSON.stringify({ added: added.slice(0, 15), removed: removed.slice(0, 15), addedCount: added.length, removedCount: removed.length });
}

async function settle(connectionString: string): Promise<void> {
  const [row] = await query<{ w: string }>(connectionString, 'SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS w');
  const deadline = Date.now() + 30_000;
  while (!(await query<{ ok: boolean }>(connectionString, 'SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::xid8 AS ok', [row!.w]))[0]!.ok) {
    if (Date.now() > deadline) throw new Error('the horizon did not pass');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** publish + read work on an installed database. */
async function smoke(t: Test, connectionString: string, label: string): Promise<void> {
  const [published] = await query<{ id: string }>(connectionString, `SELECT pgrelay.publish('smoke', 'k', 'e', '{"ok": true}')::text AS id`);
  await settle(connectionString);
  const read = await query<{ id: string; data: unknown }>(connectionString, `SELECT id::text AS id, data FROM pgrelay.read('0', 0, 100) WHERE topic = 'smoke'`);
  t.same(read, [{ id: published!.id, data: { ok: true } }], `${label}: publish then read works`);
}

t.test('up, up again (a no-op), down: the catalog is exactly as before', async (t) => {
  const db = await freshDatabase(t, { migrated: false });
  // A user table, so uninstall is checked against objects it must leave alone (and, once CDC
  // exists, against the triggers pgrelay put on it).
  await query(db.connectionString, 'CREATE TABLE public.users (id integer PRIMARY KEY, name text)');
  const before = await catalog(db.connectionString);
  t.notOk(before.some((line) => line.includes('pgrelay')), 'nothing of pgrelay before the install');

  const first = await migrate({ connectionString: db.connectionString, direction: 'up' });
  t.same(first.migrations, migrationNames(), 'the first up runs every migration, in order');
  t.ok(first.functions > 0, `the first up installs the function files (${first.functions})`);
  const installed = await catalog(db.connectionString);
  t.ok(installed.includes('schema pgrelay'), 'schema pgrelay exists');
  t.ok(installed.includes('relation public.pgrelay_migrations kind=r'), 'public.pgrelay_migrations exists');
  t.ok(installed.some((line) => line.startsWith('function pgrelay.publish(')), 'pgrelay.publish exists');
  await smoke(t, db.connectionString, 'after up');

  const second = await migrate({ connectionString: db.connectionString, direction: 'up' });
  t.same(second.migrations, [], 'the second up runs no migration');
  t.same(second.dropped, [], 'the second up drops no function');
  const again = await catalog(db.connectionString);
  t.same(again, installed, `the second up changes nothing in the catalog ${diff(installed, again)}`);
  const status = await migrationStatus(db.connectionString);
  t.same(status.pending, [], 'status: nothing pending');
  t.same(status.unknown, [], 'status: nothing unknown');
  t.same(status.applied, migrationNames(), 'status: every migration applied once');
  const [version] = await query<{ v: string }>(db.connectionString, 'SELECT pgrelay.version() AS v');
  t.equal(status.installedVersion, version!.v, 'status: the installed version');

  const cdc = await query<{ f: string | null }>(db.connectionString, `SELECT to_regprocedure('pgrelay.cdc_enable(regclass, jsonb)')::text AS f`);
  if (cdc[0]!.f !== null) {
    await query(db.connectionString, `SELECT pgrelay.cdc_enable('public.users')`);
    const withCdc = await catalog(db.connectionString);
    t.ok(withCdc.some((line) => line.startsWith('trigger ') && line.endsWith(' on public.users')), 'CDC put a trigger on the user table');
    // An upgrade with a captured table: the generated capture function is not file-defined,
    // yet it must survive, and capture must keep working. It is regenerated by the upgrade: a
    // capture function left from an older pgrelay (here one that fails) is replaced.
    const [capture] = await query<{ fn: string }>(
      db.connectionString,
      `SELECT p.oid::regproc::text AS fn FROM pg_proc p WHERE p.proname = '_cdc_capture_' || 'public.users'::regclass::oid`,
    );
    await query(db.connectionString, `CREATE OR REPLACE FUNCTION ${capture!.fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'capture code of an older pgrelay'; END $$`);
    await t.rejects(query(db.connectionString, `INSERT INTO public.users VALUES (2, 'old')`), /older pgrelay/, 'the stale capture function is in place before the upgrade');
    const upgrade = await migrate({ connectionString: db.connectionString, direction: 'up' });
    t.same(upgrade.dropped, [], 'up with CDC enabled drops nothing');
    const upgraded = await catalog(db.connectionString);
    t.same(upgraded, withCdc, `up with CDC enabled changes nothing ${diff(withCdc, upgraded)}`);
    await query(db.connectionString, `INSERT INTO public.users VALUES (1, 'ada')`);
    const captured = await query<{ type: string; key: string }>(
      db.connectionString,
      `SELECT type, key FROM pgrelay.messages WHERE topic = 'cdc.public.users'`,
    );
    t.same(captured, [{ type: 'insert', key: '1' }], 'capture still works after the upgrade');
    await query(db.connectionString, 'DELETE FROM public.users');
  } else {
    t.comment('pgrelay.cdc_enable does not exist yet: uninstall of triggers on user tables not exercised');
  }

  const down = await migrate({ connectionString: db.connectionString, direction: 'down' });
  t.same(down.migrations, [...migrationNames()].reverse(), 'down reverts every migration, newest first');
  const after = await catalog(db.connectionString);
  t.same(after, before, `after down the catalog equals the one before the install ${diff(before, after)}`);
  t.same(await query(db.connectionString, 'SELECT id FROM public.users'), [], 'the user table is untouched');

  const downAgain = await migrate({ connectionString: db.connectionString, direction: 'down' });
  t.same(downAgain.migrations, [], 'down on an uninstalled database is a no-op');
  t.same(await catalog(db.connectionString), before, 'and changes nothing');
  const cleanStatus = await migrationStatus(db.connectionString);
  t.same(cleanStatus, { applied: [], pending: migrationNames(), unknown: [], installedVersion: null }, 'status after down: nothing installed');

  const reinstall = await migrate({ connectionString: db.connectionString, direction: 'up' });
  t.same(reinstall.migrations, migrationNames(), 'up after down installs again');
  const reinstalled = await catalog(db.connectionString);
  t.same(reinstalled, installed, `the reinstall equals the first install ${diff(installed, reinstalled)}`);
  await smoke(t, db.connectionString, 'after down and up');
});

t.test('two concurrent `migrate up`s both succeed and install once', async (t) => {
  const reference = await catalog((await freshDatabase(t)).connectionString);
  const db = await freshDatabase(t, { migrated: false });
  const results = await Promise.all([
    migrate({ connectionString: db.connectionString, direction: 'up' }),
    migrate({ connectionString: db.connectionString, direction: 'up' }),
    migrate({ connectionString: db.connectionString, direction: 'up' }),
  ]);
  const ran = results.map((result) => result.migrations.length).sort((a, b) => b - a);
  t.same(ran, [migrationNames().length, 0, 0], 'one caller ran the migrations, the others found nothing pending');
  const rows = await query<{ name: string; n: number }>(
    db.connectionString,
    'SELECT name, count(*)::int AS n FROM public.pgrelay_migrations GROUP BY name ORDER BY name',
  );
  t.same(rows, migrationNames().map((name) => ({ name, n: 1 })), 'each migration is recorded exactly once');
  const installed = await catalog(db.connectionString);
  t.same(installed, reference, `the result equals a plain install ${diff(reference, installed)}`);
  await smoke(t, db.connectionString, 'after a racing install');
});

t.test('an upgrade drops pgrelay functions that no file defines any more', async (t) => {
  const db = await freshDatabase(t);
  const reference = await catalog(db.connectionString);
  await query(db.connectionString, `CREATE FUNCTION pgrelay.obsolete_fn() RETURNS integer LANGUAGE sql AS 'SELECT 1'`);
  // An old overload of a function that still exists: its signature is no longer in any file.
  await query(db.connectionString, `CREATE FUNCTION pgrelay.publish(topic text) RETURNS uuid LANGUAGE sql AS 'SELECT gen_random_uuid()'`);
  const result = await migrate({ connectionString: db.connectionString, direction: 'up' });
  t.same([...result.dropped].sort(), ['pgrelay.obsolete_fn()', 'pgrelay.publish(text)'], `the stale functions are reported dropped: ${JSON.stringify(result.dropped)}`);
  t.same(
    await query(db.connectionString, `SELECT to_regprocedure('pgrelay.obsolete_fn()') AS a, to_regprocedure('pgrelay.publish(text)') AS b`),
    [{ a: null, b: null }],
    'they are gone',
  );
  const after = await catalog(db.connectionString);
  t.same(after, reference, `everything else is as installed ${diff(reference, after)}`);
  await smoke(t, db.connectionString, 'after the upgrade');
});

t.test('a database carrying a migration this code does not know is refused', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, `INSERT INTO public.pgrelay_migrations (name, run_on) VALUES ('999_from-the-future', now())`);
  const before = await catalog(db.connectionString);
  await t.rejects(migrate({ connectionString: db.connectionString, direction: 'up' }), /999_from-the-future/, 'up is refused, naming the migration');
  await t.rejects(migrate({ connectionString: db.connectionString, direction: 'up' }), /newer pgrelay/, 'and saying why');
  await t.rejects(migrate({ connectionString: db.connectionString, direction: 'down' }), /999_from-the-future/, 'down is refused too');
  const status = await migrationStatus(db.connectionString);
  t.same(status.unknown, ['999_from-the-future'], 'status lists the unknown migration');
  t.same(await catalog(db.connectionString), before, 'nothing was changed');
});

t.test('installScript() installs the same pgrelay as `migrate up`', async (t) => {
  const reference = await catalog((await freshDatabase(t)).connectionString);
  const db = await freshDatabase(t, { migrated: false });
  const before = await catalog(db.connectionString);
  const script = installScript();
  t.match(script, /^-- pgrelay install script/, 'a commented SQL script');
  await withClient(db.connectionString, async (client: pg.Client) => {
    await client.query(script);
  });
  const installed = await catalog(db.connectionString);
  t.same(installed, reference, `the script's install equals migrate up's ${diff(reference, installed)}`);
  await smoke(t, db.connectionString, 'after the install script');

  const status = await migrationStatus(db.connectionString);
  t.same(status.pending, [], 'migrate status: nothing pending');
  t.same(status.applied, migrationNames(), 'migrate status: every migration recorded');
  const up = await migrate({ connectionString: db.connectionString, direction: 'up' });
  t.same(up.migrations, [], 'migrate up afterwards runs no migration');
  t.same(up.dropped, [], 'and drops no function');

  await migrate({ connectionString: db.connectionString, direction: 'down' });
  const after = await catalog(db.connectionString);
  t.same(after, before, `migrate down removes a script install completely ${diff(before, after)}`);
});
