// The saga admin verbs of the CLI (bin/sagas.ts through dist/bin/pgrelay.js, run as a process):
// list, status, cancel, retry, skip, resolve. Each acts on sagas left in the state it applies to,
// and refuses the others with the SQLSTATE on stderr and exit code 1. Needs `npm run build`.
import t from 'tap';
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError, type SagaListRow } from '../client/index.ts';
import { freshDatabase, query } from './helpers/db.ts';
import { childEnv, newClient } from './fixtures/sagas.ts';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'bin', 'pgrelay.js');

type Run = { code: number; stdout: string; stderr: string };
const cli = (url: string, ...args: string[]): Promise<Run> =>
  new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: childEnv({ DATABASE_URL: url }), timeout: 90_000 }, (error, stdout, stderr) => {
      const killed = error !== null && error.killed ? `\n(killed after the 90 s limit: ${error.signal})` : '';
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr: stderr + killed });
    });
  });

const SETUP = `
  CREATE TABLE public.faults (name text PRIMARY KEY);
  CREATE TABLE public.done (saga_id uuid, entry text);
  CREATE FUNCTION public.act(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  BEGIN
    IF (context ->> 'phase') = 'compensation' AND EXISTS (SELECT 1 FROM public.faults f WHERE f.name = context ->> 'step') THEN
      RAISE EXCEPTION 'cannot undo %', context ->> 'step';
    END IF;
    IF (context ->> 'phase') = 'action' AND (input ->> 'fail_at') = (context ->> 'step') THEN
      RAISE EXCEPTION 'step % fails', context ->> 'step';
    END IF;
    INSERT INTO public.done VALUES ((context ->> 'saga_id')::uuid, (context ->> 'step') || ':' || (context ->> 'phase'));
    RETURN '{}';
  END $$;
  SELECT pgrelay.saga_define('cli.order', '{"steps": [
    {"name": "reserve", "action": {"sql": "public.act"}, "compensation": {"sql": "public.act"}, "max_attempts": 1},
    {"name": "charge", "action": {"sql": "public.act"}, "compensation": {"sql": "public.act"}, "max_attempts": 1},
    {"name": "ship", "action": {"worker": "cli-shipping"}, "compensation": {"sql": "public.act"}, "max_attempts": 1}]}');
  SELECT pgrelay.saga_define('cli.other', '{"steps": [{"name": "only", "action": {"worker": "cli-other"}}]}');
`;

t.test('pgrelay sagas list|status|cancel|retry|skip|resolve', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  await query(url, SETUP);
  const client = await newClient(t, url);
  await query(url, `INSERT INTO public.faults VALUES ('charge'), ('reserve')`);
  const toRetry = await client.sagas.start('cli.order', { fail_at: 'ship' });
  await client.sagas.fail((await client.sagas.lease('cli-shipping', 'w', 10)).find((task) => task.sagaId === toRetry)!, 'no courier', { retryable: false });
  const toSkip = await client.sagas.start('cli.order', { fail_at: 'ship' });
  await client.sagas.fail((await client.sagas.lease('cli-shipping', 'w', 10)).find((task) => task.sagaId === toSkip)!, 'no courier', { retryable: false });
  const toResolve = await client.sagas.start('cli.order', { fail_at: 'charge' });
  const running = await client.sagas.start('cli.order', {});
  const other = await client.sagas.start('cli.other', {});
  for (const id of [toRetry, toSkip]) t.equal((await client.sagas.status(id)).status, 'failed', 'set up: failed on the charge compensation');
  t.equal((await client.sagas.status(toResolve)).status, 'failed', 'set up: failed on the reserve compensation');

  // The read-only calls run side by side: each is a node process start.
  const [all, failedRun, byTypeRun, limited, badStatus, status, unknown, notUuid, usage] = await Promise.all([
    cli(url, 'sagas', 'list'),
    cli(url, 'sagas', 'list', '--status', 'failed'),
    cli(url, 'sagas', 'list', '--type', 'cli.other'),
    cli(url, 'sagas', 'list', '--limit', '2'),
    cli(url, 'sagas', 'list', '--status', 'stuck'),
    cli(url, 'sagas', 'status', toRetry),
    cli(url, 'sagas', 'status', '00000000-0000-4000-8000-000000000000'),
    cli(url, 'sagas', 'status', 'nope'),
    cli(url, 'sagas', 'frobnicate'),
  ]);
  t.equal(all.code, 0, all.stderr);
  const rows = JSON.parse(all.stdout) as SagaListRow[];
  t.equal(rows.length, 5, 'list shows every saga');
  t.match(rows.find((r) => r.id === running), { status: 'running', current_step: 'ship', step_status: 'ready' }, 'with the step a running saga waits on');
  t.match(rows.find((r) => r.id === toRetry), { status: 'failed', current_step: 'charge', step_status: 'compensation_failed', last_error: /cannot undo charge/ }, 'and the compensation a failed one is stuck on');

  const failed = JSON.parse(failedRun.stdout) as SagaListRow[];
  t.same(failed.map((r) => r.id).sort(), [toRetry, toSkip, toResolve].sort(), '--status filters');
  const byType = JSON.parse(byTypeRun.stdout) as SagaListRow[];
  t.same(byType.map((r) => r.id), [other], '--type filters');
  t.equal((JSON.parse(limited.stdout) as unknown[]).length, 2, '--limit limits');
  t.equal(badStatus.code, 1, 'an unknown status is refused');
  t.match(badStatus.stderr, /argument with_status must be one of .* \(SQLSTATE PR001\)/);

  t.equal(status.code, 0);
  t.match(JSON.parse(status.stdout), { id: toRetry, status: 'failed', steps: [{ name: 'reserve' }, { name: 'charge', status: 'compensation_failed' }, { name: 'ship' }] });
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /names no saga.*\(SQLSTATE PR003\)/);
  t.equal(notUuid.code, 1);
  t.match(notUuid.stderr, /SAGA_ID must be a uuid/);
  t.equal(usage.code, 1);
  t.match(usage.stderr, /usage: pgrelay sagas list/);

  const cancel = await cli(url, 'sagas', 'cancel', running, '--reason', 'customer asked');
  t.equal(cancel.code, 0, cancel.stderr);
  t.match(JSON.parse(cancel.stdout), { id: running, status: 'failed' }, 'cancel runs the compensations at once; charge cannot be undone yet');
  const stuck = await client.sagas.status(running);
  t.match(stuck, { compensation_reason: 'cancelled', error: { step: 'charge', phase: 'compensation' } });
  const again = await cli(url, 'sagas', 'cancel', running);
  t.equal(again.code, 1, 'a failed saga cannot be cancelled again');
  t.match(again.stderr, /only a running saga can be cancelled \(SQLSTATE PR007\)/);
  await query(url, `DELETE FROM public.faults`);
  const cancelled = await cli(url, 'sagas', 'retry', running);
  t.equal(cancelled.code, 0, cancelled.stderr);
  t.match(JSON.parse(cancelled.stdout), { id: running, status: 'cancelled', steps: [{ status: 'compensated' }, { status: 'compensated' }, { status: 'skipped' }] }, 'after the fix, retry finishes the cancellation');
  const cancelAgain = await cli(url, 'sagas', 'cancel', running);
  t.equal(cancelAgain.code, 1);
  t.match(cancelAgain.stderr, /is cancelled: only a running saga can be cancelled \(SQLSTATE PR007\)/);

  const retried = await cli(url, 'sagas', 'retry', toRetry);
  t.equal(retried.code, 0, retried.stderr);
  t.match(JSON.parse(retried.stdout), { status: 'compensated', steps: [{ status: 'compensated' }, { status: 'compensated' }, { status: 'failed' }] });

  const skipUsage = await cli(url, 'sagas', 'skip', toSkip);
  t.equal(skipUsage.code, 1, 'skip needs a step');
  t.match(skipUsage.stderr, /usage: pgrelay sagas/);
  const skipped = await cli(url, 'sagas', 'skip', toSkip, 'charge');
  t.equal(skipped.code, 0, skipped.stderr);
  t.match(JSON.parse(skipped.stdout), { status: 'compensated', steps: [{ name: 'reserve', status: 'compensated' }, { name: 'charge', status: 'skipped' }] });

  const noNote = await cli(url, 'sagas', 'resolve', toResolve);
  t.equal(noNote.code, 1);
  t.match(noNote.stderr, /needs --note/);
  const resolved = await cli(url, 'sagas', 'resolve', toResolve, '--note', 'released by hand');
  t.equal(resolved.code, 0, resolved.stderr);
  t.match(JSON.parse(resolved.stdout), { status: 'compensated' });
  t.match((await client.sagas.status(toResolve)).error, { resolved: 'released by hand' });
  const retryDone = await cli(url, 'sagas', 'retry', toResolve);
  t.equal(retryDone.code, 1);
  t.match(retryDone.stderr, /only a failed saga can be retried \(SQLSTATE PR007\)/);


  const ledger = await query<{ entry: string }>(url, 'SELECT entry FROM public.done WHERE saga_id = $1 ORDER BY entry', [running]);
  t.same(ledger.map((r) => r.entry).sort(), ['charge:action', 'charge:compensation', 'reserve:action', 'reserve:compensation'], 'the cancelled saga undid what it did');
});

t.test('saga_list: bad arguments are PR001 naming them', async (t) => {
  const db = await freshDatabase(t);
  const client = await newClient(t, db.connectionString);
  const bad = async (options: Parameters<typeof client.sagas.list>[0], argument: string): Promise<void> => {
    const error = await client.sagas.list(options).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    t.type(error, InvalidArgumentError, `${JSON.stringify(options)} is refused`);
    t.equal((error as InvalidArgumentError).argument, argument);
  };
  await bad({ status: 'nope' as never }, 'with_status');
  await bad({ limit: 0 }, 'max_rows');
  await bad({ limit: 100_001 }, 'max_rows');
  t.same(await client.sagas.list(), [], 'no sagas, an empty list');
});
