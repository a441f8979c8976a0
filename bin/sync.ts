// `pgrelay sync list|status|run|reconcile`: thin over daemon/sync-runner and daemon/reconcile.
import { createPgrelayPool, syncMethods } from '../client/index.js';
import { listSyncs, syncCheckpoint, runLocalSync } from '../daemon/sync-runner.js';
import { reconcileSync } from '../daemon/reconcile.js';
import { createProgress } from './progress.js';

export async function syncCommand(verb: string | undefined, name: string | undefined, databaseUrl: string, flags: { chunkSize?: number }): Promise<number> {
  const source = await createPgrelayPool(databaseUrl, { applicationName: 'pgrelay-cli' });
  const targets: Array<{ end(): Promise<void> }> = [];
  const targetOf = async (variable: unknown) => {
    if (typeof variable !== 'string') return source;
    const url = process.env[variable];
    if (url === undefined || url === '') throw new Error(`environment variable ${variable} (the sync's target database) is not set`);
    const pool = await createPgrelayPool(url, { applicationName: 'pgrelay-cli' });
    targets.push(pool);
    return pool;
  };
  try {
    const syncs = await listSyncs(source);
    const pick = () => {
      const sync = syncs.find((s) => s.name === name);
      if (sync === undefined) throw new Error(`no sync named ${name ?? '(missing name)'}`);
      return sync;
    };
    switch (verb) {
      case 'list':
        process.stdout.write(`${JSON.stringify(syncs, null, 2)}\n`);
        return 0;
      case 'status': {
        const rows = [];
        for (const sync of name === undefined ? syncs : [pick()]) {
          const target = await targetOf(sync.target.database_env);
          const cursor = await syncCheckpoint(target, sync.name);
          const lag = await syncMethods(source).lag(sync.topics, cursor);
          rows.push({ name: sync.name, checkpoint: await syncMethods(target).checkpoint(sync.name), pending: Number(lag.pending), lag_seconds: lag.lag_seconds });
        }
        process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
        return 0;
      }
      case 'run': {
        const sync = pick();
        if (typeof sync.target.database_env === 'string') throw new Error('a cross-database sync is run by `pgrelay daemon`');
        // Until the checkpoint stops moving (a batch of only stale changes applies 0 rows but moves it).
        let total = 0;
        for (let at = JSON.stringify(await syncCheckpoint(source, sync.name)); ; ) {
          total += await runLocalSync(source, sync.name);
          const now = JSON.stringify(await syncCheckpoint(source, sync.name));
          if (now === at) break;
          at = now;
        }
        process.stdout.write(`${JSON.stringify({ applied: total })}\n`);
        return 0;
      }
      case 'reconcile': {
        const sync = pick();
        const target = await targetOf(sync.target.database_env);
        const progress = createProgress(`reconcile ${sync.name}`);
        const controller = new AbortController();
        const onSigint = () => controller.abort();
        process.once('SIGINT', onSigint);
        try {
          const report = await reconcileSync(source, target, sync, {
            chunkSize: flags.chunkSize,
            signal: controller.signal,
            onProgress: (done, total, r) => progress.update(done, total, `missing ${r.missing} different ${r.different} extra ${r.extra}`),
          });
          progress.done(
            controller.signal.aborted
              ? 'reconcile interrupted: run it again to go over the whole table'
              : `reconciled ${report.rows} rows: repaired ${report.missing} missing, ${report.different} different, ${report.extra} extra`,
          );
          process.stdout.write(`${JSON.stringify(report)}\n`);
        } finally {
          process.off('SIGINT', onSigint);
        }
        return 0;
      }
      default:
        throw new Error('usage: pgrelay sync list | status [NAME] | run NAME | reconcile NAME [--chunk-size N]');
    }
  } finally {
    for (const pool of targets) await pool.end();
    await source.end();
  }
}
