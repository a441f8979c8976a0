import {
  createPool,
  SchemaValidationError,
  type DatabasePool,
  type Interceptor,
  type DriverTypeParser,
} from 'slonik';
import pg from 'pg';

/**
 * Checks every row of a query built with sql.type(schema) against its zod schema. Without this
 * interceptor slonik validates nothing; with it a row of the wrong shape throws SchemaValidationError.
 */
export function createResultParserInterceptor(): Interceptor {
  return {
    name: 'pgrelay-result-parser',
    // Synchronous parse: our schemas have no async refinements, and the async path costs a
    // promise per row, which shows up when draining thousands of rows a second.
    transformRow: (context, query, row) => {
      const parser = context.resultParser;
      if (parser === undefined) return row;
      const result = parser.safeParse(row);
      if (!result.success) throw new SchemaValidationError(query, row, result.error.issues);
      return result.data;
    },
  };
}

/** int8 stays a string (positions exceed 2^53 in long-lived logs); timestamps become ISO strings. */
export function createTypeParsers(): DriverTypeParser[] {
  return [
    { name: 'int8', parse: (value: string) => value },
    { name: 'timestamptz', parse: (value: string) => new Date(value).toISOString() },
  ];
}

export type PoolOptions = { maximumPoolSize?: number; applicationName?: string };

/** The one pool factory: every pgrelay pool has the result parser and type parsers installed. */
export async function createPgrelayPool(connectionString: string, options: PoolOptions = {}): Promise<DatabasePool> {
  const url = new URL(connectionString);
  if (options.applicationName !== undefined && !url.searchParams.has('application_name')) {
    url.searchParams.set('application_name', options.applicationName);
  }
  return createPool(url.toString(), {
    interceptors: [createResultParserInterceptor()],
    typeParsers: createTypeParsers(),
    maximumPoolSize: options.maximumPoolSize ?? 10,
    // slonik's default runs DISCARD ALL whenever a connection goes back to the pool, i.e. after
    // nearly every query: an extra round trip that also throws away every cached PL/pgSQL plan,
    // so the next call replans fetch_batch, saga_start and friends (saga_start of 3 SQL steps went
    // from about 300 to 530 calls/s without it). pgrelay leaves no session state behind (settings
    // are SET LOCAL, locks are transaction-scoped), so there is nothing to reset.
    resetConnection: async () => {},
  });
}

/**
 * A bare `pg` pool for the client's hot paths: consume()'s loop statements (fetch, complete,
 * heartbeat, doorbell) and sagas.start. slonik's per-query machinery (pool checkout,
 * interceptors, spans, loggers) costs about 80 µs of client CPU per call where `pg` needs about
 * 40, and about 0.46 ms of latency on an idle consumer's fetch. Same timeouts as slonik's
 * defaults, which the slonik pool's connections run with; connections open on first use. An idle
 * connection that dies is dropped by the pool (its 'error' is swallowed here; the next query
 * opens a new connection). Holds up to maximumPoolSize connections beside the slonik pool's.
 */
export function createBarePool(connectionString: string, options: PoolOptions = {}): pg.Pool {
  const pool = new pg.Pool({
    connectionString,
    max: options.maximumPoolSize ?? 10,
    connectionTimeoutMillis: 5000,
    idleTimeoutMillis: 5000,
    statement_timeout: 60000,
    idle_in_transaction_session_timeout: 60000,
    application_name: options.applicationName ?? 'pgrelay-direct',
  });
  pool.on('error', () => {});
  return pool;
}

/** The client's bare pool (createBarePool), opened on first use and closed by end(). */
export type LeanQuery = {
  /** The pool itself, opened if need be (consume's loops take it). */
  pool(): pg.Pool;
  /** Runs one parameterised statement in its own transaction and returns its rows. */
  rows<R extends pg.QueryResultRow>(text: string, values: unknown[]): Promise<R[]>;
  end(): Promise<void>;
};

export function createLeanQuery(connectionString: string, options: PoolOptions = {}): LeanQuery {
  let pool: pg.Pool | undefined;
  let ended = false;
  const open = (): pg.Pool => {
    if (ended) throw new Error('pgrelay client: end() was called');
    return (pool ??= createBarePool(connectionString, options));
  };
  return {
    pool: open,
    async rows<R extends pg.QueryResultRow>(text: string, values: unknown[]): Promise<R[]> {
      return (await open().query<R>(text, values)).rows;
    },
    async end(): Promise<void> {
      ended = true;
      if (pool !== undefined) await pool.end();
    },
  };
}
