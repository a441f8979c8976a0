import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { mapErrors } from './errors.js';
import { idSchema, idsSchema, messageSchema, START, type Cursor, type Message, type PublishInput, type PublishOptions } from './schemas.js';

type Jsonb = Parameters<typeof sql.jsonb>[0];

/** Appends one message in the connection's transaction (or its own, outside one). Returns its id. */
export async function publish(connection: CommonQueryMethods, input: PublishInput, options: PublishOptions = {}): Promise<string> {
  return mapErrors(() =>
    connection.oneFirst(sql.type(idSchema)`
      SELECT pgrelay.publish(
        ${input.topic}, ${input.key ?? null}, ${input.type}, ${sql.jsonb(input.data as Jsonb)},
        ${sql.jsonb((input.metadata ?? {}) as Jsonb)}, ${options.lockKey ?? false}
      ) AS id`),
  );
}

/** Appends many messages in one call, positions in array order. Returns their ids in order. */
export async function publishMany(
  connection: CommonQueryMethods,
  inputs: readonly PublishInput[],
  options: PublishOptions = {},
): Promise<string[]> {
  const messages = inputs.map((input) => ({
    topic: input.topic,
    key: input.key ?? null,
    type: input.type,
    data: input.data,
    metadata: input.metadata ?? {},
  }));
  return mapErrors(() =>
    connection.oneFirst(sql.type(idsSchema)`
      SELECT pgrelay.publish_batch(${sql.jsonb(messages as Jsonb)}, ${options.lockKeys ?? options.lockKey ?? false}) AS ids`),
  );
}

export type ReadOptions = {
  maxMessages?: number;
  topics?: readonly string[];
  partition?: number;
  partitions?: number;
};

const readRowSchema = messageSchema.extend({});

/** Greatest (xid, position) of a batch: where the next read starts. */
export function cursorAfter(cursor: Cursor, messages: readonly Message[]): Cursor {
  let next = cursor;
  for (const message of messages) {
    const xid = BigInt(message.xid);
    const position = BigInt(message.position);
    if (xid > BigInt(next.xid) || (xid === BigInt(next.xid) && position > BigInt(next.position))) {
      next = { xid: message.xid, position: message.position };
    }
  }
  return next;
}

/** The next gapless batch after cursor, in per-key commit order, with the cursor to read from next. */
export async function read(
  connection: CommonQueryMethods,
  cursor: Cursor = START,
  options: ReadOptions = {},
): Promise<{ messages: Message[]; cursor: Cursor }> {
  const topics = options.topics === undefined ? null : sql.array([...options.topics], 'text');
  const rows = await mapErrors(() =>
    connection.any(sql.type(readRowSchema)`
      SELECT position, xid::text AS xid, id, topic, key, type, data, metadata, created_at
      FROM pgrelay.read(${cursor.xid}::xid8, ${cursor.position}::bigint, ${options.maxMessages ?? 100},
                        ${topics}, ${options.partition ?? 0}, ${options.partitions ?? 1})`),
  );
  const messages = [...rows] as Message[];
  return { messages, cursor: cursorAfter(cursor, messages) };
}

export const versionSchema = z.object({ version: z.string() });

export const stallSchema = z.object({
  horizon_xid: z.string(),
  seconds: z.number().nullable(),
  pid: z.number().nullable(),
  application_name: z.string().nullable(),
  state: z.string().nullable(),
  prepared_gid: z.string().nullable(),
});
export type HorizonStall = z.infer<typeof stallSchema>;

/** What holds readers' horizon back: the oldest open transactions with an xid (or prepared ones). */
export async function horizonStall(connection: CommonQueryMethods): Promise<HorizonStall[]> {
  return [
    ...(await mapErrors(() =>
      connection.any(sql.type(stallSchema)`
        SELECT horizon_xid::text AS horizon_xid, seconds, pid, application_name, state, prepared_gid
        FROM pgrelay.log_stall() ORDER BY seconds DESC NULLS LAST`),
    )),
  ];
}
