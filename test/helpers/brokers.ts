// Broker availability for the NATS and RabbitMQ tests, and what both broker test files share:
// subscribing, publishing, waiting for the lag to settle, the daemon process or in-process relay.
//
// A broker that does not answer makes its tests skip with a clear message, unless
// PGRELAY_REQUIRE_BROKERS=1 (CI), where a missing broker is a failure.
import { connect as tcpConnect } from 'node:net';
import tap, { type Test } from 'tap';
import { createRelayService } from '../../daemon/service.ts';
import { defaultSinks } from '../../daemon/sinks.ts';
import { startDaemonProcess, type DaemonProcess } from './daemon-process.ts';
import { query } from './sql.ts';

export const NATS_URL = process.env.PGRELAY_TEST_NATS_URL ?? 'nats://127.0.0.1:4222';
export const AMQP_URL = process.env.PGRELAY_TEST_AMQP_URL ?? 'amqp://127.0.0.1:5672';
export const AMQP_USER = process.env.PGRELAY_TEST_AMQP_USER ?? 'guest';
export const AMQP_PASS = process.env.PGRELAY_TEST_AMQP_PASS ?? 'guest';

export const requireBrokers = (): boolean => process.env.PGRELAY_REQUIRE_BROKERS === '1';

function hostPort(url: string, defaultPort: number): { host: string; port: number } {
  const parsed = new URL(url);
  return { host: parsed.hostname, port: parsed.port === '' ? defaultPort : Number(parsed.port) };
}

export const natsTarget = (): { host: string; port: number } => hostPort(NATS_URL, 4222);
export const amqpTarget = (): { host: string; port: number } => hostPort(AMQP_URL, 5672);

/** True when something accepts TCP connections at host:port within timeoutMs. */
export function reachable(host: string, port: number, timeoutMs = 2_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host, port });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * `false` when the broker answers (run the tests), or the skip reason. With
 * PGRELAY_REQUIRE_BROKERS=1 a missing broker fails the file instead.
 */
export async function brokerSkip(name: 'NATS' | 'RabbitMQ', url: string, defaultPort: number): Promise<false | string> {
  const { host, port } = hostPort(url, defaultPort);
  if (await reachable(host, port)) return false;
  const reason = `${name} is not reachable at ${host}:${port}: broker tests skipped (start ${name}, or set PGRELAY_REQUIRE_BROKERS=1 to make this a failure)`;
  if (requireBrokers()) {
    tap.fail(`${name} is required (PGRELAY_REQUIRE_BROKERS=1) but not reachable at ${host}:${port}`);
    return `${name} required but missing`;
  }
  tap.comment(reason);
  return reason;
}

/** Polls `check` until it returns a value that is not undefined, or throws after timeoutMs. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 30_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last === undefined ? '' : `: ${String(last)}`}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

export const uniqueName = (prefix: string): string => `${prefix}_${process.pid}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;

export type InProcessRelay = { logs: Array<Record<string, unknown>>; stop(): Promise<void> };

/**
 * The real relay service in this process (the code `pgrelay daemon` runs), serving one
 * subscription, with its log lines kept; stopped when the test ends. For tests that do not need
 * to kill a process: it spares a process start on a loaded machine.
 */
export async function startRelay(t: Test, connectionString: string, subscription: string, env: Record<string, string> = {}): Promise<InProcessRelay> {
  const logs: Array<Record<string, unknown>> = [];
  const keep = (level: string) => (object: object, msg?: string): void => void logs.push({ level, msg, ...object });
  const service = createRelayService({
    connectionString,
    sinks: defaultSinks,
    only: [subscription],
    drivers: false,
    idlePollMs: 200,
    env: { ...process.env, ...env },
    log: { info: keep('info'), warn: keep('warn'), error: keep('error') },
  });
  await service.start();
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await service.stop();
  };
  t.teardown(stop);
  return { logs, stop };
}

/** Subscribes `name` to topic "orders" with `sink`, from the earliest message, retrying fast. */
export async function subscribe(connectionString: string, name: string, sink: object, options: object = {}): Promise<void> {
  await query(connectionString, `SELECT pgrelay.subscribe($1, ARRAY['orders'], $2::jsonb, $3::jsonb)`, [
    name,
    JSON.stringify(sink),
    JSON.stringify({ start: 'earliest', max_attempts: 1000, backoff: { initial_ms: 50, max_ms: 500 }, ...options }),
  ]);
}

/** Publishes `count` messages over `keys` keys in one transaction; returns their ids in log order. */
export async function publish(connectionString: string, count: number, keys: number, from = 1): Promise<Array<{ id: string; key: string; seq: number }>> {
  return query<{ id: string; key: string; seq: number }>(
    connectionString,
    `SELECT pgrelay.publish('orders', 'k' || (i % $2), 'order.created', jsonb_build_object('seq', i)) AS id,
            'k' || (i % $2) AS key, i AS seq
     FROM generate_series($3::int, $3::int + $1::int - 1) AS i ORDER BY i`,
    [count, keys, from],
  );
}

export type Lag = { pending: number; retrying: number; dead: number; delivered: number };
export async function lag(connectionString: string, subscription: string): Promise<Lag> {
  const [row] = await query<Lag>(
    connectionString,
    `SELECT sum(pending)::int AS pending, sum(retrying)::int AS retrying, sum(dead)::int AS dead, sum(delivered)::int AS delivered
     FROM pgrelay.subscription_lag($1)`,
    [subscription],
  );
  return row!;
}

/** Waits until nothing of `subscription` is pending or retrying. */
export const settled = (connectionString: string, subscription: string, timeoutMs = 40_000): Promise<true> =>
  waitFor(`every message of ${subscription} acknowledged`, async () => {
    const l = await lag(connectionString, subscription);
    return l.pending === 0 && l.retrying === 0 ? true : undefined;
  }, timeoutMs, 100);

/** The daemon process serving only `subscription` (comma-separated names), SIGKILLed when the test ends. */
export async function daemon(t: Test, connectionString: string, subscription: string, env: Record<string, string> = {}): Promise<DaemonProcess> {
  const process = await startDaemonProcess({ connectionString, args: ['--port', 'off', '--only', subscription], env });
  t.teardown(() => process.kill('SIGKILL'));
  return process;
}

export const increasing = (list: readonly number[]): boolean => list.every((value, i) => i === 0 || value > list[i - 1]!);
