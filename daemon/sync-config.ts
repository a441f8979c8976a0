// The sync config file the daemon reads (`pgrelay daemon --sync-config FILE` or PGRELAY_SYNC_CONFIG):
// JSON {"syncs": [{"name", "topics", "target", "options"?}, ...]}, each defined with
// pgrelay.sync_define in the source database, all in one transaction (a bad entry defines none).
// Syncs missing from the file are left alone: drop them with pgrelay.sync_drop.
import { readFileSync } from 'node:fs';
import { createPgrelayPool, syncMethods, type SyncOptions, type SyncTarget } from '../client/index.js';
import { z } from 'zod';

const entrySchema = z.object({
  name: z.string(),
  topics: z.array(z.string()),
  target: z.record(z.unknown()),
  options: z.record(z.unknown()).optional(),
}).strict();
const fileSchema = z.object({ syncs: z.array(entrySchema) }).strict();

export type SyncConfigEntry = z.infer<typeof entrySchema>;

/** Reads and checks the file's shape; the database checks the definitions themselves. */
export function readSyncConfig(file: string): SyncConfigEntry[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new Error(`sync config ${file}: ${(error as Error).message}`);
  }
  const result = fileSchema.safeParse(parsed);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new Error(`sync config ${file}: ${issue.path.join('.') || '(top level)'}: ${issue.message} (expected {"syncs": [{"name", "topics", "target", "options"?}]})`);
  }
  return result.data.syncs;
}

/** Defines every sync of the file in the source database, all or none. Returns their names. */
export async function applySyncConfig(connectionString: string, file: string): Promise<string[]> {
  const entries = readSyncConfig(file);
  const pool = await createPgrelayPool(connectionString, { maximumPoolSize: 1, applicationName: 'pgrelay-sync-config' });
  try {
    await pool.transaction(async (tx) => {
      for (const entry of entries) {
        try {
          await syncMethods(tx).define(entry.name, entry.topics, entry.target as SyncTarget, (entry.options ?? {}) as SyncOptions);
        } catch (error) {
          if (error instanceof Error) error.message = `sync config ${file}: sync ${entry.name}: ${error.message}`;
          throw error;
        }
      }
    });
  } finally {
    await pool.end();
  }
  return entries.map((entry) => entry.name);
}
