// Grouping of concurrent client.sagas.start calls (lean path only: a client made from a
// connection string, outside transaction()).
//
// Each start is queued; a group statement goes out whenever one of `maxInFlight` slots is free,
// carrying its share of what is queued then (shared among the free slots; at most maxGroupSize
// starts, and at most MAX_GROUP_BYTES of input JSON). No timer: a lone caller finds a slot free and its start goes out at once, as the same
// one-row statement as without grouping; under load, starts that arrive while the slots are busy
// wait for the next free slot and go out together: one statement, one transaction, one commit for
// all their sagas (and their SQL steps), like startMany.
//
// A group that fails with an ERROR (the server rolled its transaction back: nothing of it was
// written) is retried start by start, each alone, so each caller gets the result or the error it
// would have had alone. Any other failure (a lost connection, a FATAL) leaves the outcome unknown,
// as it would for a lone start: every caller of the group gets that error, and nothing is retried
// (a retried start without an idempotency key could otherwise run twice).
import type { LeanQuery } from './pool.js';
import { idSchema } from './schemas.js';

/** sagaStartGrouping: true (the default), false (one statement per start), or limits. */
export type SagaStartGroupingOption =
  | boolean
  | {
      /** Most starts in one statement. Default 100. */
      maxGroupSize?: number;
      /**
       * Group statements in flight at once (each holds one connection of the client's bare pool).
       * Starts that arrive while all are busy wait for the next free one and go out together.
       * Default 2 (at most maximumPoolSize). Each keeps one backend busy: more uses more server cores
       * at once, in smaller groups (raise it for a server with many cores).
       */
      maxInFlight?: number;
    };

export type SagaStartGrouping = { maxGroupSize: number; maxInFlight: number };

export const DEFAULT_MAX_GROUP_SIZE = 100;
export const DEFAULT_MAX_IN_FLIGHT = 2;
/** A group stops growing past this much input JSON text (a single larger start still goes, alone). */
const MAX_GROUP_BYTES = 1 << 20;

/** The effective limits, or undefined when grouping is off. Throws on a bad value. */
export function sagaStartGrouping(option: SagaStartGroupingOption | undefined, poolSize: number): SagaStartGrouping | undefined {
  if (option === false) return undefined;
  const given = option === true || option === undefined ? {} : option;
  const check = (name: string, value: number | undefined, fallback: number, max: number): number => {
    if (value === undefined) return fallback;
    if (!Number.isInteger(value) || value < 1 || value > max) {
      throw new RangeError(`pgrelay client: sagaStartGrouping.${name} must be an integer from 1 to ${max}, got ${String(value)}`);
    }
    return value;
  };
  return {
    maxGroupSize: check('maxGroupSize', given.maxGroupSize, DEFAULT_MAX_GROUP_SIZE, 10000),
    maxInFlight: check('maxInFlight', given.maxInFlight, Math.min(DEFAULT_MAX_IN_FLIGHT, Math.max(1, poolSize)), 1000),
  };
}

type Pending = {
  sagaType: string;
  input: string; // JSON text
  key: string | null;
  resolve: (id: string) => void;
  reject: (error: unknown) => void;
};

const START_ONE = 'SELECT pgrelay.saga_start($1, $2::jsonb, $3) AS id';

// One row per start. Run keyed starts first, ordered by (type, key), then the others in arrival
// order: two concurrent groups that share idempotency keys then take the keys' index entries in
// the same order, instead of deadlocking on them (which would cost both a retry alone).
// OFFSET 0 keeps the ordered subquery as it is, so saga_start runs in that order. Each input comes
// wrapped in a one-element array: jsonb_to_recordset makes a JSON null SQL NULL, `-> 0` keeps it
// the jsonb null that a lone start passes.
const START_GROUP = `
SELECT t.n::int AS n, pgrelay.saga_start(t.saga_type, t.input -> 0, t.key) AS id
FROM (SELECT r.n, r.saga_type, r.input, r.key
      FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (saga_type text, input jsonb, key text)) WITH ORDINALITY AS r(saga_type, input, key, n)
      ORDER BY r.key IS NULL, CASE WHEN r.key IS NOT NULL THEN r.saga_type END, r.key, r.n
      OFFSET 0) AS t`;

/** The id saga_start returned, checked as every other client call checks ids (schemas.ts). */
const checkedId = (value: unknown): string => idSchema.parse({ id: value }).id;

/** One start on its own: the statement an ungrouped client sends. */
export async function startOne(lean: LeanQuery, sagaType: string, input: string, key: string | null): Promise<string> {
  const rows = await lean.rows<{ id: unknown }>(START_ONE, [sagaType, input, key]);
  if (rows.length !== 1) throw new Error(`pgrelay.saga_start returned ${rows.length} rows`);
  return checkedId(rows[0]!.id);
}

/** True for an error the server reported at ERROR severity: its transaction rolled back, the session lives on. */
function rolledBack(error: unknown): boolean {
  if (error === null || typeof error !== 'object') return false;
  const e = error as { code?: unknown; severity?: unknown };
  return typeof e.code === 'string' && e.code.length === 5 && e.severity === 'ERROR';
}

/** What `start` calls on the lean path: groups concurrent starts (see the file's comment). */
export function createSagaStartGrouper(lean: LeanQuery, limits: SagaStartGrouping) {
  const queue: Pending[] = [];
  let head = 0; // queue[head..] are waiting
  let inFlight = 0;
  let scheduled = false;

  const take = (): Pending[] => {
    // What is queued is shared among the free slots: 32 callers and 4 free slots make 4 groups of
    // 8 in flight at once, not one of 32 while 3 slots idle (and their callers, all answered at
    // once, would come back together and form one group again: a convoy that leaves the server
    // one statement at a time and its commits unoverlapped).
    const free = limits.maxInFlight - inFlight;
    const size = Math.min(limits.maxGroupSize, Math.ceil((queue.length - head) / free));
    const group: Pending[] = [];
    let bytes = 0;
    while (head < queue.length && group.length < size) {
      const next = queue[head]!;
      if (group.length > 0 && bytes + next.input.length > MAX_GROUP_BYTES) break;
      bytes += next.input.length;
      group.push(next);
      head += 1;
    }
    if (head === queue.length) {
      queue.length = 0;
      head = 0;
    } else if (head > 1024) {
      queue.splice(0, head);
      head = 0;
    }
    return group;
  };

  const runAlone = (p: Pending): Promise<void> => startOne(lean, p.sagaType, p.input, p.key).then(p.resolve, p.reject);

  const runGroup = async (group: Pending[]): Promise<void> => {
    if (group.length === 1) return runAlone(group[0]!);
    let rows: { n: number; id: unknown }[];
    try {
      const json = `[${group.map((p) => `{"saga_type":${JSON.stringify(p.sagaType)},"input":[${p.input}],"key":${JSON.stringify(p.key)}}`).join(',')}]`;
      rows = await lean.rows<{ n: number; id: unknown }>(START_GROUP, [json]);
    } catch (error) {
      if (!rolledBack(error)) {
        for (const p of group) p.reject(error);
        return;
      }
      // Nothing of the group was written: each start again, alone, for its own result or error.
      await Promise.all(group.map(runAlone));
      return;
    }
    const ids = new Array<unknown>(group.length);
    for (const row of rows) ids[row.n - 1] = row.id;
    group.forEach((p, i) => {
      try {
        p.resolve(checkedId(ids[i]));
      } catch (error) {
        p.reject(error);
      }
    });
  };

  const pump = (): void => {
    scheduled = false;
    while (inFlight < limits.maxInFlight && head < queue.length) {
      const group = take();
      inFlight += 1;
      void runGroup(group)
        // Not expected (runGroup settles every start itself), but no caller may be left waiting;
        // settling an already settled start does nothing.
        .catch((error: unknown) => group.forEach((p) => p.reject(error)))
        .finally(() => {
          inFlight -= 1;
          pump();
        });
    }
  };

  return {
    /** Queues a start; it goes out with what else is queued when a slot is free. */
    start(sagaType: string, input: string, key: string | null): Promise<string> {
      return new Promise<string>((resolve, reject) => {
        queue.push({ sagaType, input, key, resolve, reject });
        // A microtask, not a timer: starts made in the same tick (Promise.all of many) leave
        // together, and a lone start leaves as soon as this tick's code is done.
        if (!scheduled && inFlight < limits.maxInFlight) {
          scheduled = true;
          queueMicrotask(pump);
        }
      });
    },
  };
}
