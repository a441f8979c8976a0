import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { mapErrors } from './errors.js';
import { idSchema, type Json } from './schemas.js';
import type { BackoffOptions } from './subscriptions.js';
import type { LeanQuery } from './pool.js';
import { createSagaStartGrouper, startOne, type SagaStartGrouping } from './saga-start-group.js';

/** Where a step runs: a SQL function (input jsonb, context jsonb) RETURNS jsonb, or a worker queue. */
export type SagaHandlerRef = { sql: string } | { worker: string };

/** One step of a saga definition as pgrelay.saga_define takes it. */
export type SagaStepJson = {
  name: string;
  action: SagaHandlerRef;
  compensation?: SagaHandlerRef | null;
  /** Tries of the action (and, separately, of the compensation) before giving up. Default 3. */
  max_attempts?: number;
  /** Seconds a worker may hold the step without a heartbeat; past it the attempt has timed out. Default 30. */
  timeout?: number;
  /** Delay between attempts: { initial_ms, max_ms, multiplier, jitter }. */
  backoff?: BackoffOptions;
};

/** The JSON definition of a saga type: its steps in order and an optional deadline in seconds. */
export type SagaDefinitionJson = { steps: SagaStepJson[]; deadline?: number };

export type SagaStatusName = 'running' | 'completed' | 'compensating' | 'compensated' | 'failed' | 'cancelled';
export type SagaStepStatusName =
  | 'pending'
  | 'ready'
  | 'leased'
  | 'succeeded'
  | 'failed'
  | 'unknown'
  | 'compensation_ready'
  | 'compensation_leased'
  | 'compensated'
  | 'compensation_failed'
  | 'skipped';

/** Saga statuses after which nothing more happens by itself ('failed' waits for a person). */
export const TERMINAL_SAGA_STATUSES: readonly SagaStatusName[] = ['completed', 'compensated', 'failed', 'cancelled'];

const jsonObject = z.record(z.unknown());

export const sagaStepStatusSchema = z.object({
  name: z.string(),
  status: z.enum([
    'pending',
    'ready',
    'leased',
    'succeeded',
    'failed',
    'unknown',
    'compensation_ready',
    'compensation_leased',
    'compensated',
    'compensation_failed',
    'skipped',
  ]),
  attempts: z.number().int(),
  max_attempts: z.number().int(),
  last_error: z.string().nullable(),
  output: z.unknown(),
  timed_out: z.boolean(),
  kind: z.enum(['sql', 'worker']),
  compensation_kind: z.enum(['sql', 'worker']).nullable(),
  next_attempt_at: z.string().nullable(),
  lease_owner: z.string().nullable(),
  lease_expires_at: z.string().nullable(),
  started_at: z.string().nullable(),
  finished_at: z.string().nullable(),
});
export type SagaStepStatus = z.infer<typeof sagaStepStatusSchema>;

/** What pgrelay.saga_status returns. */
export const sagaStatusSchema = z.object({
  id: z.string().uuid(),
  saga_type: z.string(),
  version: z.number().int(),
  status: z.enum(['running', 'completed', 'compensating', 'compensated', 'failed', 'cancelled']),
  compensation_reason: z.string().nullable(),
  input: z.unknown(),
  context: jsonObject,
  error: jsonObject.nullable(),
  idempotency_key: z.string().nullable(),
  deadline_at: z.string().nullable(),
  created_at: z.string(),
  updated_at: z.string(),
  steps: z.array(sagaStepStatusSchema),
});
export type SagaStatus = z.infer<typeof sagaStatusSchema>;

/** A row of pgrelay.saga_list: a saga and the step it is at. */
export const sagaListRowSchema = z.object({
  id: z.string().uuid(),
  saga_type: z.string(),
  version: z.number().int(),
  status: z.enum(['running', 'completed', 'compensating', 'compensated', 'failed', 'cancelled']),
  compensation_reason: z.string().nullable(),
  current_step: z.string().nullable(),
  step_status: z.string().nullable(),
  attempts: z.number().int().nullable(),
  last_error: z.string().nullable(),
  error: jsonObject.nullable(),
  created_at: z.string(),
  updated_at: z.string(),
});
export type SagaListRow = z.infer<typeof sagaListRowSchema>;

export type SagaListOptions = { status?: SagaStatusName; sagaType?: string; limit?: number };

/** A leased worker step (a row of pgrelay.saga_task). attempt is the fencing token. */
export const sagaTaskRowSchema = z.object({
  saga_id: z.string().uuid(),
  saga_type: z.string(),
  step: z.string(),
  step_index: z.number().int(),
  phase: z.enum(['action', 'compensation']),
  queue: z.string(),
  attempt: z.number().int().positive(),
  idempotency_key: z.string(),
  input: z.unknown(),
  context: jsonObject,
  lease_expires_at: z.string(),
});

export type SagaTask = {
  sagaId: string;
  sagaType: string;
  step: string;
  stepIndex: number;
  phase: 'action' | 'compensation';
  queue: string;
  /** The attempt number: the fencing token complete/fail/heartbeat must present. */
  attempt: number;
  /** Stable for the step and phase across attempts (saga id : step : phase): pass it to remote services. */
  idempotencyKey: string;
  input: unknown;
  context: Record<string, unknown>;
  leaseExpiresAt: string;
};

/** Identifies a leased task for complete/fail/heartbeat. */
export type SagaTaskRef = { sagaId: string; step: string; attempt: number };

/** A finished attempt, for completeMany. */
export type SagaTaskOutcome = SagaTaskRef & { output?: unknown };

export type SagaStartOptions = { idempotencyKey?: string | null };

/** A saga made by defineSaga (or anything with its type and JSON definition). */
export type SagaLike<I = unknown> = { readonly type: string; readonly definition: SagaDefinitionJson; parseInput?(input: I): unknown };

const voidSchema = z.object({}).passthrough();
const statusRowSchema = z.object({ status: sagaStatusSchema });
const idsSchema = z.object({ ids: z.array(z.string().uuid()).nullable() });
const versionSchema = z.object({ version: z.number().int() });
const countSchema = z.object({ n: z.number().int() });
const expiresSchema = z.object({ expires_at: z.string() });

/** JSON text as JSON.stringify makes it (undefined becomes null). */
const toJsonText = (value: unknown): string => JSON.stringify(value) ?? 'null';

const sagaTypeOf = <I>(saga: string | SagaLike<I>): string => (typeof saga === 'string' ? saga : saga.type);

/** A defined saga's input is validated (zod) before it is stored; it is stored as given. */
const checkedInput = <I>(saga: string | SagaLike<I>, input: I): unknown => {
  if (typeof saga !== 'string' && saga.parseInput !== undefined) saga.parseInput(input);
  return input;
};

export const toSagaTask = (row: z.infer<typeof sagaTaskRowSchema>): SagaTask => ({
  sagaId: row.saga_id,
  sagaType: row.saga_type,
  step: row.step,
  stepIndex: row.step_index,
  phase: row.phase,
  queue: row.queue,
  attempt: row.attempt,
  idempotencyKey: row.idempotency_key,
  input: row.input,
  context: row.context,
  leaseExpiresAt: row.lease_expires_at,
});

/**
 * Typed calls of the saga functions (see sql/functions/sagas/). With `lean` (a client made from a
 * connection string, outside transaction()), start runs on its bare `pg` pool (see createLeanQuery),
 * and with `grouping` concurrent starts go out together (see saga-start-group.ts).
 */
export function sagaMethods(connection: CommonQueryMethods, lean?: LeanQuery, grouping?: SagaStartGrouping) {
  const grouper = lean !== undefined && grouping !== undefined ? createSagaStartGrouper(lean, grouping) : undefined;
  return {
    /**
     * Registers a saga type, or a new version of it when the definition changed (pgrelay.saga_define).
     * Pass a defineSaga() result, or a type and its JSON definition. Returns the version in force.
     */
    define: <I>(saga: string | SagaLike<I>, definition?: SagaDefinitionJson) =>
      mapErrors(() => {
        const json = typeof saga === 'string' ? definition : saga.definition;
        return connection.oneFirst(sql.type(versionSchema)`
          SELECT pgrelay.saga_define(${sagaTypeOf(saga)}, ${toJsonText(json ?? null)}::jsonb) AS version`);
      }),
    /**
     * Starts a saga (pgrelay.saga_start) and returns its id. Due SQL steps run in this call's
     * transaction. The same idempotencyKey (per saga type) returns the same saga.
     *
     * On a client made from a connection string (outside transaction()), starts made while
     * earlier ones are in flight go out together, one statement and one transaction for the group
     * (createClient's sagaStartGrouping): a SQL step's locks are then held until its group commits.
     * Each call still gets its own id or its own error (a failed group is retried start by start).
     */
    start: <I = unknown>(saga: string | SagaLike<I>, input: NoInfer<I>, options: SagaStartOptions = {}) =>
      mapErrors(async () => {
        const type = sagaTypeOf(saga);
        const json = toJsonText(checkedInput(saga, input));
        const key = options.idempotencyKey ?? null;
        if (grouper !== undefined) return grouper.start(type, json, key);
        if (lean !== undefined) return startOne(lean, type, json, key);
        return connection.oneFirst(sql.type(idSchema)`
          SELECT pgrelay.saga_start(${type}, ${json}::jsonb, ${key}) AS id`);
      }),
    /**
     * Starts many sagas of one type in one statement (one transaction): ids in the order of inputs.
     * Set-based: a batch of sagas with SQL steps progresses with one commit.
     */
    startMany: <I = unknown>(saga: string | SagaLike<I>, inputs: readonly { input: NoInfer<I>; idempotencyKey?: string | null }[]) =>
      mapErrors(async () => {
        if (inputs.length === 0) return [] as string[];
        const rows = inputs.map((item) => ({ input: checkedInput(saga, item.input) ?? null, key: item.idempotencyKey ?? null }));
        const ids = await connection.oneFirst(sql.type(idsSchema)`
          SELECT array_agg(pgrelay.saga_start(${sagaTypeOf(saga)}, t.input, t.key) ORDER BY t.n) AS ids
          FROM ROWS FROM (jsonb_to_recordset(${toJsonText(rows)}::jsonb) AS (input jsonb, key text)) WITH ORDINALITY AS t(input, key, n)`);
        return ids ?? [];
      }),
    /** The saga's status, context and steps (pgrelay.saga_status). NotFoundError for an unknown id. */
    status: (sagaId: string) =>
      mapErrors(() => connection.oneFirst(sql.type(statusRowSchema)`SELECT pgrelay.saga_status(${sagaId}::uuid) AS status`)),
    /** Sagas, most recently changed first, by status and/or type, with the step each is at (pgrelay.saga_list). */
    list: (options: SagaListOptions = {}) =>
      mapErrors(async () => [
        ...(await connection.any(sql.type(sagaListRowSchema)`
          SELECT id, saga_type, version, status, compensation_reason, current_step, step_status, attempts, last_error, error,
                 created_at::text AS created_at, updated_at::text AS updated_at
          FROM pgrelay.saga_list(${options.status ?? null}, ${options.sagaType ?? null}, ${options.limit ?? 100})`)),
      ]),
    /** A running saga compensates its completed steps and ends 'cancelled'. InvalidStateError otherwise. */
    cancel: (sagaId: string, reason?: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.saga_cancel(${sagaId}::uuid, ${reason ?? 'cancelled'})`);
      }),
    /** Retries a 'failed' saga's compensation that could not finish (after the cause was fixed). */
    retry: (sagaId: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.saga_retry(${sagaId}::uuid)`);
      }),
    /** For a 'failed' saga: declares a step's compensation done by hand; the remaining ones go on. */
    skip: (sagaId: string, step: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.saga_skip_step(${sagaId}::uuid, ${step})`);
      }),
    /** For a 'failed' saga settled outside pgrelay: it ends 'compensated' with the note kept. */
    resolve: (sagaId: string, note: string) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`SELECT pgrelay.saga_resolve(${sagaId}::uuid, ${note})`);
      }),
    /**
     * Progresses up to maxSagas sagas with something due: SQL steps after their backoff, expired
     * worker leases (timeouts), passed deadlines (pgrelay.saga_tick). Returns how many it advanced.
     */
    tick: (maxSagas = 100) =>
      mapErrors(() => connection.oneFirst(sql.type(countSchema)`SELECT pgrelay.saga_tick(${maxSagas}) AS n`)),
    /** Claims up to maxTasks due worker steps of a queue (pgrelay.saga_lease). */
    lease: (queue: string, worker: string, maxTasks = 10, leaseSeconds?: number) =>
      mapErrors(async () => {
        const rows = await connection.any(sql.type(sagaTaskRowSchema)`
          SELECT saga_id, saga_type, step, step_index, phase, queue, attempt, idempotency_key, input, context, lease_expires_at
          FROM pgrelay.saga_lease(${queue}, ${worker}, ${maxTasks}, ${leaseSeconds ?? null}::numeric)`);
        return rows.map(toSagaTask);
      }),
    /** Completes a leased step; output (JSON) is merged into the context. LeaseLostError if the attempt no longer holds it. */
    complete: (task: SagaTaskRef, output: unknown = {}) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`
          SELECT pgrelay.saga_task_complete(${task.sagaId}::uuid, ${task.step}, ${task.attempt}, ${toJsonText(output ?? {})}::jsonb)`);
      }),
    /**
     * Completes many leased steps in one statement and one transaction (one commit for all). All or
     * nothing: if any attempt lost its lease, nothing is written and LeaseLostError is thrown.
     */
    completeMany: (outcomes: readonly SagaTaskOutcome[]) =>
      mapErrors(async () => {
        if (outcomes.length === 0) return;
        const rows = outcomes.map((o) => ({ saga_id: o.sagaId, step: o.step, attempt: o.attempt, output: o.output ?? {} }));
        // Sagas locked in id order, so concurrent batches cannot deadlock.
        await connection.query(sql.type(voidSchema)`
          SELECT count(pgrelay.saga_task_complete(t.saga_id, t.step, t.attempt, t.output)::text) AS n
          FROM (SELECT * FROM jsonb_to_recordset(${toJsonText(rows)}::jsonb) AS r(saga_id uuid, step text, attempt integer, output jsonb)
                ORDER BY r.saga_id, r.step OFFSET 0) AS t`);
      }),
    /** Records a failed attempt: retried after backoff up to max_attempts, unless retryable is false. */
    fail: (task: SagaTaskRef, error: string, options: { retryable?: boolean } = {}) =>
      mapErrors(async () => {
        await connection.query(sql.type(voidSchema)`
          SELECT pgrelay.saga_task_fail(${task.sagaId}::uuid, ${task.step}, ${task.attempt}, ${error}, ${options.retryable ?? true})`);
      }),
    /** Extends a leased step's lease (by leaseSeconds, default the step's timeout). Returns the new expiry. */
    heartbeat: (task: SagaTaskRef, leaseSeconds?: number) =>
      mapErrors(() =>
        connection.oneFirst(sql.type(expiresSchema)`
          SELECT pgrelay.saga_task_heartbeat(${task.sagaId}::uuid, ${task.step}, ${task.attempt}, ${leaseSeconds ?? null}::numeric) AS expires_at`),
      ),
  };
}
export type SagaMethods = ReturnType<typeof sagaMethods>;

export type { Json };
