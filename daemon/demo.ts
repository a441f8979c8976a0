import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import { createClient, migrate } from '../client/index.js';
import { startEmbeddedPostgres, type EmbeddedDatabase } from './embedded.js';
import { startDaemon } from './main.js';

export type DemoOptions = { connectionString?: string; follow?: boolean; orders?: number; producers?: number; print?: (line: string) => void };

type Received = { key: string; type: string; position: bigint; id: string };

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function readBody(request: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    request.on('error', reject);
  });
}

/** A local webhook receiver that records the CloudEvents it is sent. */
async function startReceiver(): Promise<{ url: string; received: Received[]; close(): Promise<void> }> {
  const received: Received[] = [];
  const server = createServer(async (request, response) => {
    const event = JSON.parse(await readBody(request)) as { id: string; subject: string; type: string; pgrelayposition: string };
    received.push({ key: event.subject, type: event.type, position: BigInt(event.pgrelayposition), id: event.id });
    response.writeHead(204).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/events`,
    received,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** Concurrent producers: each order's events in one transaction per event, some rolled back. */
async function produce(connectionString: string, orders: number, producers: number): Promise<{ committed: Set<string>; rolledBack: number }> {
  const committed = new Set<string>();
  let rolledBack = 0;
  let next = 0;
  const producer = async (): Promise<void> => {
    const client = new pg.Client({ connectionString, application_name: 'pgrelay-demo-producer' });
    await client.connect();
    try {
      while (next < orders) {
        const order = `order-${String(next).padStart(4, '0')}`;
        next += 1;
        for (const type of ['order.created', 'order.paid', 'order.shipped']) {
          await client.query('BEGIN');
          const { rows } = await client.query<{ id: string }>(
            `SELECT pgrelay.publish('orders', $1, $2, $3, '{"source":"demo"}', lock_key => true) AS id`,
            [order, type, { order, amount: 10 + (next % 90), at: new Date().toISOString() }],
          );
          await sleep(Math.random() * 5);
          if (Math.random() < 0.15) {
            await client.query('ROLLBACK');
            rolledBack += 1;
          } else {
            await client.query('COMMIT');
            committed.add(rows[0]!.id);
          }
        }
      }
    } finally {
      await client.end();
    }
  };
  await Promise.all(Array.from({ length: producers }, producer));
  return { committed, rolledBack };
}

/**
 * `pgrelay demo`: installs pgrelay (on an embedded PostgreSQL 18 unless DATABASE_URL is set),
 * subscribes a stdout sink and a local webhook, publishes sample order events from concurrent
 * producers (some transactions rolled back), relays them and prints what arrived and the lag.
 */
export async function runDemo(options: DemoOptions = {}): Promise<{ ok: boolean }> {
  const print = options.print ?? ((line: string) => process.stderr.write(`${line}\n`));
  let embedded: EmbeddedDatabase | undefined;
  let connectionString = options.connectionString;
  if (connectionString === undefined) {
    print('pgrelay demo: starting an embedded PostgreSQL 18 (set DATABASE_URL to use your own server)');
    embedded = await startEmbeddedPostgres(print);
    connectionString = embedded.connectionString;
  }
  const receiver = await startReceiver();
  const client = await createClient({ connectionString });
  let daemon: Awaited<ReturnType<typeof startDaemon>> | undefined;
  try {
    const installed = await migrate({ connectionString });
    print(`pgrelay demo: installed pgrelay ${await client.version()} (${installed.migrations.length} migrations applied, ${installed.functions} function files)`);
    await client.subscriptions.subscribe('demo-webhook', ['orders'], { type: 'webhook', url: receiver.url }, { partitions: 2, start: 'latest' });
    await client.subscriptions.subscribe('demo-stdout', ['orders'], { type: 'stdout' }, { start: 'latest' });
    daemon = await startDaemon({ connectionString, port: 0, only: ['demo-webhook', 'demo-stdout'], idlePollMs: 500 });
    print(`pgrelay demo: relay daemon running (health and metrics on http://127.0.0.1:${daemon.port}/healthz, /metrics)`);

    const orders = options.orders ?? 40;
    const producers = options.producers ?? 4;
    const started = Date.now();
    const { committed, rolledBack } = await produce(connectionString, orders, producers);
    print(`pgrelay demo: ${producers} producers committed ${committed.size} events and rolled back ${rolledBack} in ${Date.now() - started} ms`);

    const deadline = Date.now() + 30_000;
    while (new Set(receiver.received.map((r) => r.id)).size < committed.size && Date.now() < deadline) await sleep(50);
    const lag = await client.subscriptions.lag();

    const ids = new Set(receiver.received.map((r) => r.id));
    const missing = [...committed].filter((id) => !ids.has(id)).length;
    const phantom = [...ids].filter((id) => !committed.has(id)).length;
    const duplicates = receiver.received.length - ids.size;
    const byKey = new Map<string, bigint[]>();
    for (const r of receiver.received) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r.position]);
    const outOfOrder = [...byKey.values()].filter((positions) => positions.some((p, i) => i > 0 && p < positions[i - 1]!)).length;
    print('');
    print(`pgrelay demo: webhook received ${ids.size} of ${committed.size} committed events in ${Date.now() - started} ms`);
    print(`  missing: ${missing}, duplicates: ${duplicates}, rolled-back events delivered: ${phantom}, orders delivered out of order: ${outOfOrder}`);
    for (const row of lag) {
      print(`  ${row.subscription_name}[${row.partition_index}]: delivered ${row.delivered}, pending ${row.pending}, lag ${row.lag_seconds.toFixed(3)} s, retrying ${row.retrying}, dead ${row.dead}`);
    }
    const ok = missing === 0 && phantom === 0 && outOfOrder === 0 && duplicates === 0;
    print(ok ? 'pgrelay demo: OK: every committed event delivered once per subscription, in order per order id' : 'pgrelay demo: FAILED');
    if (options.follow) {
      print('pgrelay demo: --follow: relay keeps running; publish more with `pgrelay publish orders ...`; Ctrl-C to stop');
      print(`  DATABASE_URL=${connectionString}`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
    }
    return { ok };
  } finally {
    await daemon?.stop();
    await client.end();
    await receiver.close();
    await embedded?.stop();
  }
}
