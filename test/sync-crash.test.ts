// Cross-database sync under fire: a source database whose users table is captured by CDC, a
// target database with user_snapshots, and the real `pgrelay daemon` process (syncs defined from
// its --sync-config file) applying the changes, while a second daemon races it for every batch. 10,000 random inserts, updates and deletes from
// concurrent writers while the daemon is SIGKILLed and restarted several times: the target ends
// exactly equal to the source's projection, and an audit trigger in the target proves no change
// was applied twice (every write carries a unique version).
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freshDatabase } from './helpers/db.ts';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.ts';
import { connect, settle, sleep, snapshot, waitFor } from './helpers/sync.ts';

const OPERATIONS = 10_000;
const WRITERS = 4;
const KEYS = 400;
const KILLS = 4;

async function writer(connectionString: string, operations: number, seed: number): Promise<number> {
  const client = new pg.Client({ connectionString, application_name: `sync-writer-${seed}` });
  await client.connect();
  let done = 0;
  const random = (n: number): number => Math.floor(Math.random() * n);
  try {
    while (done < operations) {
      // 1-3 operations per transaction, keys in order so concurrent writers never deadlock.
      const keys = [...new Set(Array.from({ length: Math.min(1 + random(3), operations - done) }, () => 1 + random(KEYS)))].sort((a, b) => a - b);
      await client.query('BEGIN');
      for (const key of keys) {
        const op = random(10);
        if (op < 4) {
          await client.query(
            `INSERT INTO public.users (id, username, email) VALUES ($1::int, 'user' || $1::text, 'u' || $1::text || '@' || $2::text || '.test')
             ON CONFLICT (id) DO UPDATE SET username = excluded.username || '!', email = excluded.email, version = nextval('public.versions')`,
            [key, seed],
          );
        } else if (op < 8) {
          await client.query(`UPDATE public.users SET email = 'w' || $2::text || '.' || $3::text || '@x.test', version = nextval('public.versions') WHERE id = $1::int`, [key, seed, done]);
        } else {
          await client.query('DELETE FROM public.users WHERE id = $1', [key]);
        }
      }
      done += keys.length;
      await client.query('COMMIT');
    }
  } finally {
    await client.end();
  }
  return done;
}

t.test('10,000 concurrent changes, daemon SIGKILLed and restarted: target equals the source projection, nothing applied twice', async (t) => {
  const source = await freshDatabase(t);
  const target = await freshDatabase(t);
  const s = await connect(t, source.connectionString, 'sync-crash-source');
  const d = await connect(t, target.connectionString, 'sync-crash-target');
  await s.query(`
    CREATE SEQUENCE public.versions;
    CREATE TABLE public.users (id int PRIMARY KEY, username text NOT NULL, email text, password text DEFAULT 'secret',
                               version bigint NOT NULL DEFAULT nextval('public.versions'));
    SELECT pgrelay.cdc_enable('public.users');
  `);
  await d.query(`
    CREATE TABLE public.user_snapshots (id int PRIMARY KEY, username text, email text, version bigint);
    CREATE TABLE public.applied (op text, id int, version bigint);
    CREATE FUNCTION public.tg_audit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'DELETE' THEN INSERT INTO public.applied VALUES ('D', OLD.id, OLD.version);
      ELSE INSERT INTO public.applied VALUES ('U', NEW.id, NEW.version); END IF;
      RETURN NULL;
    END $$;
    CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON public.user_snapshots FOR EACH ROW EXECUTE FUNCTION public.tg_audit();
  `);
  const dir = mkdtempSync(join(tmpdir(), 'pgrelay-sync-crash-'));
  const config = join(dir, 'syncs.json');
  writeFileSync(
    config,
    JSON.stringify({
      syncs: [
        {
          name: 'user_snapshots',
          topics: ['cdc.public.users'],
          target: {
            table: 'public.user_snapshots',
            key_columns: ['id'],
            columns: { id: 'id', username: 'username', email: 'email', version: 'version' },
            database_env: 'ORDERS_DATABASE_URL',
          },
          options: { source_table: 'public.users' },
        },
      ],
    }),
  );
  const start = (port: 'off' | '0' = 'off'): Promise<DaemonProcess> =>
    startDaemonProcess({
      connectionString: source.connectionString,
      args: ['--port', port, '--sync-config', config],
      env: { ORDERS_DATABASE_URL: target.connectionString },
    });
  const checkpoint = async (): Promise<{ x: string; p: string } | undefined> =>
    (await d.query<{ x: string; p: string }>(`SELECT cursor_xid::text AS x, cursor_position::text AS p FROM pgrelay.sync_checkpoints WHERE name = 'user_snapshots'`)).rows[0];

  let daemon = await start();
  t.teardown(() => daemon.kill('SIGKILL'));
  // A second daemon applies the same sync the whole time: two appliers race for every batch.
  const rival = await start();
  t.teardown(() => rival.kill('SIGKILL'));
  const writing = Promise.all(Array.from({ length: WRITERS }, (_, i) => writer(source.connectionString, OPERATIONS / WRITERS, 1000 + i)));
  let writersDone = false;
  void writing.then(() => (writersDone = true), () => (writersDone = true));

  // Kill each daemon once it has applied something since it started (so kills land while it
  // works), after a random moment more, then start a new one.
  let kills = 0;
  let killsWhileWriting = 0;
  while (kills < KILLS) {
    const before = JSON.stringify(await checkpoint());
    await waitFor('the daemon to apply a batch', async () => JSON.stringify(await checkpoint()) !== before || writersDone, 30_000).catch((error: Error) => {
      throw new Error(`${error.message}; daemon log: ${JSON.stringify(daemon.logs.slice(-8))}`);
    });
    await sleep(Math.floor(Math.random() * 150));
    const code = await daemon.kill('SIGKILL');
    t.equal(code, 'SIGKILL', `kill ${kills + 1}: the daemon died by SIGKILL`);
    kills++;
    if (!writersDone) killsWhileWriting++;
    daemon = await start();
  }
  const written = await writing;
  t.comment(`${killsWhileWriting} of ${kills} kills landed while the writers were still writing`);
  t.equal(written.reduce((a, b) => a + b, 0), OPERATIONS, `${OPERATIONS} operations committed by ${WRITERS} writers`);
  await daemon.kill('SIGKILL');
  await rival.kill('SIGKILL');
  kills += 2;
  daemon = await start('0');
  const listening = await daemon.waitForLog((line) => typeof line.port === 'number');

  await settle(source.connectionString);
  await waitFor(
    'the target to catch up',
    async () => {
      const cursor = await checkpoint();
      if (cursor === undefined) return false;
      const lag = await s.query<{ pending: string }>(`SELECT pending::text FROM pgrelay.log_lag(ARRAY['cdc.public.users'], $1::xid8, $2::bigint)`, [cursor.x, cursor.p]);
      return lag.rows[0]!.pending === '0';
    },
    45_000,
  );
  const projection = await snapshot(s, 'SELECT id, username, email, version FROM public.users');
  t.ok(projection.length > 0, `the source has ${projection.length} rows`);
  const replica = await snapshot(d, 'SELECT id, username, email, version FROM public.user_snapshots');
  t.equal(replica.length, projection.length, 'as many rows in the target');
  t.same(replica, projection, `after ${kills} SIGKILLs the target equals the source projection exactly`);

  const twice = await d.query(`SELECT op, id, version, count(*)::int AS n FROM public.applied GROUP BY 1, 2, 3 HAVING count(*) > 1 LIMIT 5`);
  t.same(twice.rows, [], 'no change was applied twice (every (op, id, version) at most once)');
  const audited = await d.query<{ n: number }>(`SELECT count(*)::int AS n FROM public.applied`);
  t.ok(audited.rows[0]!.n >= projection.length, `${audited.rows[0]!.n} row writes audited`);

  // Lag figures: SQL in the source, and /metrics of the running daemon.
  await waitFor('the source copy of the checkpoint', async () =>
    (await s.query<{ pending: string }>(`SELECT pending::text FROM pgrelay.sync_lag('user_snapshots')`)).rows[0]?.pending === '0',
  );
  t.pass('pgrelay.sync_lag in the source reports 0 pending');
  const url = `http://127.0.0.1:${listening.port as number}/metrics`;
  await waitFor('the sync lag metric', async () => /pgrelay_sync_lag_messages\{sync="user_snapshots"\} 0\b/.test(await (await fetch(url)).text()), 15_000);
  t.pass('/metrics: pgrelay_sync_lag_messages{sync="user_snapshots"} 0');
  const metrics = await (await fetch(url)).text();
  t.match(metrics, /pgrelay_sync_lag_seconds\{sync="user_snapshots"\} /, '/metrics: pgrelay_sync_lag_seconds');
  t.equal(await daemon.kill('SIGTERM'), 0, 'the last daemon stops cleanly on SIGTERM');
});
