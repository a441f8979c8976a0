import type { z } from 'zod';
import type { BackoffOptions } from './subscriptions.js';
import type { SagaDefinitionJson, SagaHandlerRef, SagaMethods, SagaStartOptions, SagaStepJson } from './sagas.js';

/** What a worker step's handler receives. */
export type StepRun<I> = {
  /** The saga's input, parsed by the saga's zod schema. */
  input: I;
  /** The saga's context: the outputs of the steps before, merged. */
  context: Record<string, unknown>;
  /** The attempt number (1, 2, ...): the fencing token of this lease. */
  attempt: number;
  /** Stable across attempts of this step and phase: pass it to remote services to deduplicate. */
  idempotencyKey: string;
  /** Aborted when the lease is lost (expired, handed to another worker, saga cancelled) or the worker gives up on stop(). */
  signal: AbortSignal;
  sagaId: string;
  sagaType: string;
  step: string;
  phase: 'action' | 'compensation';
  /** Extends the lease now. The worker also heartbeats by itself at a third of the lease. */
  heartbeat(): Promise<void>;
};

/**
 * A worker step's action or compensation: returns JSON (an object is merged into the saga's
 * context; anything else is stored under the step's name). Throwing fails the attempt: it is
 * retried after backoff up to maxAttempts, unless the error is a NonRetryableError.
 */
export type StepHandler<I> = (run: StepRun<I>) => unknown;

/** A step failure that must not be retried: the action fails for good at once (and the saga compensates). */
export class NonRetryableError extends Error {
  readonly retryable = false;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NonRetryableError';
  }
}

export type SagaStepOptions<I> = {
  /** 1-100 characters of [A-Za-z0-9._-], unique in the saga. */
  name: string;
  /** A TypeScript handler (run by createSagaWorker), {sql: 'schema.function'} or {worker: 'queue'} served elsewhere. */
  action: StepHandler<I> | SagaHandlerRef;
  /** Undoes the action when a later step fails, the saga is cancelled or its deadline passes. */
  compensate?: StepHandler<I> | SagaHandlerRef | null;
  /** The queue of this step's TypeScript handlers; default the saga's queue (its type). */
  queue?: string;
  /** Tries of the action (and of the compensation) before giving up. Default 3. */
  maxAttempts?: number;
  /** Seconds a worker may hold the step without a heartbeat before the attempt counts as timed out. Default 30. */
  timeout?: number;
  /** Delay between attempts: { initial_ms (1000), max_ms (300000), multiplier (2), jitter (0.2) }. */
  backoff?: BackoffOptions;
};

export type DefineSagaOptions<S extends z.ZodTypeAny> = {
  /** The saga type: 1-190 characters of [A-Za-z0-9._-]. */
  type: string;
  /** Validates the input on start() and parses it for the handlers. */
  input: S;
  steps: readonly SagaStepOptions<z.output<S>>[];
  /** Seconds from start after which a still running saga compensates. */
  deadline?: number;
  /** The queue of the TypeScript handlers; default the saga type. */
  queue?: string;
};

export type Saga<S extends z.ZodTypeAny = z.ZodTypeAny> = {
  readonly type: string;
  /** The JSON definition handed to pgrelay.saga_define. */
  readonly definition: SagaDefinitionJson;
  readonly input: S;
  /** The queues the TypeScript handlers of this saga serve. */
  readonly queues: readonly string[];
  /** The TypeScript handler of a step's action or compensation, if it has one. */
  handler(step: string, phase: 'action' | 'compensation'): StepHandler<z.output<S>> | undefined;
  /** Validates an input (throws a ZodError) and returns it parsed. */
  parseInput(input: z.input<S>): z.output<S>;
  /** Registers the definition (pgrelay.saga_define); returns the version in force. */
  register(client: { sagas: SagaMethods }): Promise<number>;
  /** Starts a saga of this type with a validated input; returns its id. */
  start(client: { sagas: SagaMethods }, input: z.input<S>, options?: SagaStartOptions): Promise<string>;
};

/**
 * What createSagaWorker needs of a saga. Any Saga<S> is one, whatever its input schema (a
 * Saga<ZodObject<...>> is not a Saga<ZodTypeAny>: its handlers take the narrower input).
 */
export type RunnableSaga = {
  readonly type: string;
  readonly definition: SagaDefinitionJson;
  readonly input: z.ZodTypeAny;
  readonly queues: readonly string[];
  handler(step: string, phase: 'action' | 'compensation'): StepHandler<never> | undefined;
};

const NAME = /^[A-Za-z0-9._-]{1,100}$/;
const QUEUE = /^[A-Za-z0-9._-]{1,200}$/;

const isHandler = <I>(value: StepHandler<I> | SagaHandlerRef | null | undefined): value is StepHandler<I> => typeof value === 'function';

/**
 * Defines a saga: its steps in order, each an action and an optional compensation that run as SQL
 * functions in the database or as TypeScript handlers in createSagaWorker. Register it with
 * register(client) (or client.sagas.define(saga)) before starting sagas.
 */
export function defineSaga<S extends z.ZodTypeAny>(options: DefineSagaOptions<S>): Saga<S> {
  const queue = options.queue ?? options.type;
  if (!/^[A-Za-z0-9._-]{1,190}$/.test(options.type)) {
    throw new TypeError(`defineSaga: type must be 1-190 characters of [A-Za-z0-9._-], got ${JSON.stringify(options.type)}`);
  }
  if (options.steps.length === 0) throw new TypeError(`defineSaga(${options.type}): steps must not be empty`);
  const handlers = new Map<string, StepHandler<z.output<S>>>();
  const queues = new Set<string>();
  const steps = options.steps.map((step, index): SagaStepJson => {
    if (!NAME.test(step.name)) throw new TypeError(`defineSaga(${options.type}): steps[${index}].name must be 1-100 characters of [A-Za-z0-9._-]`);
    if (options.steps.findIndex((other) => other.name === step.name) !== index) {
      throw new TypeError(`defineSaga(${options.type}): duplicate step name ${JSON.stringify(step.name)}`);
    }
    const stepQueue = step.queue ?? queue;
    const ref = (handler: StepHandler<z.output<S>> | SagaHandlerRef, phase: 'action' | 'compensation'): SagaHandlerRef => {
      if (!isHandler(handler)) return handler;
      if (!QUEUE.test(stepQueue)) throw new TypeError(`defineSaga(${options.type}): queue must be 1-200 characters of [A-Za-z0-9._-]`);
      handlers.set(`${step.name}\u001f${phase}`, handler);
      queues.add(stepQueue);
      return { worker: stepQueue };
    };
    const json: SagaStepJson = { name: step.name, action: ref(step.action, 'action') };
    if (step.compensate !== undefined && step.compensate !== null) json.compensation = ref(step.compensate, 'compensation');
    if (step.maxAttempts !== undefined) json.max_attempts = step.maxAttempts;
    if (step.timeout !== undefined) json.timeout = step.timeout;
    if (step.backoff !== undefined) json.backoff = step.backoff;
    return json;
  });
  const definition: SagaDefinitionJson = { steps, ...(options.deadline === undefined ? {} : { deadline: options.deadline }) };
  const parseInput = (input: z.input<S>): z.output<S> => options.input.parse(input) as z.output<S>;
  return {
    type: options.type,
    definition,
    input: options.input,
    queues: [...queues],
    handler: (step, phase) => handlers.get(`${step}\u001f${phase}`),
    parseInput,
    register: (client) => client.sagas.define(options.type, definition),
    start: async (client, input, startOptions) => {
      parseInput(input);
      return client.sagas.start(options.type, input, startOptions);
    },
  };
}
