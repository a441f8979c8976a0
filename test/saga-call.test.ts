// SQL steps are called through pgrelay._saga_call, which _saga_generate_call writes with a static
// call of every SQL handler the saga definitions name (sql/functions/sagas/_saga_call.sql), keyed
// by the function's oid, with a dynamic EXECUTE for any other. Proves: defined handlers are called
// statically; a function dropped and created again (new oid) still runs, by the fallback, until
// the next define; a dropped one fails its step as before; quoted schema and function names;
// concurrent defines (each regenerating) neither fail nor lose a handler; migrate up regenerates.
import t from 'tap';
import { freshDatabase, query } from './helpers/db.ts';
import { ledger, newClient } from './fixtures/sagas.ts';
import { migrate } from '../client/migrate.ts';

const SETUP = `
  CREATE TABLE public.ledger (id bigserial PRIMARY KEY, saga_id uuid NOT NULL, entry text NOT NULL);
  CREATE FUNCTION public.step_v(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO public.ledger (saga_id, entry) VALUES ((context ->> 'saga_id')::uuid, 'v1 ' || (context ->> 'step'));
    RETURN '{"v": 1}';
  END $$;
  CREATE SCHEMA "Odd Schema";
  CREATE FUNCTION "Odd Schema"."Step-1"(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('odd', input -> 'n') $$;
`;

const knows = async (url: string, fn: string): Promise<boolean> =>
  (await query<{ k: boolean }>(url, `SELECT pgrelay._saga_call_knows(to_regprocedure($1)) AS k`, [`${fn}(jsonb, jsonb)`]))[0]!.k;

t.test('defined handlers are called statically; a recreated function runs by the fallback; a dropped one fails its step', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  await query(url, SETUP);
  const client = await newClient(t, url);
  t.notOk(await knows(url, 'public.step_v'), 'not known before a definition names it');
  const definition = { steps: [{ name: 'a', action: { sql: 'public.step_v' } }, { name: 'b', action: { sql: '"Odd Schema"."Step-1"' } }] };
  await client.sagas.define('c.one', definition);
  t.ok(await knows(url, 'public.step_v'), 'known after saga_define');
  t.ok(await knows(url, '"Odd Schema"."Step-1"'), 'a quoted schema and name too');
  const first = await client.sagas.status(await client.sagas.start('c.one', { n: 7 }));
  t.equal(first.status, 'completed');
  t.same(first.context, { v: 1, odd: 7 });
  t.same(await ledger(url, first.id), ['v1 a']);

  await query(url, `DROP FUNCTION public.step_v(jsonb, jsonb)`);
  await query(url, `CREATE FUNCTION public.step_v(input jsonb, context jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO public.ledger (saga_id, entry) VALUES ((context ->> 'saga_id')::uuid, 'v2 ' || (context ->> 'step'));
      RETURN '{"v": 2}';
    END $$`);
  t.notOk(await knows(url, 'public.step_v'), 'the new function (new oid) is not in the generated code');
  const second = await client.sagas.status(await client.sagas.start('c.one', { n: 8 }));
  t.same([second.status, second.context], ['completed', { v: 2, odd: 8 }], 'it runs, by the dynamic fallback');
  t.same(await ledger(url, second.id), ['v2 a']);
  t.equal(await client.sagas.define('c.one', definition), 1, 'defining the same definition again keeps the version');
  t.ok(await knows(url, 'public.step_v'), 'and generates the call of the new function');
  const third = await client.sagas.status(await client.sagas.start('c.one', { n: 9 }));
  t.same([third.status, third.context], ['completed', { v: 2, odd: 9 }]);

  await query(url, `DROP FUNCTION public.step_v(jsonb, jsonb)`);
  const dropped = await client.sagas.status(await client.sagas.start('c.one', { n: 10 }));
  t.equal(dropped.status, 'running', 'a dropped step function fails the attempt (retried later)');
  t.match(dropped.steps[0]!.last_error, /public\.step_v\(jsonb, jsonb\) does not exist any more/);
});

t.test('concurrent defines, each regenerating _saga_call, all succeed and keep every handler; migrate up regenerates', async (t) => {
  const db = await freshDatabase(t);
  const url = db.connectionString;
  const n = 8;
  await query(url, Array.from({ length: n }, (_, i) =>
    `CREATE FUNCTION public.step_${i}(input jsonb, context jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"i": ${i}}'::jsonb $$;`).join('\n'));
  const client = await newClient(t, url, n);
  const versions = await Promise.all(Array.from({ length: n }, (_, i) =>
    client.sagas.define(`c.par${i}`, { steps: [{ name: 's', action: { sql: `public.step_${i}` } }] })));
  t.same(versions, Array.from({ length: n }, () => 1));
  const known = await Promise.all(Array.from({ length: n }, (_, i) => knows(url, `public.step_${i}`)));
  t.same(known, Array.from({ length: n }, () => true), 'every handler is in the generated code');
  const contexts = await Promise.all(Array.from({ length: n }, async (_, i) => (await client.sagas.status(await client.sagas.start(`c.par${i}`, {}))).context));
  t.same(contexts, Array.from({ length: n }, (_, i) => ({ i })));

  await migrate({ connectionString: url, direction: 'up' });
  t.ok(await knows(url, 'public.step_3'), 'migrate up (which reinstalls the fallback) generates it again');
});
