// Undo everything one run made: its databases (on a shared server), its embedded server, its files.
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { dropRunDatabases } from './databases.ts';
import { isAlive, stopPostmaster } from './postgres.ts';
import { readRunStateAt, runDirFor, runsRoot } from './run-state.ts';

/** Returns what it did, for the log. Throws only if a shared server's databases could not be dropped. */
export async function endRun(runDir: string): Promise<string> {
  const state = readRunStateAt(runDir);
  let dropError: unknown = null;
  let done = '';
  if (state && !state.embedded) {
    // On a shared server each database must go; an embedded server goes away whole.
    try {
      done = `dropped ${(await dropRunDatabases(state.adminUrl, state.runId)).length} database(s)`;
    } catch (error) {
      dropError = error;
    }
  }
  if (await stopPostmaster(join(runDir, 'pgdata'))) done = 'stopped the embedded PostgreSQL';
  rmSync(runDir, { recursive: true, force: true });
  if (dropError) throw dropError;
  return done || 'nothing to undo';
}

/**
 * End the runs a killed `npm test` left behind (its tap runner is gone): stop their servers,
 * drop their databases, remove their files. A directory for our own runner pid is stale too.
 */
export async function endLeftoverRuns(ownerPid: number): Promise<string[]> {
  let entries: string[];
  try {
    entries = readdirSync(runsRoot());
  } catch {
    return [];
  }
  const notes: string[] = [];
  for (const entry of entries) {
    const pid = Number(/^run-(\d+)$/.exec(entry)?.[1]);
    if (!pid || (pid !== ownerPid && isAlive(pid))) continue;
    const done = await endRun(runDirFor(pid)).catch((error: Error) => `left its databases: ${error.message}`);
    notes.push(`${entry}: ${done}`);
  }
  return notes;
}
