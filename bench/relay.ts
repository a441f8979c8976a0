// The relay suite: what publishing costs next to a plain INSERT, end-to-end delivery under 8
// producers (in-process consumer and daemon → webhook) next to pg-boss and graphile-worker,
// draining a backlog next to graphile-worker's batched worker, and latency when idle.
// See bench/README.md `## relay` for what each number means and where the time goes.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { perSecond, ratio, timed, type BenchContext, type BenchSuite } from './lib.js';
import {
  deadline,
  graphileWorker,
  latency,
  payload,
  pgBoss,
  pgClient,
  pgrelayInProcess,
  pgrelayWebhook,
  LOG_ROW_INSERT,
  LOG_ROW_PK_ONLY_DDL,
  LOG_ROW_PK_ONLY_INSERT,
  PGRELAY_PUBLISH,
  PLAIN_INSERT,
  PLAIN_TABLE_DDL,
  TOPIC,
  type System,
} from './relay-systems.js';

/** Runs `clients` loops for durationMs, each calling op; returns completed ops per second. */
async function closedLoop(clients: number, durationMs: number, op: (client: number, n: number) => Promise<void>): Promise<number> {
  let done = 0;
  const until = performance.now() + durationMs;
  const { ms } = await timed(() =>
    Promise.all(
      Array.from({ length: clients }, async (_, c) => {
        for (let n = 0; performance.now() < until; n++) {
          await op(c, n);
          done++;
        }
      }),
    ),
  );
  return perSecond(done, ms);
}

/**
 * Publish vs plain INSERT, same payload, same raw pg connections, alternating rounds; with two
 * references in the same rounds: the log row alone (LOG_ROW_INSERT) and the log row into a copy of
 * the log with its primary key only, which split publish's cost into the row and its indexes and
 * what the function adds.
 */
async function publishThroughput(context: BenchContext, url: string): Promise<Record<string, unknown>> {
  const durationMs = context.quick ? 1500 : 5000;
  const rounds = context.quick ? 1 : 3;
  const setup = await pgClient(url, 'bench-setup');
  await setup.query(PLAIN_TABLE_DDL);
  await setup.query(LOG_ROW_PK_ONLY_DDL);
  await setup.end();
  const out: Record<string, unknown> = {};
  const contenders = { plain: PLAIN_INSERT, publish: PGRELAY_PUBLISH, log_row: LOG_ROW_INSERT, log_row_pk_only: LOG_ROW_PK_ONLY_INSERT };
  type Contender = keyof typeof contenders;
  for (const clients of [1, 8]) {
    const connections = await Promise.all(Array.from({ length: clients }, (_, i) => pgClient(url, `bench-publish-${i}`)));
    const data = JSON.stringify(payload(0, 0));
    const perRound = Object.fromEntries(Object.keys(contenders).map((name) => [name, [] as number[]])) as Record<Contender, number[]>;
    for (let round = 0; round < rounds; round++) {
      for (const [name, statement] of Object.entries(contenders) as [Contender, typeof PLAIN_INSERT][]) {
        perRound[name].push(await closedLoop(clients, durationMs, (c, n) =>
          connections[c]!.query({ ...statement, values: [TOPIC, `k-${c}-${n % 16}`, 'order.placed', data] }).then(() => {})));
      }
    }
    await Promise.all(connections.map((c) => c.end()));
    // Each contender's best round.
    const best = Object.fromEntries(Object.entries(perRound).map(([name, xs]) => [name, Math.max(...xs)])) as Record<Contender, number>;
    out[`clients_${clients}`] = {
      plain_insert_per_s: best.plain,
      publish_per_s: best.publish,
      ratio_publish_to_insert: ratio(best.publish, best.plain),
      log_row_per_s: best.log_row,
      ratio_log_row_to_insert: ratio(best.log_row, best.plain),
      log_row_pk_only_per_s: best.log_row_pk_only,
      ratio_log_row_pk_only_to_insert: ratio(best.log_row_pk_only, best.plain),
      rounds: perRound,
    };
    context.log(`publish, ${clients} client(s): ${best.publish}/s vs plain INSERT ${best.plain}/s → ${ratio(best.publish, best.plain)}×` +
      ` (log row alone ${ratio(best.log_row, best.plain)}×, log row with its primary key only ${ratio(best.log_row_pk_only, best.plain)}×)`);
  }
  return out;
}

/**
 * 8 producers, one message per transaction, while the system delivers: messages/s from the first
 * send to the last delivery, and send → handler latency.
 */
async function endToEnd(context: BenchContext, system: System, total: number): Promise<Record<string, unknown>> {
  const producers = 8;
  const samples: number[] = [];
  let allDelivered: () => void = () => {};
  const delivered = new Promise<void>((resolve) => (allDelivered = resolve));
  await system.startConsumer((sentAt) => {
    samples.push(performance.now() - sentAt);
    if (samples.length === total) allDelivered();
  });
  const clients = await Promise.all(Array.from({ length: producers }, (_, i) => system.producer(i)));
  const perProducer = Math.ceil(total / producers);
  const start = performance.now();
  await Promise.all(
    clients.map(async (client, p) => {
      for (let n = 0; n < perProducer && p * perProducer + n < total; n++) await client.send(payload(p, n));
    }),
  );
  const published = performance.now();
  const timeout = deadline(120_000).then(() => 'timeout' as const);
  if ((await Promise.race([delivered.then(() => 'ok' as const), timeout])) === 'timeout') {
    throw new Error(`${system.name}: ${samples.length} of ${total} delivered after 120 s`);
  }
  const end = performance.now();
  await Promise.all(clients.map((c) => c.close()));
  await system.stop();
  const result = {
    messages: total,
    messages_per_s: perSecond(total, end - start),
    publish_per_s: perSecond(total, published - start),
    latency_ms: latency(samples),
  };
  context.log(`e2e ${system.name}: ${result.messages_per_s}/s (publishing ${result.publish_per_s}/s), latency p50 ${result.latency_ms.p50} ms p99 ${result.latency_ms.p99} ms`);
  return result;
}

/** A backlog written before the consumer starts, then drained: messages/s. */
async function drain(context: BenchContext, system: System, total: number): Promise<Record<string, unknown>> {
  await system.fill!(total, (n) => payload(0, n));
  let seen = 0;
  let finished: () => void = () => {};
  const all = new Promise<void>((resolve) => (finished = resolve));
  const { ms } = await timed(async () => {
    await system.startConsumer(() => {
      seen++;
      if (seen === total) finished();
    });
    await Promise.race([all, deadline(300_000).then(() => Promise.reject(new Error(`${system.name}: drained ${seen} of ${total} in 300 s`)))]);
  });
  await system.stop();
  const result = { messages: total, ms: Math.round(ms), messages_per_s: perSecond(total, ms) };
  context.log(`drain ${system.name}: ${total} in ${Math.round(ms)} ms → ${result.messages_per_s}/s`);
  return result;
}

/**
 * One system's idle run in a fresh Node process (bench/relay-idle.ts): the earlier parts leave
 * this process with a larger heap and code optimised for their shapes (hundreds of rows a batch),
 * which the idle figure is not about, and every system gets the same clean start.
 */
async function idleInChild(context: BenchContext, system: 'pgrelay' | 'pg-boss', url: string, count: number, gapMs: number): Promise<Record<string, unknown>> {
  if (process.env.PGRELAY_BENCH_IDLE_IN_PROCESS) {
    const { idleLatency, idleSystem } = await import('./relay-idle.js');
    return idleLatency(context.server.adminUrl, context.log, await idleSystem(system, url), count, gapMs);
  }
  const child = spawn(process.execPath, [fileURLToPath(new URL('./relay-idle.js', import.meta.url)), system, url, String(count), String(gapMs)], {
    env: { ...process.env, PGRELAY_BENCH_ADMIN_URL: context.server.adminUrl },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString('utf8')));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (code !== 0) throw new Error(`idle ${system}: child process exited with ${code}`);
  return JSON.parse(out) as Record<string, unknown>;
}

const suite: BenchSuite = {
  name: 'relay',
  async run(context) {
    const { server, quick } = context;
    const e2eTotal = quick ? 2_000 : 10_000;
    const backlog = quick ? 20_000 : 100_000;
    const idleCount = quick ? 100 : 300;
    const pgrelayOptions = { partitions: 4, batchSize: 500 };
    const drainOptions = { partitions: 4, batchSize: 1000 };

    // PGRELAY_BENCH_PARTS=publish,e2e,drain,idle runs only those parts (while working on one).
    const parts = new Set((process.env.PGRELAY_BENCH_PARTS ?? 'publish,e2e,drain,idle').split(','));
    const result: Record<string, unknown> = {};
    const rate = (r: Record<string, unknown>): number => r.messages_per_s as number;

    if (parts.has('publish')) result.publish = await publishThroughput(context, await server.database('bench_relay_publish'));

    if (parts.has('e2e')) {
      const e2e = {
        pgrelay_consume: await endToEnd(context, await pgrelayInProcess(await server.database('bench_relay_e2e_consume'), pgrelayOptions), e2eTotal),
        pgrelay_webhook: await endToEnd(context, await pgrelayWebhook(await server.database('bench_relay_e2e_webhook'), pgrelayOptions), e2eTotal),
        pg_boss: await endToEnd(context, await pgBoss(await server.database('bench_relay_e2e_pgboss', { migrated: false }), { batchSize: 100, workers: 4 }), e2eTotal),
        graphile_worker: await endToEnd(
          context,
          await graphileWorker(await server.database('bench_relay_e2e_graphile', { migrated: false }), { concurrency: 16, localQueue: 1 }),
          e2eTotal,
        ),
      };
      result.end_to_end = {
        ...e2e,
        ratio_consume_to_pg_boss: ratio(rate(e2e.pgrelay_consume), rate(e2e.pg_boss)),
        ratio_webhook_to_pg_boss: ratio(rate(e2e.pgrelay_webhook), rate(e2e.pg_boss)),
        ratio_consume_to_graphile_worker: ratio(rate(e2e.pgrelay_consume), rate(e2e.graphile_worker)),
      };
    }

    if (parts.has('drain')) {
      const drained = {
        pgrelay_consume: await drain(context, await pgrelayInProcess(await server.database('bench_relay_drain'), drainOptions), backlog),
        graphile_worker_local_queue: await drain(
          context,
          await graphileWorker(await server.database('bench_relay_drain_graphile', { migrated: false }), { concurrency: 16, localQueue: 500 }),
          backlog,
        ),
      };
      result.drain = { ...drained, ratio_to_graphile_worker_local_queue: ratio(rate(drained.pgrelay_consume), rate(drained.graphile_worker_local_queue)) };
    }

    if (parts.has('idle')) {
      // Each system's idle run starts on a settled server: the earlier parts' databases dropped,
      // a checkpoint done, no autovacuum worker left (the 100,000-row drains otherwise keep one
      // core busy into whichever idle run comes first).
      const earlier = ['bench_relay_publish', 'bench_relay_e2e_consume', 'bench_relay_e2e_webhook', 'bench_relay_e2e_pgboss', 'bench_relay_e2e_graphile',
        'bench_relay_drain', 'bench_relay_drain_graphile'];
      await server.settle(earlier);
      const pgrelayIdleResult = await idleInChild(context, 'pgrelay', await server.database('bench_relay_idle'), idleCount, 20);
      const pgBossDb = await server.database('bench_relay_idle_pgboss', { migrated: false });
      await server.settle(['bench_relay_idle']);
      result.idle = {
        pgrelay_consume: pgrelayIdleResult,
        pg_boss: await idleInChild(context, 'pg-boss', pgBossDb, Math.min(idleCount, 100), 20),
      };
    }
    return result;
  },
};

export default suite;
