// Sagas of 3 no-op steps per second, pgrelay against DBOS Transact (@dbos-inc/dbos-sdk 5.3.0)
// workflows of 3 no-op steps, on the same server in the same run:
//   sql          pgrelay, SQL steps: client.sagas.start, one saga per call, 32 concurrent callers;
//                the client groups starts that arrive while earlier ones are in flight into one
//                statement (sagaStartGrouping, the default); saga_start runs each whole saga
//   sql-ungrouped  the same with sagaStartGrouping: false: one statement (transaction) per saga
//   sql-batched  pgrelay, SQL steps: startMany, 100 sagas per statement; 8 clients
//   worker       pgrelay, TypeScript steps: sagas started in batches, one createSagaWorker runs them
//   dbos         DBOS workflows, each step a DBOS.runStep, 32 in flight
// Each measurement gets a fresh database. Figures are the median of `rounds` rounds.
import { DBOS } from '@dbos-inc/dbos-sdk';
import { createClient, createSagaWorker, defineSaga, TERMINAL_SAGA_STATUSES } from '../client/index.js';
import { z } from 'zod';
import { perSecond, ratio, timed, withPg, type BenchContext, type BenchSuite } from './lib.js';

const CONCURRENCY = Number(process.env.PGRELAY_BENCH_CONCURRENCY ?? 32);
/** Group statements in flight for the grouped mode (the client's default when unset). */
const GROUP_IN_FLIGHT = process.env.PGRELAY_BENCH_GROUP_IN_FLIGHT === undefined ? undefined : Number(process.env.PGRELAY_BENCH_GROUP_IN_FLIGHT);

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
};

/** Runs fn(i) for i in [0, n) with at most `concurrency` in flight. */
async function pool(n: number, concurrency: number, fn: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, n) }, async () => {
      while (next < n) {
        const i = next;
        next += 1;
        await fn(i);
      }
    }),
  );
}

const NOOP_SQL = `CREATE FUNCTION public.noop(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$`;
const SQL_DEFINITION = { steps: ['a', 'b', 'c'].map((name) => ({ name, action: { sql: 'public.noop' }, compensation: { sql: 'public.noop' } })) };

type SqlMode = 'grouped' | 'ungrouped' | 'batched';

/** Sagas per second, and the transactions that started them (distinct xids of saga.started). */
async function pgrelaySql(context: BenchContext, round: number, n: number, mode: SqlMode): Promise<{ rate: number; transactions: number }> {
  const url = await context.server.database(`bench_sagas_sql_${mode[0]}${round}`);
  await withPg(url, (c) => c.query(NOOP_SQL));
  const client = await createClient({
    connectionString: url,
    maximumPoolSize: CONCURRENCY,
    sagaStartGrouping: mode === 'ungrouped' ? false : GROUP_IN_FLIGHT === undefined ? true : { maxInFlight: GROUP_IN_FLIGHT },
  });
  try {
    await client.sagas.define('bench.sql', SQL_DEFINITION);
    const { ms } = mode === 'batched'
      ? await timed(() => pool(n / 100, 8, () => client.sagas.startMany('bench.sql', Array.from({ length: 100 }, () => ({ input: {} })))))
      : await timed(() => pool(n, CONCURRENCY, () => client.sagas.start('bench.sql', {})));
    const { done, transactions } = await withPg(url, async (c) => (await c.query(`
      SELECT (SELECT count(*)::int FROM pgrelay.sagas WHERE status = 'completed') AS done,
             (SELECT count(DISTINCT xid)::int FROM pgrelay.messages WHERE type = 'saga.started') AS transactions`)).rows[0] as { done: number; transactions: number });
    if (done !== n) throw new Error(`pgrelay sql ${mode}: ${done} of ${n} sagas completed`);
    return { rate: perSecond(n, ms), transactions };
  } finally {
    await client.end();
  }
}

async function pgrelayWorker(context: BenchContext, round: number, n: number): Promise<number> {
  const url = await context.server.database(`bench_sagas_worker${round}`);
  const client = await createClient({ connectionString: url, maximumPoolSize: 16 });
  const saga = defineSaga({
    type: 'bench.worker',
    input: z.object({}),
    steps: ['a', 'b', 'c'].map((name) => ({ name, action: async () => ({}), compensate: async () => ({}) })),
  });
  await saga.register(client);
  const worker = createSagaWorker({ client, sagas: [saga], concurrency: 200, batchSize: 200, tickIntervalMs: 0, pollMaxMs: 20 });
  try {
    const { ms } = await withPg(url, (watcher) =>
      timed(async () => {
        await pool(n / 500, 2, () => client.sagas.startMany('bench.worker', Array.from({ length: 500 }, () => ({ input: {} }))));
        for (;;) {
          const done = (await watcher.query(`SELECT count(*)::int AS n FROM pgrelay.sagas WHERE status = ANY($1)`, [TERMINAL_SAGA_STATUSES])).rows[0].n as number;
          if (done === n) return;
          await new Promise((resolve) => setTimeout(resolve, 25));
        }
      }),
    );
    const completed = await withPg(url, async (c) => (await c.query(`SELECT count(*)::int AS n FROM pgrelay.sagas WHERE status = 'completed'`)).rows[0].n as number);
    if (completed !== n) throw new Error(`pgrelay worker: ${completed} of ${n} sagas completed`);
    return perSecond(n, ms);
  } finally {
    await worker.stop();
    await client.end();
  }
}

let dbosWorkflow: (() => Promise<number>) | undefined;

async function dbos(context: BenchContext, round: number, n: number): Promise<number> {
  const url = await context.server.database(`bench_sagas_dbos${round}`, { migrated: false });
  dbosWorkflow ??= DBOS.registerWorkflow(
    async () => {
      let sum = 0;
      sum += await DBOS.runStep(async () => 1, { name: 'a' });
      sum += await DBOS.runStep(async () => 1, { name: 'b' });
      sum += await DBOS.runStep(async () => 1, { name: 'c' });
      return sum;
    },
    { name: 'threeNoopSteps' },
  );
  DBOS.setConfig({ name: 'pgrelay-bench', systemDatabaseUrl: url, systemDatabasePoolSize: CONCURRENCY, logLevel: 'error' });
  await DBOS.launch();
  try {
    const workflow = dbosWorkflow;
    const { ms } = await timed(() =>
      pool(n, CONCURRENCY, async () => {
        if ((await workflow()) !== 3) throw new Error('dbos: a workflow did not run its 3 steps');
      }),
    );
    const done = await withPg(url, async (c) => (await c.query(`SELECT count(*)::int AS n FROM dbos.workflow_status WHERE status = 'SUCCESS'`)).rows[0].n as number);
    if (done !== n) throw new Error(`dbos: ${done} of ${n} workflows recorded as SUCCESS`);
    return perSecond(n, ms);
  } finally {
    await DBOS.shutdown();
  }
}

const suite: BenchSuite = {
  name: 'sagas',
  async run(context) {
    const rounds = context.quick ? 1 : 3;
    const sizes = context.quick
      ? { sql: 1000, sql_ungrouped: 1000, batched: 2000, worker: 1000, dbos: 300 }
      : { sql: 20000, sql_ungrouped: 5000, batched: 20000, worker: 5000, dbos: 2000 };
    const results: Record<string, number[]> = { sql: [], sql_ungrouped: [], sql_batched: [], worker: [], dbos: [] };
    const groupSizes: number[] = [];
    // Interleaved rounds, so a burst of load from elsewhere on the machine hits every peer alike.
    for (let round = 0; round < rounds; round += 1) {
      results.dbos!.push(await dbos(context, round, sizes.dbos));
      context.log(`  round ${round + 1} dbos: ${results.dbos!.at(-1)} workflows/s`);
      const grouped = await pgrelaySql(context, round, sizes.sql, 'grouped');
      results.sql!.push(grouped.rate);
      groupSizes.push(Math.round((sizes.sql / grouped.transactions) * 10) / 10);
      context.log(`  round ${round + 1} pgrelay sql (grouped starts): ${grouped.rate} sagas/s, ${grouped.transactions} transactions (${groupSizes.at(-1)} sagas each)`);
      results.sql_ungrouped!.push((await pgrelaySql(context, round, sizes.sql_ungrouped, 'ungrouped')).rate);
      context.log(`  round ${round + 1} pgrelay sql ungrouped: ${results.sql_ungrouped!.at(-1)} sagas/s`);
      results.sql_batched!.push((await pgrelaySql(context, round, sizes.batched, 'batched')).rate);
      context.log(`  round ${round + 1} pgrelay sql batched: ${results.sql_batched!.at(-1)} sagas/s`);
      results.worker!.push(await pgrelayWorker(context, round, sizes.worker));
      context.log(`  round ${round + 1} pgrelay worker: ${results.worker!.at(-1)} sagas/s`);
    }
    const dbosRate = median(results.dbos!);
    const table = {
      dbos_workflows_per_s: dbosRate,
      pgrelay_sql_sagas_per_s: median(results.sql!),
      pgrelay_sql_ungrouped_sagas_per_s: median(results.sql_ungrouped!),
      pgrelay_sql_batched_sagas_per_s: median(results.sql_batched!),
      pgrelay_worker_sagas_per_s: median(results.worker!),
    };
    const ratios = {
      sql_vs_dbos: ratio(table.pgrelay_sql_sagas_per_s, dbosRate),
      sql_ungrouped_vs_dbos: ratio(table.pgrelay_sql_ungrouped_sagas_per_s, dbosRate),
      sql_batched_vs_dbos: ratio(table.pgrelay_sql_batched_sagas_per_s, dbosRate),
      worker_vs_dbos: ratio(table.pgrelay_worker_sagas_per_s, dbosRate),
    };
    context.log(`  median of ${rounds}: ${JSON.stringify(table)}; ratios ${JSON.stringify(ratios)}`);
    return {
      rounds,
      sizes,
      concurrency: CONCURRENCY,
      group_in_flight: GROUP_IN_FLIGHT ?? 'default',
      sql_sagas_per_transaction: groupSizes,
      steps_per_saga: 3,
      ...table,
      ratios,
      raw: results,
    };
  },
};

export default suite;
