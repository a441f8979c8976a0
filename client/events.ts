import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { InvalidArgumentError, mapErrors } from './errors.js';

/** An event to append: its type, its data (JSON) and optional metadata (a JSON object). */
export type EventInput = { type: string; data: unknown; metadata?: Record<string, unknown> };

/**
 * What the stream must look like for an append to go through: 'any' (no check), 'no_stream' (the
 * stream must not exist yet, i.e. version 0) or an exact version (number, bigint or decimal string).
 * A mismatch throws ConcurrencyError and writes nothing.
 */
export type ExpectedVersion = 'any' | 'no_stream' | number | bigint | string;

/** One event of a stream. version and position are decimal strings (bigint-safe). */
export const streamEventSchema = z.object({
  version: z.string().regex(/^\d+$/),
  position: z.string().regex(/^\d+$/),
  id: z.string().uuid(),
  type: z.string(),
  data: z.unknown(),
  metadata: z.record(z.unknown()),
  created_at: z.string(),
});
export type StreamEvent = z.infer<typeof streamEventSchema>;

const versionSchema = z.object({ version: z.string().regex(/^\d+$/) });
const foldSchema = z.object({ version: z.string().regex(/^\d+$/), state: z.unknown() });

/** JSON text as JSON.stringify makes it (Dates via toJSON, undefined members dropped). */
const toJsonText = (value: unknown): string => JSON.stringify(value) ?? 'null';

/** The SQL expected_version: NULL for any, else a decimal string. Non-integers are refused here. */
function expectedVersionParameter(expected: ExpectedVersion | undefined): string | null {
  if (expected === undefined || expected === 'any') return null;
  if (expected === 'no_stream') return '0';
  if (typeof expected === 'bigint') return expected.toString();
  if (typeof expected === 'number' ? Number.isSafeInteger(expected) : /^-?\d{1,19}$/.test(expected)) return String(expected);
  throw new InvalidArgumentError(
    `pgrelay.stream_append: argument expected_version must be 'any', 'no_stream' or a whole version number, got ${JSON.stringify(String(expected))}`,
    'PR001',
    'expected_version',
  );
}

/** A reducer given by name ('public.apply_order') gets the reducer signature appended. */
const withSignature = (name: string, signature: string): string => (name.includes('(') ? name : `${name}${signature}`);

const eventColumns = sql.fragment`version::text AS version, position::text AS position, id, type, data, metadata, created_at`;

export type ReadStreamOptions = { fromVersion?: number | bigint | string; maxCount?: number };
export type FoldOptions<S> = { useSnapshot?: boolean; schema?: z.ZodType<S, z.ZodTypeDef, unknown> };

export function streamMethods(connection: CommonQueryMethods) {
  return {
    /**
     * Appends events to the (topic, key) stream (pgrelay.stream_append) and returns its new version.
     * The events are ordinary log messages, with stream versions following without gaps.
     */
    append: (topic: string, key: string, events: readonly EventInput[], options: { expectedVersion?: ExpectedVersion } = {}) =>
      mapErrors(async () => {
        const expected = expectedVersionParameter(options.expectedVersion);
        const payload = events.map((event) => ({ type: event.type, data: event.data ?? null, metadata: event.metadata ?? {} }));
        return connection.oneFirst(sql.type(versionSchema)`
          SELECT pgrelay.stream_append(${topic}, ${key}, ${toJsonText(payload)}::jsonb, ${expected}::bigint)::text AS version`);
      }),
    /** Events from fromVersion (default 1) on, in version order, at most maxCount (default 1000). */
    read: (topic: string, key: string, options: ReadStreamOptions = {}) =>
      mapErrors(async () => [
        ...(await connection.any(sql.type(streamEventSchema)`
          SELECT ${eventColumns}
          FROM pgrelay.stream_read(${topic}, ${key}, ${String(options.fromVersion ?? 1)}::bigint, ${options.maxCount ?? 1000})`)),
      ]),
    /** The last event of the stream; null when there is no such stream. */
    last: (topic: string, key: string) =>
      mapErrors(() => connection.maybeOne(sql.type(streamEventSchema)`SELECT ${eventColumns} FROM pgrelay.stream_last(${topic}, ${key})`)),
    /** The stream's version: '0' when there is no such stream. */
    version: (topic: string, key: string) =>
      mapErrors(() => connection.oneFirst(sql.type(versionSchema)`SELECT pgrelay.stream_version(${topic}, ${key})::text AS version`)),
    /**
     * Folds the stream in SQL with reducer, a function (state jsonb, event jsonb) RETURNS jsonb
     * ('schema.name' or a full 'schema.name(jsonb, jsonb)'), from the latest snapshot unless
     * useSnapshot is false. schema validates the state and gives its type (without it, the state is
     * returned unchecked, typed like initial).
     */
    fold: <I, S = I>(topic: string, key: string, reducer: string, initial: I, options: FoldOptions<S> = {}): Promise<{ version: string; state: S }> =>
      mapErrors(async () => {
        const folded = await connection.one(sql.type(foldSchema)`
          SELECT f ->> 'version' AS version, f -> 'state' AS state
          FROM pgrelay.stream_fold(${topic}, ${key}, ${withSignature(reducer, '(jsonb, jsonb)')}::regprocedure,
                                   ${toJsonText(initial)}::jsonb, ${options.useSnapshot ?? true}) AS f`);
        const state = options.schema === undefined ? (folded.state as S) : options.schema.parse(folded.state);
        return { version: folded.version, state };
      }),
    /** Folds the stream (from its snapshot) and stores the state as its new snapshot. Returns its version. */
    snapshot: <S>(topic: string, key: string, reducer: string, initial: S) =>
      mapErrors(() =>
        connection.oneFirst(sql.type(versionSchema)`
          SELECT pgrelay.stream_snapshot(${topic}, ${key}, ${withSignature(reducer, '(jsonb, jsonb)')}::regprocedure,
                                         ${toJsonText(initial)}::jsonb)::text AS version`),
      ),
  };
}
export type StreamMethods = ReturnType<typeof streamMethods>;

/** A TypeScript reducer for one event type: data is the event's data (parsed, with defineEvent's on()). */
export type EventReducer<S> = (state: S, data: unknown, event: StreamEvent) => S;

/** An event made by a definition: its type literal and its validated data. */
export type TypedEvent<Type extends string, Data> = { type: Type; data: Data; metadata?: Record<string, unknown> };

/**
 * An event type with a zod schema for its data: call it to make a validated event to append,
 * parse() a stored event's data, is() to test a type, on() to write a reducer for aggregate().
 */
export type EventDefinition<Type extends string, Schema extends z.ZodTypeAny> = {
  (data: z.input<Schema>, metadata?: Record<string, unknown>): TypedEvent<Type, z.output<Schema>>;
  readonly type: Type;
  readonly schema: Schema;
  is(event: { type: string }): boolean;
  /** The event's data, validated; throws if its type is another or its data does not match. */
  parse(event: { type: string; data?: unknown }): z.output<Schema>;
  /** A reducer for aggregate({ events }) that receives the validated data. */
  on<S>(reduce: (state: S, data: z.output<Schema>, event: StreamEvent) => S): EventReducer<S>;
};

export function defineEvent<Type extends string, Schema extends z.ZodTypeAny>(type: Type, schema: Schema): EventDefinition<Type, Schema> {
  const parse = (event: { type: string; data?: unknown }): z.output<Schema> => {
    if (event.type !== type) throw new TypeError(`defineEvent(${JSON.stringify(type)}): got an event of type ${JSON.stringify(event.type)}`);
    return schema.parse(event.data) as z.output<Schema>;
  };
  const create = (data: z.input<Schema>, metadata?: Record<string, unknown>): TypedEvent<Type, z.output<Schema>> => ({
    type,
    data: schema.parse(data) as z.output<Schema>,
    ...(metadata === undefined ? {} : { metadata }),
  });
  return Object.assign(create, {
    type,
    schema,
    is: (event: { type: string }) => event.type === type,
    parse,
    on:
      <S>(reduce: (state: S, data: z.output<Schema>, event: StreamEvent) => S): EventReducer<S> =>
      (state, _data, event) =>
        reduce(state, parse(event), event),
  });
}

export type AggregateOptions<S> = {
  topic: string;
  /** The state before the first event; cloned (structuredClone) for every fold. */
  initial: S;
  /** A reducer per event type: return the next state (do not mutate it). */
  events: Record<string, EventReducer<S>>;
  /** An event type without a reducer: 'throw' (default) or 'ignore'. */
  unknownEvents?: 'throw' | 'ignore';
  /** Events read per query by load(); default 1000. */
  pageSize?: number;
};

export type Aggregate<S> = {
  readonly topic: string;
  /** Folds events (in version order) onto state (default: a copy of initial). */
  fold(events: readonly StreamEvent[], state?: S): S;
  /** Reads the key's stream and folds it in TypeScript: the state and the version it is at ('0': no stream). */
  load(client: { streams: StreamMethods }, key: string): Promise<{ state: S; version: string }>;
  /** Appends events, normally with the version load() returned: ConcurrencyError if the stream moved on. */
  append(client: { streams: StreamMethods }, key: string, events: readonly EventInput[], expectedVersion?: ExpectedVersion): Promise<string>;
};

/** An event-sourced aggregate folded in TypeScript (for folding in SQL see streams.fold). */
export function aggregate<S>(options: AggregateOptions<S>): Aggregate<S> {
  const pageSize = options.pageSize ?? 1000;
  const fold = (events: readonly StreamEvent[], state: S = structuredClone(options.initial)): S => {
    let current = state;
    for (const event of events) {
      const reduce = Object.hasOwn(options.events, event.type) ? options.events[event.type] : undefined;
      if (reduce === undefined) {
        if (options.unknownEvents === 'ignore') continue;
        throw new TypeError(`aggregate(${options.topic}): no reducer for event type ${JSON.stringify(event.type)} (version ${event.version})`);
      }
      current = reduce(current, event.data, event);
    }
    return current;
  };
  return {
    topic: options.topic,
    fold,
    load: async (client, key) => {
      let state = structuredClone(options.initial);
      let version = '0';
      for (;;) {
        const page = await client.streams.read(options.topic, key, { fromVersion: BigInt(version) + 1n, maxCount: pageSize });
        state = fold(page, state);
        if (page.length > 0) version = page[page.length - 1]!.version;
        if (page.length < pageSize) return { state, version };
      }
    },
    append: (client, key, events, expectedVersion) => client.streams.append(options.topic, key, events, { expectedVersion: expectedVersion ?? 'any' }),
  };
}
