// pgrelay.saga_define: every malformed definition raises PR001 naming the argument (the COLUMN
// field and the message) and writes no definition; versions: a changed definition is a new
// version, and a saga already running keeps the steps of the version it started with.
import t, { type Test } from 'tap';
import pg from 'pg';
import { freshDatabase, query } from './helpers/db.ts';

const SETUP = `
  CREATE FUNCTION public.ok(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
  CREATE FUNCTION public.returns_text(input jsonb, context jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
  CREATE FUNCTION public.one_arg(input jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT input $$;
  CREATE TABLE public.audit (saga_id uuid, entry text);
  CREATE FUNCTION public.note(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$
    INSERT INTO public.audit VALUES ((context ->> 'saga_id')::uuid, (context ->> 'step') || ':' || (context ->> 'phase'));
    SELECT '{}'::jsonb $$;
`;

async function connect(t: Test, url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, application_name: 'saga-define-test' });
  client.on('error', () => {});
  await client.connect();
  t.teardown(() => client.end().catch(() => {}));
  return client;
}

const sqlStep = (name: string, extra: Record<string, unknown> = {}) => ({ name, action: { sql: 'public.ok' }, ...extra });

t.test('saga_define: bad input is PR001 naming the argument, and nothing is written', async (t) => {
  const db = await freshDatabase(t);
  await query(db.connectionString, SETUP);
  const client = await connect(t, db.connectionString);

  const cases: Array<[string, string | null, unknown, string, RegExp]> = [
    ['a NULL saga type', null, { steps: [sqlStep('a')] }, 'saga_type', /must be 1-190 characters/],
    ['a saga type with spaces', 'bad type', { steps: [sqlStep('a')] }, 'saga_type', /must be 1-190 characters/],
    ['a saga type too long', 'x'.repeat(191), { steps: [sqlStep('a')] }, 'saga_type', /must be 1-190/],
    ['a NULL definition', 'ok', null, 'definition', /non-empty "steps" array/],
    ['a definition that is an array', 'ok', [sqlStep('a')], 'definition', /non-empty "steps" array/],
    ['no steps', 'ok', { steps: [] }, 'definition', /non-empty "steps" array/],
    ['steps as an object', 'ok', { steps: { a: 1 } }, 'definition', /non-empty "steps" array/],
    ['an unknown top-level field', 'ok', { steps: [sqlStep('a')], retries: 3 }, 'definition', /unknown field 'retries'/],
    ['a negative deadline', 'ok', { steps: [sqlStep('a')], deadline: -1 }, 'definition', /"deadline" must be a positive number/],
    ['a deadline as a string', 'ok', { steps: [sqlStep('a')], deadline: 'soon' }, 'definition', /"deadline" must be a positive number/],
    ['a step without a name', 'ok', { steps: [{ action: { sql: 'public.ok' } }] }, 'definition', /steps\[0\] must be an object with a "name"/],
    ['a step that is a string', 'ok', { steps: ['a'] }, 'definition', /steps\[0\] must be an object/],
    ['a bad step name', 'ok', { steps: [sqlStep('a b')] }, 'definition', /steps\[0\] must be an object with a "name"/],
    ['duplicate step names', 'ok', { steps: [sqlStep('a'), sqlStep('b'), sqlStep('a')] }, 'definition', /steps\[2\]: duplicate step name 'a'/],
    ['a step without an action', 'ok', { steps: [{ name: 'a' }] }, 'definition', /steps\[0\] needs an "action"/],
    ['an unknown step field', 'ok', { steps: [sqlStep('a', { retries: 2 })] }, 'definition', /steps\[0\] has an unknown field 'retries'/],
    ['an unknown function', 'ok', { steps: [{ name: 'a', action: { sql: 'public.nope' } }] }, 'definition', /steps\[0\]\.action\.sql names no function public\.nope/],
    ['a function in an unknown schema', 'ok', { steps: [{ name: 'a', action: { sql: 'nowhere.ok' } }] }, 'definition', /names no function/],
    ['a function returning text', 'ok', { steps: [{ name: 'a', action: { sql: 'public.returns_text' } }] }, 'definition', /names no function public\.returns_text/],
    ['a function of the wrong arguments', 'ok', { steps: [{ name: 'a', action: { sql: 'public.one_arg' } }] }, 'definition', /names no function/],
    ['SQL injection in the function name', 'ok', { steps: [{ name: 'a', action: { sql: "public.ok(jsonb,jsonb); DROP TABLE public.audit; --" } }] }, 'definition', /names no function/],
    ['an unknown compensation function', 'ok', { steps: [sqlStep('a', { compensation: { sql: 'public.nope' } })] }, 'definition', /steps\[0\]\.compensation\.sql names no function/],
    ['an action with both sql and worker', 'ok', { steps: [{ name: 'a', action: { sql: 'public.ok', worker: 'q' } }] }, 'definition', /steps\[0\]\.action must be/],
    ['an action that is a string', 'ok', { steps: [{ name: 'a', action: 'public.ok' }] }, 'definition', /steps\[0\]\.action must be/],
    ['a bad worker queue', 'ok', { steps: [{ name: 'a', action: { worker: 'bad queue' } }] }, 'definition', /steps\[0\]\.action\.worker must be a queue name/],
    ['a worker queue that is a number', 'ok', { steps: [{ name: 'a', action: { worker: 7 } }] }, 'definition', /action\.worker must be a queue name/],
    ['max_attempts 0', 'ok', { steps: [sqlStep('a', { max_attempts: 0 })] }, 'definition', /steps\[0\]\.max_attempts must be a whole number between 1 and 1000, got 0/],
    ['max_attempts 1.5', 'ok', { steps: [sqlStep('a', { max_attempts: 1.5 })] }, 'definition', /max_attempts must be a whole number/],
    ['max_attempts as a string', 'ok', { steps: [sqlStep('a', { max_attempts: 'abc' })] }, 'definition', /max_attempts must be a whole number/],
    ['a timeout of 0', 'ok', { steps: [sqlStep('a', { timeout: 0 })] }, 'definition', /steps\[0\]\.timeout must be a number of seconds/],
    ['a timeout of a week', 'ok', { steps: [sqlStep('a', { timeout: 604800 })] }, 'definition', /timeout must be a number of seconds/],
    ['a backoff that is a number', 'ok', { steps: [sqlStep('a', { backoff: 5 })] }, 'definition', /steps\[0\]\."backoff" must be an object/],
    ['an unknown backoff field', 'ok', { steps: [sqlStep('a', { backoff: { delay: 5 } })] }, 'definition', /steps\[0\]\."backoff" has an unknown field 'delay'/],
    ['a negative backoff', 'ok', { steps: [sqlStep('a', { backoff: { initial_ms: -1 } })] }, 'definition', /steps\[0\]\."initial_ms" must be a number/],
    ['max_ms below initial_ms', 'ok', { steps: [sqlStep('a', { backoff: { initial_ms: 10, max_ms: 5 } })] }, 'definition', /max_ms must be >= initial_ms/],
  ];
  for (const [label, type, definition, argument, message] of cases) {
    let error: (Error & { code?: string; column?: string }) | undefined;
    try {
      await client.query('SELECT pgrelay.saga_define($1, $2::jsonb)', [type, definition === null ? null : JSON.stringify(definition)]);
    } catch (caught) {
      error = caught as Error & { code?: string; column?: string };
    }
    if (error === undefined) {
      t.fail(`${label}: accepted`);
      continue;
    }
    t.equal(error.code, 'PR001', `${label}: PR001 (got ${error.code}: ${error.message})`);
    t.equal(error.column, argument, `${label}: names ${argument}`);
    t.ok(error.message.startsWith(`pgrelay.saga_define: argument ${argument} `), `${label}: message shape: ${error.message}`);
    t.match(error.message, message, `${label}: says what is wrong`);
  }
  const [count] = await query<{ n: number }>(db.connectionString, 'SELECT count(*)::int AS n FROM pgrelay.saga_definitions');
  t.equal(count!.n, 0, 'no definition was written');
  t.ok((await query(db.connectionString, `SELECT to_regclass('public.audit') AS r`))[0]!.r, 'the injection attempt dropped nothing');

  // A good definition still goes through after all that, with every option at its bounds.
  const [good] = await query<{ v: number }>(db.connectionString, `SELECT pgrelay.saga_define('ok', $1::jsonb) AS v`, [
    JSON.stringify({
      deadline: 0.5,
      steps: [
        sqlStep('a', { max_attempts: 1000, timeout: 0.001, backoff: { initial_ms: 0, max_ms: 0, multiplier: 1, jitter: 0 }, compensation: null }),
        { name: 'b', action: { worker: 'q.b-1' }, compensation: { sql: 'public.ok' }, max_attempts: 1, timeout: 86400 },
      ],
    }),
  ]);
  t.equal(good!.v, 1, 'a valid definition is version 1');
});

t.test('saga_define: a new version leaves running sagas on the version they started with', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  await query(url, SETUP);
  const define = async (definition: unknown): Promise<number> =>
    (await query<{ v: number }>(url, `SELECT pgrelay.saga_define('versioned', $1::jsonb) AS v`, [JSON.stringify(definition)]))[0]!.v;
  const start = async (): Promise<string> => (await query<{ id: string }>(url, `SELECT pgrelay.saga_start('versioned', '{}') AS id`))[0]!.id;
  const status = async (id: string): Promise<{ status: string; version: number; steps: Array<{ name: string; status: string }> }> =>
    (await query<{ s: never }>(url, `SELECT pgrelay.saga_status($1) AS s`, [id]))[0]!.s;

  t.equal(await define({ steps: [{ name: 'one', action: { sql: 'public.note' } }, { name: 'wait', action: { worker: 'v' } }, { name: 'two', action: { sql: 'public.note' } }] }), 1);
  const old = await start();
  t.equal(await define({ steps: [{ name: 'first', action: { sql: 'public.note' } }, { name: 'wait', action: { worker: 'v' } }] }), 2, 'a changed definition is version 2');
  t.equal(await define({ steps: [{ name: 'first', action: { sql: 'public.note' } }, { name: 'wait', action: { worker: 'v' } }] }), 2, 'defining it again changes nothing');
  const fresh = await start();

  t.match(await status(old), { version: 1, status: 'running', steps: [{ name: 'one', status: 'succeeded' }, { name: 'wait', status: 'ready' }, { name: 'two', status: 'pending' }] });
  t.match(await status(fresh), { version: 2, steps: [{ name: 'first', status: 'succeeded' }, { name: 'wait', status: 'ready' }] });

  const tasks = await query<{ saga_id: string; step: string; attempt: number }>(url, `SELECT saga_id, step, attempt FROM pgrelay.saga_lease('v', 'w', 10)`);
  t.equal(tasks.length, 2, 'both waiting steps are leased');
  for (const task of tasks) await query(url, 'SELECT pgrelay.saga_task_complete($1, $2, $3)', [task.saga_id, task.step, task.attempt]);
  const oldDone = await status(old);
  t.equal(oldDone.status, 'completed');
  t.same(oldDone.steps.map((s) => s.name), ['one', 'wait', 'two'], 'the old saga ran the steps of version 1 to the end');
  t.equal((await status(fresh)).status, 'completed');
  const audit = await query<{ saga_id: string; entry: string }>(url, 'SELECT saga_id, entry FROM public.audit');
  t.same(audit.filter((a) => a.saga_id === old).map((a) => a.entry), ['one:action', 'two:action']);
  t.same(audit.filter((a) => a.saga_id === fresh).map((a) => a.entry), ['first:action']);
  const versions = await query<{ version: number }>(url, `SELECT version FROM pgrelay.saga_definitions WHERE saga_type = 'versioned' ORDER BY version`);
  t.same(versions.map((v) => v.version), [1, 2], 'old versions are kept for the sagas that use them');
});
