// Starts the real `pgrelay daemon` (the built CLI, dist/bin/pgrelay.js) as a child process, so
// tests can SIGKILL and SIGTERM it. `npm test` builds first (pretest); running one file by hand
// needs `npm run build` before it.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'bin', 'pgrelay.js');

export type DaemonProcess = {
  child: ChildProcess;
  /** Every JSON log line parsed so far (non-JSON lines are kept as { msg: line }). */
  logs: Array<Record<string, unknown>>;
  /** Resolves when a log line satisfies `match`, rejects after `timeoutMs`. */
  waitForLog(match: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  exited: Promise<number | string>;
  kill(signal: NodeJS.Signals): Promise<number | string>;
};

export type DaemonProcessOptions = {
  connectionString: string;
  /** Extra CLI arguments after `daemon` (e.g. ['--only', 'a,b']). Default: ['--port', 'off']. */
  args?: readonly string[];
  env?: Record<string, string | undefined>;
  /** Wait for the 'relay started' log line before resolving (default true). */
  waitReady?: boolean;
};

export async function startDaemonProcess(options: DaemonProcessOptions): Promise<DaemonProcess> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
  const child = spawn(process.execPath, [CLI, 'daemon', ...(options.args ?? ['--port', 'off'])], {
    env: { ...process.env, PGRELAY_LOG_LEVEL: 'info', ...options.env, DATABASE_URL: options.connectionString },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Array<Record<string, unknown>> = [];
  const waiters: Array<{ match: (line: Record<string, unknown>) => boolean; resolve: (line: Record<string, unknown>) => void }> = [];
  const onLine = (text: string): void => {
    if (text.trim() === '') return;
    let line: Record<string, unknown>;
    try {
      line = JSON.parse(text) as Record<string, unknown>;
    } catch {
      line = { msg: text };
    }
    logs.push(line);
    for (const waiter of [...waiters]) {
      if (waiter.match(line)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  };
  for (const stream of [child.stdout, child.stderr]) {
    let buffered = '';
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      buffered += chunk;
      let newline: number;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        onLine(buffered.slice(0, newline));
        buffered = buffered.slice(newline + 1);
      }
    });
  }
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown'));
  });
  const waitForLog = (match: (line: Record<string, unknown>) => boolean, timeoutMs = 30_000): Promise<Record<string, unknown>> => {
    const seen = logs.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`daemon log line not seen within ${timeoutMs} ms; last lines: ${JSON.stringify(logs.slice(-5))}`));
      }, timeoutMs);
      waiters.push({
        match,
        resolve: (line) => {
          clearTimeout(timer);
          resolve(line);
        },
      });
      void exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`daemon exited (${code}) before the log line; last lines: ${JSON.stringify(logs.slice(-5))}`));
      });
    });
  };
  const daemon: DaemonProcess = {
    child,
    logs,
    waitForLog,
    exited,
    kill: async (signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
  if (options.waitReady !== false) await waitForLog((line) => line.msg === 'relay started');
  return daemon;
}
