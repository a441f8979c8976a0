import { readFileSync } from 'node:fs';

/**
 * A sink's secret, named by the sink JSON and never stored in the database: secret_env names an
 * environment variable, secret_file a file (trailing newline trimmed). Missing ones are an error
 * at sink creation, naming the variable or file but never printing the value.
 */
export function readSecret(sink: Record<string, unknown>, env: NodeJS.ProcessEnv): string | undefined {
  if (typeof sink.secret_env === 'string') {
    const value = env[sink.secret_env];
    if (value === undefined || value === '') throw new Error(`sink secret: environment variable ${sink.secret_env} is not set`);
    return value;
  }
  if (typeof sink.secret_file === 'string') {
    try {
      return readFileSync(sink.secret_file, 'utf8').replace(/\r?\n$/, '');
    } catch (error) {
      throw new Error(`sink secret: cannot read ${sink.secret_file}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  return undefined;
}
