import {
  createPool,
  SchemaValidationError,
  type DatabasePool,
  type Interceptor,
  type DriverTypeParser,
} from 'slonik';

/**
 * Checks every row of a query built with sql.type(schema) against its zod schema. Without this
 * interceptor slonik validates nothing; with it a row of the wrong shape throws SchemaValidationError.
 */
export function createResultParserInterceptor(): Interceptor {
  return {
    name: 'pgrelay-result-parser',
    transformRowAsync: async (context, query, row) => {
      const parser = context.resultParser;
      if (parser === undefined) return row;
      const result = await parser.safeParseAsync(row);
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
    // slonik's default runs DISCARD ALL after every query, which (besides a round trip) invalidates
    // the cached plans of every PL/pgSQL function, so each pgrelay call replanned all of its
    // statements: saga_start of 3 SQL steps went from about 300 to 530 calls/s without it. pgrelay
    // keeps no session state on pooled connections (settings only with SET LOCAL in a transaction).
    resetConnection: async () => {},
  });
}
