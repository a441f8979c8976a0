import { createRelayService, type RelayService } from './service.js';
import { defaultSinks } from './sinks.js';
import { createMetrics } from './metrics.js';
import { createHttpServer } from './http.js';
import { createLogger } from './logger.js';
import type { SinkRegistry } from './sink.js';
import { applySyncConfig } from './sync-config.js';

export type DaemonOptions = {
  connectionString: string;
  /** HTTP port for /healthz and /metrics; 0 picks one; null disables. Default 9187. */
  port?: number | null;
  host?: string;
  only?: readonly string[];
  sinks?: SinkRegistry;
  idlePollMs?: number;
  /** A sync config file to define syncs from at start (see daemon/sync-config.ts). */
  syncConfig?: string;
};

export type Daemon = { service: RelayService; port: number | null; stop(): Promise<void> };

/** Starts the relay with its HTTP endpoints and JSON logs. */
export async function startDaemon(options: DaemonOptions): Promise<Daemon> {
  const log = createLogger();
  const metrics = createMetrics();
  const service = createRelayService({
    connectionString: options.connectionString,
    sinks: options.sinks ?? defaultSinks,
    metrics: metrics.relay,
    log,
    only: options.only,
    idlePollMs: options.idlePollMs,
  });
  await service.start();
  if (options.syncConfig !== undefined && options.syncConfig !== '') {
    try {
      log.info({ file: options.syncConfig, syncs: await applySyncConfig(options.connectionString, options.syncConfig) }, 'syncs defined from the config file');
    } catch (error) {
      await service.stop();
      throw error;
    }
  }
  let http: ReturnType<typeof createHttpServer> | undefined;
  let port: number | null = null;
  if (options.port !== null) {
    http = createHttpServer({ port: options.port ?? 9187, host: options.host, health: () => service.health(), metrics });
    port = (await http.listen()).port;
    log.info({ port }, 'http endpoints /healthz and /metrics listening');
  }
  return {
    service,
    port,
    stop: async () => {
      await service.stop();
      await http?.close();
    },
  };
}

/**
 * `pgrelay daemon`: runs until SIGTERM/SIGINT, then finishes in-flight batches and resolves.
 * If they are not finished within shutdownGraceMs (default 25 s, under the usual 30 s a
 * supervisor waits), or a second signal arrives, it resolves anyway: batches not completed are
 * delivered again once their leases expire (at least once). Resolves with the exit code.
 */
export async function runDaemon(options: DaemonOptions & { shutdownGraceMs?: number }): Promise<number> {
  let hurry: () => void = () => {};
  const hurried = new Promise<'hurried'>((resolve) => {
    hurry = () => resolve('hurried');
  });
  // Listening before starting: a signal during start-up waits for it, then shuts down cleanly.
  const signalled = new Promise<void>((resolve) => {
    const shutdown = (): void => {
      process.off('SIGTERM', shutdown);
      process.off('SIGINT', shutdown);
      process.once('SIGTERM', hurry);
      process.once('SIGINT', hurry);
      resolve();
    };
    process.on('SIGTERM', shutdown);
    process.on('SIGINT', shutdown);
  });
  const daemon = await startDaemon(options);
  await signalled;
  let timer: NodeJS.Timeout | undefined;
  const graceOver = new Promise<'grace over'>((resolve) => {
    timer = setTimeout(() => resolve('grace over'), options.shutdownGraceMs ?? 25_000);
  });
  const outcome = await Promise.race([daemon.stop().then(() => 'stopped' as const), hurried, graceOver]);
  clearTimeout(timer);
  if (outcome === 'stopped') return 0;
  createLogger().warn({ reason: outcome }, 'shutdown did not finish: unfinished batches will be delivered again');
  return 1;
}
