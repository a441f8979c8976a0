import { sql, type DatabasePool } from 'slonik';
import { z } from 'zod';
import type { Waker } from '../client/index.js';
import { createTargetPools, listSyncs, runLocalSync, runSyncStep, syncCheckpoint, type SyncDefinition } from './sync-runner.js';
import type { Log } from './service.js';
import type { RelayMetrics } from './metrics-types.js';

const lagSchema = z.object({ pending: z.string(), lag_seconds: z.number() });

const countSchema = z.object({ n: z.number() });
const nameSchema = z.object({ name: z.string() });

export type DriverStats = { sagaTicks: number; projectionApplied: number; syncApplied: number; errors: number };

/**
 * Loops that move database-side work along: due saga steps, timeouts and deadlines (saga_tick),
 * projections (projection_run) and syncs (sync_run, or read-from-source/apply-in-target across
 * databases). Each wakes on the doorbell and otherwise every intervalMs.
 */
export function startDrivers(options: {
  pool: DatabasePool;
  waker?: Waker;
  log: Log;
  env: NodeJS.ProcessEnv;
  metrics?: RelayMetrics;
  intervalMs?: number;
  /** How often a sync's lag metric is recomputed. Default 2000 ms. */
  lagRefreshMs?: number;
  /** Source messages a sync reads per batch (one target transaction). Default 2000. */
  syncBatch?: number;
  sagas?: boolean;
  projections?: boolean;
  syncs?: boolean;
}) {
  const { pool, log } = options;
  const intervalMs = options.intervalMs ?? 250;
  const lagRefreshMs = options.lagRefreshMs ?? 2000;
  const syncBatch = options.syncBatch ?? 2000;
  const stats: DriverStats = { sagaTicks: 0, projectionApplied: 0, syncApplied: 0, errors: 0 };
  const targets = createTargetPools(options.env);
  let stopping = false;

  const sleep = async (ms: number): Promise<void> => {
    if (options.waker !== undefined) await options.waker.wait(ms);
    else await new Promise((resolve) => setTimeout(resolve, ms));
  };

  const loop = async (name: string, step: () => Promise<number>): Promise<void> => {
    let failures = 0;
    while (!stopping) {
      let progressed = 0;
      try {
        progressed = await step();
        failures = 0;
      } catch (error) {
        stats.errors += 1;
        failures += 1;
        log.warn({ driver: name, err: String(error), failures }, 'driver step failed');
      }
      // Back off while the database is away, rather than logging four failures a second.
      if (progressed === 0 && !stopping) await sleep(failures === 0 ? intervalMs : Math.min(intervalMs * 2 ** failures, 5_000));
    }
  };

  const sagaStep = async (): Promise<number> => {
    // Small batches: a tick is one transaction, and the rows its SQL steps lock stay locked until
    // it commits, so a big batch makes lock races with other ticks and with saga_start likelier.
    const n = await pool.oneFirst(sql.type(countSchema)`SELECT pgrelay.saga_tick(50) AS n`);
    stats.sagaTicks += n;
    return n;
  };

  const projectionStep = async (): Promise<number> => {
    let total = 0;
    for (const { name } of await pool.any(sql.type(nameSchema)`SELECT name FROM pgrelay.projections ORDER BY name`)) {
      total += await pool.oneFirst(sql.type(countSchema)`SELECT pgrelay.projection_run(${name}, 1000) AS n`);
    }
    stats.projectionApplied += total;
    return total;
  };

  // Lag figures cost a count over the pending log: refreshed every few seconds, not every batch.
  const lagRefreshedAt = new Map<string, number>();
  const refreshSyncLag = async (sync: SyncDefinition, target: DatabasePool): Promise<void> => {
    if (options.metrics === undefined) return;
    const now = Date.now();
    if (now - (lagRefreshedAt.get(sync.name) ?? 0) < lagRefreshMs) return;
    lagRefreshedAt.set(sync.name, now);
    const cursor = await syncCheckpoint(target, sync.name);
    const lag = await pool.one(sql.type(lagSchema)`
      SELECT pending::text AS pending, lag_seconds
      FROM pgrelay.log_lag(${sql.array(sync.topics, 'text')}, ${cursor.xid}::xid8, ${cursor.position}::bigint)`);
    options.metrics.setSyncLag(sync.name, Number(lag.pending), lag.lag_seconds);
  };

  const syncStep = async (): Promise<number> => {
    let total = 0;
    for (const sync of await listSyncs(pool)) {
      if (sync.paused) continue;
      const variable = sync.target.database_env;
      try {
        const target = typeof variable === 'string' ? await targets.get(variable) : pool;
        total += typeof variable === 'string' ? await runSyncStep(pool, target, sync, syncBatch) : await runLocalSync(pool, sync.name, syncBatch);
        await refreshSyncLag(sync, target);
      } catch (error) {
        stats.errors += 1;
        log.warn({ sync: sync.name, err: String(error) }, 'sync step failed');
      }
    }
    stats.syncApplied += total;
    return total;
  };

  const loops = [
    options.sagas === false ? null : loop('sagas', sagaStep),
    options.projections === false ? null : loop('projections', projectionStep),
    options.syncs === false ? null : loop('syncs', syncStep),
  ].filter((p): p is Promise<void> => p !== null);

  return {
    stats,
    stop: async () => {
      stopping = true;
      options.waker?.wakeAll();
      await Promise.all(loops);
      await targets.close();
    },
  };
}
