// Where the tap `before` script leaves what the test files need: the admin URL and the template.
// One directory per tap run, keyed by the tap runner's pid (the parent of `before`, `after` and
// every test file), so concurrent runs never share state.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

export type EmbeddedServer = { runDir: string; dataDir: string; binDir: string; port: number };

export type RunState = {
  /** Unique per run; every database this run makes is named `pgrelay_test_<runId>_…`. */
  runId: string;
  /** The tap runner process that owns this run. */
  ownerPid: number;
  /** Superuser (or CREATEDB) URL of the maintenance database. */
  adminUrl: string;
  /** The migrated template database that fresh databases are cloned from. */
  template: string;
  /** Set when this run started its own embedded PostgreSQL. */
  embedded: EmbeddedServer | null;
};

/** Points a process (and its children) at a state file, whoever its parent is. */
export const STATE_ENV = 'PGRELAY_TEST_STATE';

/** Per user, so runs by different users on one machine never share (or clean up) each other's. */
export const runsRoot = (): string => join(tmpdir(), `pgrelay-test-${process.getuid?.() ?? 'user'}`);
export const runDirFor = (ownerPid: number): string => join(runsRoot(), `run-${ownerPid}`);
const stateFile = (runDir: string): string => join(runDir, 'state.json');
const failureFile = (runDir: string): string => join(runDir, 'setup-failed.txt');

/** Tell the test files that setup failed, so each fails saying so (the `after` script removes it). */
export function writeSetupFailure(runDir: string, message: string): void {
  mkdirSync(runDir, { recursive: true, mode: 0o755 });
  writeFileSync(failureFile(runDir), message);
}

export function writeRunState(state: RunState, runDir: string): void {
  mkdirSync(runDir, { recursive: true, mode: 0o755 });
  writeFileSync(stateFile(runDir), JSON.stringify(state, null, 2) + '\n');
}

export function readRunStateAt(runDir: string): RunState | null {
  const file = stateFile(runDir);
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as RunState) : null;
}

let cached: RunState | undefined;

/** The current run's state, as seen from a test file (a child of the tap runner). */
export function currentRunState(): RunState {
  if (cached) return cached;
  const file = process.env[STATE_ENV] ?? stateFile(runDirFor(process.ppid));
  const failure = failureFile(dirname(file));
  if (existsSync(failure)) {
    throw new Error(`pgrelay tests: the run's setup failed (see the start of the output): ${readFileSync(failure, 'utf8')}`);
  }
  if (!existsSync(file)) {
    throw new Error(
      `pgrelay tests: no test database (looked for ${file}). Run the suite through tap ` +
        '(`npm test` or `npx tap test/x.test.ts`): its `before` script (test/helpers/global-setup.ts) ' +
        `prepares the server; or point ${STATE_ENV} at the state.json of a running tap run.`,
    );
  }
  cached = JSON.parse(readFileSync(file, 'utf8')) as RunState;
  process.env[STATE_ENV] = file; // subprocesses spawned by tests find it too
  return cached;
}
