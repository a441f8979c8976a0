/**
 * Errors raised by pgrelay's SQL functions carry an SQLSTATE of class PR (see README, "Errors").
 * mapError turns the driver's error into one of these classes, keyed by SQLSTATE, never by text.
 */
export class PgrelayError extends Error {
  readonly sqlState: string;
  /** The argument the database named as wrong (the error's COLUMN field), if any. */
  readonly argument: string | undefined;
  constructor(message: string, sqlState: string, argument?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.sqlState = sqlState;
    this.argument = argument;
  }
}

export class InvalidArgumentError extends PgrelayError {}
export class PayloadTooLargeError extends PgrelayError {}
export class NotFoundError extends PgrelayError {}
export class ConcurrencyError extends PgrelayError {}
export class LeaseLostError extends PgrelayError {}
export class IdempotencyConflictError extends PgrelayError {}
export class InvalidStateError extends PgrelayError {}

type ErrorClass = new (message: string, sqlState: string, argument?: string, options?: { cause?: unknown }) => PgrelayError;

/** The SQLSTATEs pgrelay raises. Stable: documented in the README and relied on by clients. */
export const SQLSTATES: Readonly<Record<string, { name: string; errorClass: ErrorClass }>> = {
  PR001: { name: 'invalid_argument', errorClass: InvalidArgumentError },
  PR002: { name: 'payload_too_large', errorClass: PayloadTooLargeError },
  PR003: { name: 'not_found', errorClass: NotFoundError },
  PR004: { name: 'concurrency_conflict', errorClass: ConcurrencyError },
  PR005: { name: 'lease_lost', errorClass: LeaseLostError },
  PR006: { name: 'idempotency_conflict', errorClass: IdempotencyConflictError },
  PR007: { name: 'invalid_state', errorClass: InvalidStateError },
};

type DatabaseErrorLike = { code?: unknown; column?: unknown; message?: unknown; cause?: unknown };

function findDatabaseError(error: unknown): DatabaseErrorLike | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 5 && current !== null && typeof current === 'object'; depth += 1) {
    const candidate = current as DatabaseErrorLike;
    if (typeof candidate.code === 'string' && candidate.code in SQLSTATES) return candidate;
    current = candidate.cause;
  }
  return undefined;
}

/** Returns a PgrelayError subclass for pgrelay's SQLSTATEs, or the error unchanged. */
export function mapError(error: unknown): unknown {
  if (error instanceof PgrelayError) return error;
  const database = findDatabaseError(error);
  if (database === undefined) return error;
  const code = database.code as string;
  const entry = SQLSTATES[code]!;
  const argument = typeof database.column === 'string' ? database.column : undefined;
  return new entry.errorClass(String(database.message), code, argument, { cause: error });
}

/** Runs fn and rethrows any database error as its PgrelayError class. */
export async function mapErrors<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    throw mapError(error);
  }
}
