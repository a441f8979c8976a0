// `pgrelay cdc enable|disable|list|snapshot|snapshot-reset`: thin over client.cdc.
import { createClient } from '../client/index.js';
import { createProgress } from './progress.js';

const USAGE =
  'usage: pgrelay cdc enable TABLE [--options JSON] | disable TABLE | list | snapshot TABLE [--chunk-size N] | snapshot-reset TABLE';

/** Exit code of a snapshot stopped by SIGINT/SIGTERM (resumable): 128 + SIGINT. */
export const INTERRUPTED = 130;

function parseOptions(text: string | undefined): Record<string, unknown> {
  if (text === undefined) return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`--options is not valid JSON: ${text}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('--options must be a JSON object');
  return value as Record<string, unknown>;
}

export async function cdcCommand(
  verb: string | undefined,
  table: string | undefined,
  databaseUrl: string,
  flags: { options?: string; chunkSize?: string },
): Promise<number> {
  const needTable = (): string => {
    if (table === undefined) throw new Error(USAGE);
    return table;
  };
  const client = await createClient({ connectionString: databaseUrl, applicationName: 'pgrelay-cli', maximumPoolSize: 2 });
  const print = (value: unknown): void => void process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  try {
    switch (verb) {
      case 'enable':
        await client.cdc.enable(needTable(), parseOptions(flags.options));
        print((await client.cdc.list()).find((t) => t.table_name === table) ?? { enabled: table });
        return 0;
      case 'disable':
        await client.cdc.disable(needTable());
        print({ disabled: table });
        return 0;
      case 'list':
        print(await client.cdc.list());
        return 0;
      case 'snapshot-reset':
        await client.cdc.snapshotReset(needTable());
        print({ reset: table });
        return 0;
      case 'snapshot': {
        const name = needTable();
        const chunkSize = flags.chunkSize === undefined ? undefined : Number(flags.chunkSize);
        if (chunkSize !== undefined && !Number.isInteger(chunkSize)) throw new Error(`--chunk-size must be an integer, got ${flags.chunkSize}`);
        const progress = createProgress(`snapshot ${name}`);
        const controller = new AbortController();
        // The first signal stops after the chunk in flight (it commits, so nothing is lost);
        // a second one leaves at once (the chunk in flight rolls back).
        const onSignal = (): void => {
          if (controller.signal.aborted) process.exit(INTERRUPTED);
          controller.abort();
        };
        process.on('SIGINT', onSignal);
        process.on('SIGTERM', onSignal);
        try {
          const result = await client.cdc.snapshot(name, {
            chunkSize,
            signal: controller.signal,
            onProgress: (p) => progress.update(p.emitted, Math.max(p.total, p.emitted), p.done ? 'done' : ''),
          });
          if (!result.done) {
            progress.done(`snapshot interrupted after ${result.emitted} rows: run it again to resume`);
            print({ table: name, ...result });
            return INTERRUPTED;
          }
          progress.done(`snapshot of ${name} done: ${result.emitted} rows emitted`);
          print({ table: name, ...result });
          return 0;
        } finally {
          process.off('SIGINT', onSignal);
          process.off('SIGTERM', onSignal);
        }
      }
      default:
        throw new Error(USAGE);
    }
  } finally {
    await client.end();
  }
}
