// Idle latency (the relay suite's `idle` part): one message at a time, 20 ms of quiet between,
// send → handler. bench/relay.ts runs each system's idle run as `node relay-idle.js <system> <url>
// <count> <gapMs>` in a fresh process: the parts before it leave the bench process with a larger
// heap and code optimised for batches of hundreds, which is not what the idle figure is about,
// and each system gets the same clean start. The result is printed as JSON on stdout.
import { fileURLToPath } from 'node:url';
import { loadavg } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { withPg } from './lib.js';
import { deadline, latency, payload, pgBoss, pgrelayInProcess, type System } from './relay-systems.js';

export async function idleSystem(system: string, url: string): Promise<System> {
  if (system === 'pgrelay') return pgrelayInProcess(url, { partitions: 1, batchSize: 100 });
  if (system === 'pg-boss') return pgBoss(url, { batchSize: 1, workers: 1 });
  throw new Error(`relay-idle: unknown system ${system}`);
}

/** One message at a time, the system idle in between: send → handler latency. */
export async function idleLatency(adminUrl: string, log: (line: string) => void, system: System, count: number, gapMs: number): Promise<Record<string, unknown>> {
  const samples: number[] = [];
  let arrived: (() => void) | undefined;
  await system.startConsumer((sentAt) => {
    samples.push(performance.now() - sentAt);
    arrived?.();
  });
  const producer = await system.producer(0);
  await sleep(200);
  // What the process and the server carry into this run (see bench/README.md, relay, idle).
  const gcs: number[] = [];
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) gcs.push(entry.duration);
  });
  observer.observe({ entryTypes: ['gc'] });
  const resources: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) resources[r] = (resources[r] ?? 0) + 1;
  const backends = await withPg(adminUrl, async (c) =>
    (await c.query(`SELECT coalesce(datname, '-') || ':' || backend_type || ':' || coalesce(state, '-') AS b, count(*)::int AS n FROM pg_stat_activity WHERE pid <> pg_backend_pid() GROUP BY 1 ORDER BY 1`)).rows
      .map((r: { b: string; n: number }) => `${r.b}=${r.n}`).join(' '));
  const heapMb = Math.round(process.memoryUsage().heapUsed / 1e6);
  const cpu0 = process.cpuUsage();
  const wall0 = performance.now();
  for (let n = 0; n < count; n++) {
    const got = new Promise<void>((resolve) => (arrived = resolve));
    await producer.send(payload(0, n));
    await Promise.race([got, deadline(10_000).then(() => Promise.reject(new Error(`${system.name}: message ${n} not delivered in 10 s`)))]);
    await sleep(gapMs);
  }
  const cpu = process.cpuUsage(cpu0);
  const wallMs = performance.now() - wall0;
  observer.disconnect();
  await producer.close();
  await system.stop();
  const diagnostics = {
    heap_used_mb: heapMb,
    process_cpu_us_per_message: Math.round((cpu.user + cpu.system) / count),
    process_cpu_share: Math.round(((cpu.user + cpu.system) / 1000 / wallMs) * 1000) / 1000,
    gc: { count: gcs.length, ms: Math.round(gcs.reduce((a, b) => a + b, 0) * 10) / 10 },
    resources,
    backends,
    load: loadavg().map((x) => Math.round(x * 100) / 100),
  };
  const result = { messages: count, idle_gap_ms: gapMs, latency_ms: latency(samples), diagnostics };
  if (process.env.PGRELAY_BENCH_DIAG) log(`idle ${system.name} diagnostics: ${JSON.stringify(diagnostics)}`);
  log(`idle ${system.name}: p50 ${result.latency_ms.p50} ms, p99 ${result.latency_ms.p99} ms`);
  return result;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [system, url, count, gapMs] = process.argv.slice(2);
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const result = await idleLatency(process.env.PGRELAY_BENCH_ADMIN_URL ?? url!, log, await idleSystem(system!, url!), Number(count), Number(gapMs));
  process.stdout.write(`${JSON.stringify(result)}\n`); // synchronous on a pipe (Linux)
  process.exit(0); // a peer's stray timer must not hold the suite
}
