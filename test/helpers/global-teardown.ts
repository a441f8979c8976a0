// tap `after` script (package.json "tap.after"): runs once after every test file has finished.
// Drops this run's databases (shared server) or stops its embedded PostgreSQL, and removes its files.
import { endRun } from './end-run.ts';
import { runDirFor } from './run-state.ts';

try {
  const done = await endRun(runDirFor(process.ppid));
  process.stderr.write(`# pgrelay tests: ${done}\n`);
} catch (error) {
  process.stderr.write(`# pgrelay tests: teardown failed: ${(error as Error).message}\n`);
  process.exitCode = 1;
}
