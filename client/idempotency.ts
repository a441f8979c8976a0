import { createHash } from 'node:crypto';
import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { InvalidStateError, mapErrors } from './errors.js';

/** JSON text as JSON.stringify makes it (Dates via toJSON, undefined as null). */
const toJsonText = (value: unknown): string => JSON.stringify(value) ?? 'null';
const voidSchema = z.object({}).passthrough();

export type IdempotencyStatus = 'new' | 'in_progress' | 'completed';

const beginSchema = z.object({ status: z.enum(['new', 'in_progress', 'completed']), response: z.unknown() });
const abandonSchema = z.object({ abandoned: z.boolean() });
const countSchema = z.object({ n: z.string() });

export type IdempotencyBeginOptions = {
  /** Keys are unique per scope; default 'default'. */
  scope?: string;
  /** How long the owner of a 'new' key holds it before the next caller may take it over. Default 60. */
  lockSeconds?: number;
  /** How long a key lives after its creation (a PostgreSQL interval). Default '24 hours'. */
  ttl?: string;
};

/** response: the stored response when status is 'completed', else null. */
export type IdempotencyBegin = { status: IdempotencyStatus; response: unknown };

/** The work is still owned by another caller after the helper's timeout. */
export class IdempotencyInProgressError extends InvalidStateError {}

/**
 * A JSON text of value with object keys sorted at every depth, so equal requests give equal text
 * whatever their key order. Follows JSON.stringify otherwise (toJSON, undefined members dropped,
 * undefined in arrays as null); bigint and other non-JSON values throw a TypeError.
 */
export function stableStringify(value: unknown): string {
  const encode = (current: unknown, inArray: boolean): string | undefined => {
    let value = current;
    if (value !== null && typeof value === 'object' && typeof (value as { toJSON?: unknown }).toJSON === 'function') {
      value = (value as { toJSON: () => unknown }).toJSON();
    }
    if (value === undefined || typeof value === 'function' || typeof value === 'symbol') {
      return inArray ? 'null' : undefined;
    }
    if (typeof value === 'bigint') throw new TypeError('stableStringify: a bigint is not JSON; pass it as a string');
    if (value === null || typeof value !== 'object') return JSON.stringify(value);
    if (Array.isArray(value)) return `[${value.map((item) => encode(item, true)).join(',')}]`;
    const members = Object.keys(value)
      .sort()
      .flatMap((key) => {
        const encoded = encode((value as Record<string, unknown>)[key], false);
        return encoded === undefined ? [] : [`${JSON.stringify(key)}:${encoded}`];
      });
    return `{${members.join(',')}}`;
  };
  return encode(value, false) ?? 'null';
}

/** The fingerprint the idempotent() helper stores for a request: sha256 (hex) of its stable JSON. */
export function requestFingerprint(request: unknown): string {
  return createHash('sha256').update(stableStringify(request)).digest('hex');
}

/**
 * pgrelay.idempotency_begin: call in its own transaction (e.g. on the pool) before doing the work.
 * 'new': you own the key, do the work then complete (or abandon); 'in_progress': another caller
 * is working, retry later; 'completed': response is the stored response. The same key with another
 * fingerprint throws IdempotencyConflictError.
 */
export function idempotencyBegin(
  connection: CommonQueryMethods,
  key: string,
  fingerprint: string,
  options: IdempotencyBeginOptions = {},
): Promise<IdempotencyBegin> {
  return mapErrors(async () => {
    const row = await connection.one(sql.type(beginSchema)`
      SELECT status, response
      FROM pgrelay.idempotency_begin(${key}, ${fingerprint}, ${options.scope ?? 'default'},
                                     ${options.lockSeconds ?? 60}, ${options.ttl ?? '24 hours'}::interval)`);
    return { status: row.status, response: row.response ?? null };
  });
}

/** pgrelay.idempotency_complete: store the response of the work (as JSON.stringify makes it; undefined as null). */
export function idempotencyComplete(connection: CommonQueryMethods, key: string, response: unknown, options: { scope?: string } = {}): Promise<void> {
  return mapErrors(async () => {
    await connection.query(sql.type(voidSchema)`
      SELECT pgrelay.idempotency_complete(${key}, ${toJsonText(response)}::jsonb, ${options.scope ?? 'default'})`);
  });
}

/** pgrelay.idempotency_abandon: the work failed, forget the in-progress key. True if there was one. */
export function idempotencyAbandon(connection: CommonQueryMethods, key: string, options: { scope?: string } = {}): Promise<boolean> {
  return mapErrors(() =>
    connection.oneFirst(sql.type(abandonSchema)`
      SELECT coalesce(pgrelay.idempotency_abandon(${key}, ${options.scope ?? 'default'}), false) AS abandoned`),
  );
}

/** pgrelay.idempotency_expire: delete expired keys. Returns how many (a decimal string). */
export function idempotencyExpire(connection: CommonQueryMethods): Promise<string> {
  return mapErrors(() => connection.oneFirst(sql.type(countSchema)`SELECT pgrelay.idempotency_expire()::text AS n`));
}

export type IdempotentOptions<T> = IdempotencyBeginOptions & {
  /** How long a duplicate waits for the owner to complete. Default 30,000 ms. */
  timeoutMs?: number;
  /** First poll interval of a waiting duplicate, doubled up to maxPollMs. Defaults 20 and 1,000 ms. */
  pollMs?: number;
  maxPollMs?: number;
  /** Validates a stored response before it is returned (without it, it is returned as T unchecked). */
  schema?: z.ZodType<T, z.ZodTypeDef, unknown>;
};

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs fn at most once per key: the first caller runs it and stores its result (as JSON) as the
 * response; duplicates, concurrent or later, wait for it and return the stored response without
 * running fn. If fn throws, the key is abandoned (a later call may try again) and the error rethrown.
 * The request's fingerprint (sha256 of its stable JSON) must match: the same key for a different
 * request throws IdempotencyConflictError. A duplicate still waiting after timeoutMs throws
 * IdempotencyInProgressError. fn should finish within lockSeconds: after that the key passes
 * to the next caller. begin runs on `connection` in its own statement: pass a pool (not a
 * transaction) so duplicates on other connections see the key at once.
 */
export async function idempotent<T>(
  connection: CommonQueryMethods,
  key: string,
  request: unknown,
  fn: () => Promise<T> | T,
  options: IdempotentOptions<T> = {},
): Promise<T> {
  const fingerprint = requestFingerprint(request);
  const scope = { scope: options.scope ?? 'default' };
  const timeoutMs = options.timeoutMs ?? 30_000;
  const maxPollMs = options.maxPollMs ?? 1_000;
  const deadline = Date.now() + timeoutMs;
  let pollMs = options.pollMs ?? 20;
  for (;;) {
    const begun = await idempotencyBegin(connection, key, fingerprint, options);
    if (begun.status === 'completed') {
      return options.schema === undefined ? (begun.response as T) : options.schema.parse(begun.response);
    }
    if (begun.status === 'new') {
      let result: T;
      try {
        result = await fn();
      } catch (error) {
        await idempotencyAbandon(connection, key, scope).catch(() => undefined);
        throw error;
      }
      await idempotencyComplete(connection, key, result, scope);
      return result;
    }
    if (Date.now() >= deadline) {
      throw new IdempotencyInProgressError(
        `idempotent: argument key ${JSON.stringify(key)} is still in progress in another caller after ${timeoutMs} ms`,
        'PR007',
        'key',
      );
    }
    await sleep(Math.min(pollMs, Math.max(1, deadline - Date.now())));
    pollMs = Math.min(pollMs * 2, maxPollMs);
  }
}

export function idempotencyMethods(connection: CommonQueryMethods) {
  return {
    begin: (key: string, fingerprint: string, options: IdempotencyBeginOptions = {}) => idempotencyBegin(connection, key, fingerprint, options),
    complete: (key: string, response: unknown, options: { scope?: string } = {}) => idempotencyComplete(connection, key, response, options),
    abandon: (key: string, options: { scope?: string } = {}) => idempotencyAbandon(connection, key, options),
    expire: () => idempotencyExpire(connection),
  };
}
export type IdempotencyMethods = ReturnType<typeof idempotencyMethods>;
