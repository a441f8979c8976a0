// tap `before` script (package.json "tap.before"): runs once per `tap` run, before any test file.
// Starts an embedded PostgreSQL 18 unless DATABASE_URL is set, then builds the migrated template
// database that test/helpers/db.ts clones for every test file. Progress goes to stderr as
// TAP-safe comments; a failure undoes what was done and fails the run.
import { migrate } from '../../client/migrate.ts';
import { createDatabase, newRunId, sealTemplate, templateName } from './databases.ts';
import { endLeftoverRuns, endRun } from './end-run.ts';
import { startEmbeddedPostgres } from './postgres.ts';
import { runDirFor, writeRunState, writeSetupFailure, type RunState } from './run-state.ts';
import { databaseUrl, query } from './sql.ts';

const say = (line: string): void => void process.stderr.write(`# pgrelay tests: ${line}\n`);

const ownerPid = process.ppid; // the tap runner: parent of this script, the test files and `after`
const runDir = runDirFor(ownerPid);

for (const note of await endLeftoverRuns(ownerPid)) say(`cleaned up a previous run: ${note}`);

try {
  const runId = newRunId();
  const started = process.env.DATABASE_URL ? null : await startEmbeddedPostgres(runDir);
  const state: RunState = {
    runId,
    ownerPid,
    adminUrl: started?.adminUrl ?? (process.env.DATABASE_URL as string),
    template: templateName(runId),
    embedded: started?.server ?? null,
  };
  writeRunState(state, runDir); // before anything else, so a failure or a kill can be undone
  const [server] = await query<{ version: string }>(state.adminUrl, `SELECT current_setting('server_version') AS version`);
  await createDatabase(state.adminUrl, state.template, 'template0');
  await migrate({ connectionString: databaseUrl(state.adminUrl, state.template), direction: 'up' });
  await sealTemplate(state.adminUrl, state.template);
  const where = started ? `embedded, 127.0.0.1:${started.server.port}` : 'DATABASE_URL';
  say(`PostgreSQL ${server?.version} (${where}), template ${state.template}`);
} catch (error) {
  say(`setup failed: ${(error as Error).stack ?? String(error)}`.replace(/\n/g, '\n# '));
  await endRun(runDir).catch((cleanup: Error) => say(`cleanup after the failure failed too: ${cleanup.message}`));
  writeSetupFailure(runDir, (error as Error).message);
  process.exitCode = 1;
}
