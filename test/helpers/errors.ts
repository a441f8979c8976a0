// Catching the error a statement is expected to raise, to assert on its SQLSTATE and fields.

export type PgError = Error & { code?: string; column?: string };

/** The error `run` rejects with, or undefined when it succeeds. */
export async function failure(run: () => Promise<unknown>): Promise<PgError | undefined> {
  try {
    await run();
  } catch (error) {
    return error as PgError;
  }
  return undefined;
}
