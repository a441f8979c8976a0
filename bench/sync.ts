// The sync suite: source row changes applied per second to a replica table. A source table with
// CDC gets a backlog of N changes (inserts, updates, deletes over many keys, 200 rows per
// transaction); the clock runs from
// the first read until the target's checkpoint has passed the whole backlog. Peers, same backlog:
//   - same-database batch apply: pgrelay.sync_run (read and apply in one transaction per batch)
//   - cross-database batch apply: the daemon's step (read from the source, pgrelay.sync_apply in
//     the target: target writes + checkpoint in one target transaction per batch)
//   - cross-database row at a time: what a hand-rolled exactly-once consumer does: read a batch,
//     then one target transaction per change (upsert or delete + checkpoint update)
// Each at the batch sizes below; the target database is emptied and the sync redefined between runs.
import pg from 'pg';
import { createPgrelayPool, read } from '../client/index.js';
import { listSyncs, runSyncStep } from '../daemon/sync-runner.js';
import { perSecond, ratio, timed, withPg, type BenchContext, type BenchSuite } from './lib.js';

const TARGET_TABLE = 'CREATE TABLE public.user_snapshots (id int PRIMARY KEY, username text, email text, version bigint)';
const COLUMNS = { id: 'id', username: 'username', email: 'email', version: 'version' };

type Run = { peer: string; batch: number; changes: number; rows_written: number; ms: number; changes_per_s: number };

async function fillSource(url: string, keys: number, changes: number): Promise<number> {
  return withPg(url, async (c) => {
    await c.query(`
      CREATE TABLE public.users (id int PRIMARY KEY, username text NOT NULL, email text, password text DEFAULT 'x', version bigint NOT NULL DEFAULT 1);
      SELECT pgrelay.cdc_enable('public.users');
    `);
    // Transactions of CHUNK rows, as an application's writes would be (one huge statement would
    // make one huge transaction, which no reader sees until it all commits): keys inserts, then
    // updates until `changes` minus the final deletes is reached, then every tenth key deleted.
    const CHUNK = 200;
    for (let from = 1; from <= keys; from += CHUNK) {
      await c.query(`INSERT INTO public.users (id, username, email) SELECT g, 'user' || g, 'u' || g || '@x.test' FROM generate_series($1::int, $2::int) g`, [from, Math.min(keys, from + CHUNK - 1)]);
    }
    const deletes = Math.floor(keys / 10);
    let left = changes - keys - deletes;
    let round = 2;
    while (left > 0) {
      const n = Math.min(left, keys);
      for (let from = 1; from <= n; from += CHUNK) {
        await c.query(`UPDATE public.users SET email = 'r' || $3::int || '.' || id || '@x.test', version = $3::int WHERE id BETWEEN $1::int AND $2::int`, [from, Math.min(n, from + CHUNK - 1), round]);
      }
      left -= n;
      round++;
    }
    for (let from = 1; from <= keys; from += CHUNK * 10) {
      await c.query(`DELETE FROM public.users WHERE id % 10 = 0 AND id BETWEEN $1::int AND $2::int`, [from, Math.min(keys, from + CHUNK * 10 - 1)]);
    }
    const { rows } = await c.query<{ n: string }>(`SELECT count(*)::text AS n FROM pgrelay.messages WHERE topic = 'cdc.public.users'`);
    return Number(rows[0]!.n);
  });
}

/** The greatest (xid, position) of the backlog: where a caught-up checkpoint stands. */
async function lastCursor(url: string): Promise<{ xid: string; position: string }> {
  return withPg(url, async (c) => {
    const { rows } = await c.query<{ xid: string; position: string }>(
      `SELECT m.xid::text AS xid, m.position::text AS position FROM pgrelay.messages m WHERE m.topic = 'cdc.public.users' ORDER BY m.xid DESC, m.position DESC LIMIT 1`,
    );
    return rows[0]!;
  });
}

/** Whether a checkpoint is at or past a cursor (a short batch moves it to the read horizon, past the last message). */
function passed(at: { xid: string; position: string }, last: { xid: string; position: string }): boolean {
  const [ax, lx] = [BigInt(at.xid), BigInt(last.xid)];
  return ax > lx || (ax === lx && BigInt(at.position) >= BigInt(last.position));
}

async function defineSync(sourceUrl: string, name: string, env: string | null): Promise<void> {
  const target = { table: 'public.user_snapshots', key_columns: ['id'], columns: COLUMNS, ...(env === null ? {} : { database_env: env }) };
  await withPg(sourceUrl, async (c) => {
    await c.query(`DELETE FROM pgrelay.syncs WHERE name = $1`, [name]);
    await c.query(`DELETE FROM pgrelay.sync_checkpoints WHERE name = $1`, [name]);
    await c.query(`DELETE FROM pgrelay.sync_row_versions WHERE name = $1`, [name]);
    await c.query(`SELECT pgrelay.sync_define($1, ARRAY['cdc.public.users'], $2::jsonb)`, [name, JSON.stringify(target)]);
  });
}

async function resetTarget(url: string): Promise<void> {
  await withPg(url, async (c) => {
    await c.query('DROP TABLE IF EXISTS public.user_snapshots');
    await c.query(TARGET_TABLE);
    await c.query('TRUNCATE pgrelay.sync_checkpoints, pgrelay.sync_row_versions');
    await c.query('DROP TABLE IF EXISTS public.handrolled_checkpoint');
    await c.query(`CREATE TABLE public.handrolled_checkpoint (name text PRIMARY KEY, xid xid8 NOT NULL, position bigint NOT NULL)`);
  });
}

/** Count and md5 of every row in key order: the target must equal the source's projection exactly. */
async function fingerprint(url: string, table: string): Promise<string> {
  return withPg(url, async (c) => {
    const { rows } = await c.query<{ f: string }>(
      `SELECT count(*) || ':' || coalesce(md5(string_agg(concat_ws('|', id, username, email, version), ',' ORDER BY id)), '') AS f FROM ${table}`,
    );
    return rows[0]!.f;
  });
}

async function sameDatabase(sourceUrl: string, batch: number): Promise<{ ms: number; written: number }> {
  await withPg(sourceUrl, async (c) => {
    await c.query('DROP TABLE IF EXISTS public.user_snapshots');
    await c.query(TARGET_TABLE);
  });
  await defineSync(sourceUrl, 'local', null);
  const last = await lastCursor(sourceUrl);
  const { ms, value } = await timed(() =>
    withPg(sourceUrl, async (c) => {
      let written = 0;
      for (;;) {
        written += (await c.query<{ n: number }>('SELECT pgrelay.sync_run($1, $2) AS n', ['local', batch])).rows[0]!.n;
        const at = (await c.query<{ x: string; p: string }>(`SELECT cursor_xid::text AS x, cursor_position::text AS p FROM pgrelay.sync_checkpoints WHERE name = 'local'`)).rows[0];
        if (at !== undefined && passed({ xid: at.x, position: at.p }, last)) return written;
      }
    }),
  );
  return { ms, written: value };
}

async function crossDatabase(sourceUrl: string, targetUrl: string, batch: number): Promise<{ ms: number; written: number }> {
  await resetTarget(targetUrl);
  await defineSync(sourceUrl, 'remote', 'PGRELAY_BENCH_SYNC_TARGET');
  const source = await createPgrelayPool(sourceUrl, { maximumPoolSize: 2 });
  const target = await createPgrelayPool(targetUrl, { maximumPoolSize: 2 });
  try {
    const [sync] = (await listSyncs(source)).filter((s) => s.name === 'remote');
    const last = await lastCursor(sourceUrl);
    const { ms, value } = await timed(async () => {
      let written = 0;
      // runSyncStep reports each applied batch's cursor back into `sync` (pgrelay.sync_progress).
      while (!passed({ xid: sync!.applied_xid, position: sync!.applied_position }, last)) {
        written += await runSyncStep(source, target, sync!, batch);
      }
      return written;
    });
    return { ms, written: value };
  } finally {
    await source.end();
    await target.end();
  }
}

/** The hand-rolled peer: one target transaction per change, with its own checkpoint row. */
async function rowAtATime(sourceUrl: string, targetUrl: string, batch: number, limit: number): Promise<{ ms: number; changes: number }> {
  await resetTarget(targetUrl);
  const source = await createPgrelayPool(sourceUrl, { maximumPoolSize: 2 });
  const target = new pg.Client({ connectionString: targetUrl });
  await target.connect();
  try {
    let cursor = { xid: '0', position: '0' };
    let changes = 0;
    const { ms } = await timed(async () => {
      while (changes < limit) {
        const page = await read(source, cursor, { maxMessages: batch, topics: ['cdc.public.users'] });
        if (page.messages.length === 0) break;
        for (const message of page.messages) {
          const data = message.data as { before: Record<string, unknown> | null; after: Record<string, unknown> | null };
          await target.query('BEGIN');
          if (message.type === 'delete') {
            await target.query('DELETE FROM public.user_snapshots WHERE id = $1', [data.before!.id]);
          } else {
            const row = data.after!;
            await target.query(
              `INSERT INTO public.user_snapshots (id, username, email, version) VALUES ($1, $2, $3, $4)
               ON CONFLICT (id) DO UPDATE SET username = excluded.username, email = excluded.email, version = excluded.version`,
              [row.id, row.username, row.email, row.version],
            );
          }
          await target.query(
            `INSERT INTO public.handrolled_checkpoint VALUES ('h', $1::xid8, $2) ON CONFLICT (name) DO UPDATE SET xid = excluded.xid, position = excluded.position`,
            [message.xid, message.position],
          );
          await target.query('COMMIT');
          changes++;
        }
        cursor = page.cursor;
      }
    });
    return { ms, changes };
  } finally {
    await source.end();
    await target.end();
  }
}

const suite: BenchSuite = {
  name: 'sync',
  async run({ server, quick, log }: BenchContext) {
    const keys = quick ? 5_000 : 20_000;
    const wanted = quick ? 20_000 : 100_000;
    const batches = quick ? [500, 2000] : [500, 2000, 5000];
    const sourceUrl = await server.database('pgrelay_bench_sync_source');
    const targetUrl = await server.database('pgrelay_bench_sync_target');
    process.env.PGRELAY_BENCH_SYNC_TARGET = targetUrl;
    const changes = await fillSource(sourceUrl, keys, wanted);
    log(`sync: backlog of ${changes} CDC changes over ${keys} keys`);
    const expected = await fingerprint(sourceUrl, 'public.users');

    const runs: Run[] = [];
    const record = (peer: string, batch: number, n: number, written: number, ms: number): void => {
      const run = { peer, batch, changes: n, rows_written: written, ms: Math.round(ms), changes_per_s: perSecond(n, ms) };
      runs.push(run);
      log(`sync: ${peer.padEnd(28)} batch ${String(batch).padStart(5)}: ${String(run.changes_per_s).padStart(7)} changes/s (${n} changes, ${written} rows written, ${run.ms} ms)`);
    };
    for (const batch of batches) {
      const same = await sameDatabase(sourceUrl, batch);
      const sameRows = await fingerprint(sourceUrl, 'public.user_snapshots');
      if (sameRows !== expected) throw new Error(`same-database sync ended with rows ${sameRows}, source has ${expected} (count:md5)`);
      record('same-database batch apply', batch, changes, same.written, same.ms);
      const cross = await crossDatabase(sourceUrl, targetUrl, batch);
      const crossRows = await fingerprint(targetUrl, 'public.user_snapshots');
      if (crossRows !== expected) throw new Error(`cross-database sync ended with rows ${crossRows}, source has ${expected} (count:md5)`);
      record('cross-database batch apply', batch, changes, cross.written, cross.ms);
    }
    const limit = 5_000; // enough for a stable rate at one commit per change
    const hand = await rowAtATime(sourceUrl, targetUrl, 2000, limit);
    record('cross-database row at a time', 2000, hand.changes, hand.changes, hand.ms);

    const best = (peer: string) => Math.max(...runs.filter((r) => r.peer === peer).map((r) => r.changes_per_s));
    const summary = {
      same_database_best: best('same-database batch apply'),
      cross_database_best: best('cross-database batch apply'),
      row_at_a_time: best('cross-database row at a time'),
      cross_batch_vs_row_at_a_time: ratio(best('cross-database batch apply'), best('cross-database row at a time')),
      same_vs_cross: ratio(best('same-database batch apply'), best('cross-database batch apply')),
      cross_database_target_20000_met: best('cross-database batch apply') >= 20_000,
    };
    log(`sync: ${JSON.stringify(summary)}`);
    return { keys, changes, runs, summary };
  },
};

export default suite;
