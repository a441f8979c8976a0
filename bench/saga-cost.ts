// Where a one-call saga's time goes (not a suite; run with node dist/bench/saga-cost.js):
// backend CPU per saga_start (DO loop, no commit; and one transaction per call), client CPU per
// call through the pgrelay client (slonik) and through bare pg, and the 32-client mix of the bench.
// Backend CPU is user+system from /proc/<pid>/stat of the backend serving the session.
import { readFileSync, writeFileSync } from 'node:fs';
import pg from 'pg';
import { createClient } from '../client/index.js';
import { startBenchServer, withPg } from './lib.js';

const TICK_US = 10_000; // USER_HZ 100
const cpuOf = (pid: number): number => {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) * TICK_US; // utime, stime (fields 14, 15)
};
const NOOP_SQL = `CREATE FUNCTION public.noop(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$`;
const DEF = { steps: ['a', 'b', 'c'].map((name) => ({ name, action: { sql: 'public.noop' }, compensation: { sql: 'public.noop' } })) };

async function fresh(server: Awaited<ReturnType<typeof startBenchServer>>, name: string): Promise<string> {
  const url = await server.database(name);
  await withPg(url, async (c) => {
    await c.query(NOOP_SQL);
    await c.query(`SELECT pgrelay.saga_define('bench.sql', $1::jsonb)`, [JSON.stringify(DEF)]);
  });
  return url;
}

async function main(): Promise<void> {
  const which = (process.argv[2] ?? 'all').split(',');
  const n = Number(process.argv[3] ?? 2000);
  const server = await startBenchServer(() => {});
  const out: Record<string, unknown> = {};
  try {
    if (which.includes('all') || which.includes('do')) {
      const url = await fresh(server, 'saga_cost_do');
      out.do_loop_us_per_saga = await withPg(url, async (c) => {
        const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
        await c.query(`DO $$ BEGIN FOR i IN 1..200 LOOP PERFORM pgrelay.saga_start('bench.sql', '{}'); END LOOP; END $$`);
        const before = cpuOf(pid);
        await c.query(`DO $$ BEGIN FOR i IN 1..${n} LOOP PERFORM pgrelay.saga_start('bench.sql', '{}'); END LOOP; END $$`);
        return (cpuOf(pid) - before) / n;
      });
    }
    if (which.includes('all') || which.includes('seq')) {
      // One transaction per call, sequential, bare pg (extended protocol, unnamed statement).
      const url = await fresh(server, 'saga_cost_seq');
      await withPg(url, async (c) => {
        const pid = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p as number;
        for (let i = 0; i < 200; i += 1) await c.query(`SELECT pgrelay.saga_start($1, $2::jsonb, $3) AS id`, ['bench.sql', '{}', null]);
        const b0 = cpuOf(pid);
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        for (let i = 0; i < n; i += 1) await c.query(`SELECT pgrelay.saga_start($1, $2::jsonb, $3) AS id`, ['bench.sql', '{}', null]);
        const ms = performance.now() - t0;
        const cc = process.cpuUsage(c0);
        out.pg_seq = { backend_us: (cpuOf(pid) - b0) / n, client_us: (cc.user + cc.system) / n, wall_us: (ms * 1000) / n };
      });
    }
    if (which.includes('all') || which.includes('slonik')) {
      const url = await fresh(server, 'saga_cost_slonik');
      const client = await createClient({ connectionString: url, maximumPoolSize: 1 });
      try {
        for (let i = 0; i < 200; i += 1) await client.sagas.start('bench.sql', {});
        const pid = await client.connection.oneFirst((await import('slonik')).sql.unsafe`SELECT pg_backend_pid() AS p`) as number;
        const b0 = cpuOf(pid);
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        for (let i = 0; i < n; i += 1) await client.sagas.start('bench.sql', {});
        const ms = performance.now() - t0;
        const cc = process.cpuUsage(c0);
        out.slonik_seq = { backend_us: (cpuOf(pid) - b0) / n, client_us: (cc.user + cc.system) / n, wall_us: (ms * 1000) / n };
      } finally {
        await client.end();
      }
    }
    if (which.includes('all') || which.includes('c32')) {
      // The bench's mode: 32 clients through createClient; client CPU and every backend's CPU.
      const url = await fresh(server, 'saga_cost_c32');
      const client = await createClient({ connectionString: url, maximumPoolSize: 32 });
      try {
        const warm = Array.from({ length: 32 }, () => client.sagas.start('bench.sql', {}));
        await Promise.all(warm);
        const pids = await withPg(url, async (c) => (await c.query(`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)).rows.map((r) => r.pid as number));
        if (process.env.SAGA_COST_PIDS !== undefined) {
          writeFileSync(process.env.SAGA_COST_PIDS, [process.pid, ...pids].join(','));
          await new Promise((resolve) => setTimeout(resolve, 2000));
        }
        const b0 = pids.reduce((s, p) => s + cpuOf(p), 0);
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        let next = 0;
        const total = n * 2;
        await Promise.all(Array.from({ length: 32 }, async () => { while (next < total) { next += 1; await client.sagas.start('bench.sql', {}); } }));
        const ms = performance.now() - t0;
        const cc = process.cpuUsage(c0);
        out.c32 = { per_s: Math.round((total / ms) * 1000), backends: pids.length, backend_us: (pids.reduce((s, p) => s + cpuOf(p), 0) - b0) / total, client_us: (cc.user + cc.system) / total };
      } finally {
        await client.end();
      }
    }
    if (which.includes('all') || which.includes('pg32')) {
      // 32 bare pg clients, for the client-library share.
      const url = await fresh(server, 'saga_cost_pg32');
      const pool = new pg.Pool({ connectionString: url, max: 32 });
      try {
        await Promise.all(Array.from({ length: 32 }, () => pool.query(`SELECT pgrelay.saga_start($1, $2::jsonb, $3) AS id`, ['bench.sql', '{}', null])));
        const pids = await withPg(url, async (c) => (await c.query(`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)).rows.map((r) => r.pid as number));
        const b0 = pids.reduce((s, p) => s + cpuOf(p), 0);
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        let next = 0;
        const total = n * 2;
        await Promise.all(Array.from({ length: 32 }, async () => { while (next < total) { next += 1; await pool.query(`SELECT pgrelay.saga_start($1, $2::jsonb, $3) AS id`, ['bench.sql', '{}', null]); } }));
        const ms = performance.now() - t0;
        const cc = process.cpuUsage(c0);
        out.pg32 = { per_s: Math.round((total / ms) * 1000), backends: pids.length, backend_us: (pids.reduce((s, p) => s + cpuOf(p), 0) - b0) / total, client_us: (cc.user + cc.system) / total };
      } finally {
        await pool.end();
      }
    }
    console.log(JSON.stringify(out));
  } finally {
    await server.stop();
  }
}

await main();
