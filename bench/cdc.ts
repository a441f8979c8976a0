// CDC cost: the same table, the same run, capture off vs pgrelay CDC (statement-level triggers
// with transition tables) vs a naive row-level trigger that inserts to_jsonb(OLD)/to_jsonb(NEW)
// into a log table. Single-row INSERT/UPDATE/DELETE throughput at 1 and 8 clients, and bulk
// statements of 100,000 rows. Modes are interleaved round by round (order reversed every other
// round) and the median kept, so load drifting on a shared machine hits every mode alike.
import pg from 'pg';
import { perSecond, ratio, timed, withPg, type BenchContext, type BenchResult, type BenchSuite } from './lib.js';

type Mode = 'off' | 'pgrelay' | 'naive';
const MODES: readonly Mode[] = ['off', 'pgrelay', 'naive'];
const TABLE = 'public.bench_accounts';
const BULK_ROWS = 100_000;

const SETUP = `
  CREATE TABLE ${TABLE} (id bigint PRIMARY KEY, owner text NOT NULL, email text, balance bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
  INSERT INTO ${TABLE} SELECT g, 'owner ' || g, 'user' || g || '@example.com', 1000, now() FROM generate_series(1, ${BULK_ROWS}) g;
  CREATE TABLE public.naive_log (id bigserial PRIMARY KEY, table_name text NOT NULL, op text NOT NULL, old_row jsonb, new_row jsonb,
                                 xid xid8 NOT NULL DEFAULT pg_current_xact_id(), at timestamptz NOT NULL DEFAULT now());
  CREATE FUNCTION public.naive_capture() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO public.naive_log (table_name, op, old_row, new_row)
    VALUES (TG_TABLE_NAME, TG_OP, CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END, CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
  END $$;`;

async function setMode(admin: pg.Client, mode: Mode): Promise<void> {
  await admin.query(`DROP TRIGGER IF EXISTS naive_capture ON ${TABLE}`);
  if ((await admin.query(`SELECT 1 FROM pgrelay.cdc_tables WHERE relid = '${TABLE}'::regclass`)).rowCount) {
    await admin.query(`SELECT pgrelay.cdc_disable('${TABLE}')`);
  }
  if (mode === 'pgrelay') await admin.query(`SELECT pgrelay.cdc_enable('${TABLE}')`);
  if (mode === 'naive') {
    await admin.query(`CREATE TRIGGER naive_capture AFTER INSERT OR UPDATE OR DELETE ON ${TABLE} FOR EACH ROW EXECUTE FUNCTION public.naive_capture()`);
  }
  // Every cell starts from the same state: empty logs, a vacuumed table.
  await admin.query('TRUNCATE pgrelay.messages, public.naive_log');
  await admin.query(`VACUUM ANALYZE ${TABLE}`);
}

const median = (values: readonly number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

/** Runs `clients` connections, each repeating op(i) until the time is up or op returns false. */
async function throughput(
  url: string,
  clients: number,
  durationMs: number,
  syncCommit: boolean,
  op: (c: pg.Client, i: number) => Promise<boolean>,
): Promise<number> {
  const connections = await Promise.all(
    Array.from({ length: clients }, async () => {
      const c = new pg.Client({ connectionString: url, application_name: 'bench-cdc' });
      await c.connect();
      if (!syncCommit) await c.query('SET synchronous_commit = off');
      return c;
    }),
  );
  let done = 0;
  try {
    const start = process.hrtime.bigint();
    const deadline = Date.now() + durationMs;
    await Promise.all(
      connections.map(async (c, n) => {
        for (let i = 0; Date.now() < deadline; i += 1) {
          if (!(await op(c, i * clients + n))) return;
          done += 1;
        }
      }),
    );
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    return perSecond(done, ms);
  } finally {
    await Promise.all(connections.map((c) => c.end()));
  }
}

export async function runCdcBench(context: BenchContext): Promise<BenchResult> {
  const durationMs = context.quick ? 1000 : 4000;
  const rounds = 3;
  const url = await context.server.database('bench_cdc');
  const single: Array<Record<string, unknown>> = [];
  const bulk: Array<Record<string, unknown>> = [];
  await withPg(url, async (admin) => {
    await admin.query(SETUP);
    await admin.query(`VACUUM ANALYZE ${TABLE}`);
    let nextId = 10_000_000; // single-row inserts use fresh ids; deletes remove them again

    // synchronous_commit on: what an application sees (a commit waits for the WAL flush, which on a
    // shared machine varies more than capture costs); off: the CPU and WAL cost of capture alone.
    for (const [syncCommit, clients] of [[true, 1], [true, 8], [false, 1], [false, 8]] as const) {
      const rates: Record<string, Record<Mode, number[]>> = {
        insert: { off: [], pgrelay: [], naive: [] },
        update: { off: [], pgrelay: [], naive: [] },
        delete: { off: [], pgrelay: [], naive: [] },
      };
      for (let round = 0; round < rounds; round += 1) {
        for (const mode of round % 2 === 0 ? MODES : [...MODES].reverse()) {
          await setMode(admin, mode);
          const first = nextId;
          rates.insert![mode].push(
            await throughput(url, clients, durationMs, syncCommit, async (c) => {
              const id = nextId++;
              await c.query({ name: 'ins', text: `INSERT INTO ${TABLE} (id, owner, email, balance) VALUES ($1, 'new', 'new@example.com', 0)`, values: [id] });
              return true;
            }),
          );
          const last = nextId;
          rates.update![mode].push(
            await throughput(url, clients, durationMs, syncCommit, async (c, i) => {
              const id = 1 + ((i * 7919) % BULK_ROWS);
              await c.query({ name: 'upd', text: `UPDATE ${TABLE} SET balance = balance + 1, updated_at = now() WHERE id = $1`, values: [id] });
              return true;
            }),
          );
          let cursor = first;
          rates.delete![mode].push(
            await throughput(url, clients, durationMs, syncCommit, async (c) => {
              if (cursor >= last) return false;
              const id = cursor++;
              await c.query({ name: 'del', text: `DELETE FROM ${TABLE} WHERE id = $1`, values: [id] });
              return true;
            }),
          );
          await admin.query(`DELETE FROM ${TABLE} WHERE id >= 10000000`); // back to the 100,000 rows
          context.log(`cdc: ${clients} client(s) sync ${syncCommit ? 'on' : 'off'} round ${round + 1} ${mode}: insert ${rates.insert![mode].at(-1)}/s update ${rates.update![mode].at(-1)}/s delete ${rates.delete![mode].at(-1)}/s`);
        }
      }
      for (const [op, byMode] of Object.entries(rates)) {
        const off = median(byMode.off);
        const pgrelay = median(byMode.pgrelay);
        const naive = median(byMode.naive);
        single.push({ op, clients, synchronous_commit: syncCommit ? 'on' : 'off', off_per_s: off, pgrelay_per_s: pgrelay, naive_per_s: naive, pgrelay_ratio: ratio(pgrelay, off), naive_ratio: ratio(naive, off) });
      }
    }

    const bulkMs: Record<string, Record<Mode, number[]>> = {
      insert: { off: [], pgrelay: [], naive: [] },
      update: { off: [], pgrelay: [], naive: [] },
      delete: { off: [], pgrelay: [], naive: [] },
    };
    for (let round = 0; round < rounds; round += 1) {
      for (const mode of round % 2 === 0 ? MODES : [...MODES].reverse()) {
        await setMode(admin, mode);
        bulkMs.update![mode].push((await timed(() => admin.query(`UPDATE ${TABLE} SET balance = balance + 1, updated_at = now()`))).ms);
        await admin.query(`VACUUM ${TABLE}`);
        bulkMs.insert![mode].push(
          (await timed(() => admin.query(`INSERT INTO ${TABLE} (id, owner, balance) SELECT g, 'bulk', 0 FROM generate_series(20000001, ${20_000_000 + BULK_ROWS}) g`))).ms,
        );
        bulkMs.delete![mode].push((await timed(() => admin.query(`DELETE FROM ${TABLE} WHERE id > 20000000`))).ms);
        context.log(`cdc: bulk round ${round + 1} ${mode}: update ${Math.round(bulkMs.update![mode].at(-1)!)} ms insert ${Math.round(bulkMs.insert![mode].at(-1)!)} ms delete ${Math.round(bulkMs.delete![mode].at(-1)!)} ms`);
      }
    }
    const [{ count }] = (await admin.query<{ count: string }>(`SELECT count(*)::text AS count FROM ${TABLE}`)).rows as [{ count: string }];
    if (Number(count) !== BULK_ROWS) throw new Error(`bench table has ${count} rows, expected ${BULK_ROWS}`);
    for (const [op, byMode] of Object.entries(bulkMs)) {
      const off = median(byMode.off);
      const pgrelay = median(byMode.pgrelay);
      const naive = median(byMode.naive);
      // Speed relative to no capture: time without / time with (1.0 = free, 0.5 = twice as slow).
      bulk.push({ op, rows: BULK_ROWS, off_ms: Math.round(off), pgrelay_ms: Math.round(pgrelay), naive_ms: Math.round(naive), pgrelay_ratio: ratio(off, pgrelay), naive_ratio: ratio(off, naive) });
    }
  });

  const table = [
    '| workload | clients | synchronous_commit | no capture | pgrelay CDC | ratio | naive row trigger | ratio |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ...single.map(
      (r) => `| single-row ${r.op} | ${r.clients} | ${r.synchronous_commit} | ${r.off_per_s}/s | ${r.pgrelay_per_s}/s | ${r.pgrelay_ratio}× | ${r.naive_per_s}/s | ${r.naive_ratio}× |`,
    ),
    ...bulk.map((r) => `| bulk ${r.op} of ${BULK_ROWS} rows | 1 | on | ${r.off_ms} ms | ${r.pgrelay_ms} ms | ${r.pgrelay_ratio}× | ${r.naive_ms} ms | ${r.naive_ratio}× |`),
  ];
  context.log(table.join('\n'));
  return {
    duration_ms_per_cell: durationMs,
    rounds,
    note: 'ratio = speed with capture / speed without (bulk: time without / time with); medians of interleaved rounds',
    targets: { single_row: 0.8, bulk: 0.5 },
    single,
    bulk,
    markdown: table.join('\n'),
  };
}

const suite: BenchSuite = { name: 'cdc', run: runCdcBench };
export default suite;
