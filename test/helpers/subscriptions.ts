// Small SQL helpers for the subscription tests: publish, fetch a leased batch, complete it, and
// wait for a condition with a deadline. Everything goes through real connections (pg.Client).
import type { Test } from 'tap';
import pg from 'pg';
import { createClient, type PgrelayClient } from '../../client/index.ts';
import { connect as connectClient } from './sql.ts';
import { failure, type PgError } from './errors.ts';

export { failure, type PgError };

export type Delivery = {
  subscription: string;
  partition_index: number;
  lease_token: string;
  attempt: number;
  position: string;
  xid: string;
  id: string;
  topic: string;
  key: string | null;
  type: string;
  data: unknown;
};

export type Batch = { partition: number; token: string; deliveries: Delivery[] };

/** A connection of its own, closed when t ends. */
export const connect = (t: Test, connectionString: string, name = 'subscriptions-test'): Promise<pg.Client> => connectClient(t, connectionString, name);

/** Publishes one message (in the client's current transaction, if any) and returns its position. */
export async function publish(client: pg.Client, topic: string, key: string | null, data: unknown = {}): Promise<string> {
  const { rows } = await client.query<{ id: string }>(`SELECT pgrelay.publish($1, $2, 'test.event', $3::jsonb) AS id`, [
    topic,
    key,
    JSON.stringify(data),
  ]);
  const found = await client.query<{ position: string }>(`SELECT position FROM pgrelay.messages WHERE id = $1`, [rows[0]!.id]);
  return found.rows[0]!.position;
}

/**
 * Waits until every committed message is below the read horizon. The server is shared: another
 * session's open transaction holds the horizon (and so every reader) back for a while.
 */
export async function settle(client: pg.Client): Promise<void> {
  await waitFor('the read horizon to pass every committed message', async () => {
    const { rows } = await client.query<{ ok: boolean }>(
      `SELECT pg_snapshot_xmin(pg_current_snapshot()) > coalesce((SELECT max(xid) FROM pgrelay.messages), '0') AS ok`,
    );
    return rows[0]!.ok ? true : undefined;
  }, 45_000);
}

/** One fetch_batch call, after settle() unless told not to; null when nothing is free or due. */
export async function fetchBatch(
  client: pg.Client,
  subscription: string,
  consumer: string,
  maxMessages: number | null = null,
  partition: number | null = null,
  options: { settle?: boolean } = {},
): Promise<Batch | null> {
  if (options.settle !== false) await settle(client);
  const { rows } = await client.query<Delivery>(
    `SELECT subscription, partition_index, lease_token, attempt, position, xid::text AS xid, id, topic, key, type, data
     FROM pgrelay.fetch_batch($1, $2, $3, $4)`,
    [subscription, consumer, maxMessages, partition],
  );
  if (rows.length === 0) return null;
  return { partition: rows[0]!.partition_index, token: rows[0]!.lease_token, deliveries: rows };
}

export async function completeBatch(
  client: pg.Client,
  subscription: string,
  batch: Batch,
  acked: readonly string[],
  failed: readonly string[] = [],
  errors: readonly string[] = [],
): Promise<void> {
  await client.query(`SELECT pgrelay.complete_batch($1, $2, $3, $4::bigint[], $5::bigint[], $6::text[])`, [
    subscription,
    batch.partition,
    batch.token,
    acked,
    failed,
    errors,
  ]);
}

/** Fetches and acknowledges everything deliverable now; returns the deliveries in fetch order. */
export async function drain(client: pg.Client, subscription: string, consumer = 'drainer'): Promise<Delivery[]> {
  const all: Delivery[] = [];
  for (let round = 0; round < 1000; round += 1) {
    const batch = await fetchBatch(client, subscription, consumer);
    if (batch === null) return all;
    all.push(...batch.deliveries);
    await completeBatch(client, subscription, batch, batch.deliveries.map((d) => d.position));
  }
  throw new Error(`drain(${subscription}): still delivering after 1000 batches`);
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until check returns a value (not undefined), or throws after deadlineMs. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined>, deadlineMs = 20_000): Promise<T> {
  const until = Date.now() + deadlineMs;
  for (let pause = 10; ; pause = Math.min(pause * 2, 200)) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > until) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
    await sleep(pause);
  }
}

export const positionsOf = (deliveries: readonly Delivery[]): string[] => deliveries.map((d) => d.position);
export const byPosition = (a: string, b: string): number => (BigInt(a) < BigInt(b) ? -1 : BigInt(a) > BigInt(b) ? 1 : 0);

/** pgrelay.subscribe with a consumer sink. */
export async function subscribe(client: pg.Client, name: string, topics: string[], options: Record<string, unknown> = {}): Promise<void> {
  await client.query(`SELECT pgrelay.subscribe($1, $2::text[], '{"type":"consumer"}', $3::jsonb)`, [name, topics, JSON.stringify(options)]);
}

export const count = async (client: pg.Client, text: string, params: unknown[] = []): Promise<number> =>
  Number((await client.query<{ n: string }>(text, params)).rows[0]!.n);

/** A typed client on a small pool, ended when t ends. */
export async function newClient(t: Test, connectionString: string): Promise<PgrelayClient> {
  const client = await createClient({ connectionString, maximumPoolSize: 2 });
  t.teardown(() => client.end());
  return client;
}
