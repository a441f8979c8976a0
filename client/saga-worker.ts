import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { LeaseLostError, NotFoundError, mapError } from './errors.js';
import type { RunnableSaga, StepRun } from './define-saga.js';
import type { SagaMethods, SagaTask } from './sagas.js';

/** pino-compatible: the worker logs lost leases and errors it recovers from. */
export type SagaWorkerLogger = {
  warn(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
};

export type SagaWorkerOptions = {
  /** A pgrelay client (or anything with its sagas methods). */
  client: { sagas: SagaMethods };
  /** The sagas whose TypeScript handlers this worker runs; it leases from their queues. */
  sagas: readonly RunnableSaga[];
  /** Tasks held (run and being recorded) at once. Default 10. */
  concurrency?: number;
  /** Lease owner name; default host-pid-random. */
  worker?: string;
  /** Tasks per lease call, at most; default concurrency. */
  batchSize?: number;
  /** Lease length in seconds; default each step's timeout. Heartbeats at a third of it keep a running step. */
  leaseSeconds?: number;
  /** Poll backoff when there is nothing to lease: from pollMinMs, doubling, to pollMaxMs. Default 10 ms → 500 ms. */
  pollMinMs?: number;
  pollMaxMs?: number;
  /**
   * Also run pgrelay.saga_tick every tickIntervalMs (expired leases, retries of SQL steps,
   * deadlines), for when no daemon drives sagas. Default 1000; 0 turns it off.
   */
  tickIntervalMs?: number;
  /** A handler running longer than this is aborted (signal) and its attempt failed. Default: no limit. */
  handlerTimeoutMs?: number;
  /** Most finished tasks recorded in one transaction. Default 500. */
  maxCompleteBatch?: number;
  logger?: SagaWorkerLogger;
  /** Called with every error the worker recovers from (lost leases included). */
  onError?: (error: unknown, task?: SagaTask) => void;
};

export type SagaWorkerStats = {
  leased: number;
  completed: number;
  failed: number;
  leaseLost: number;
  errors: number;
  /** Transactions that recorded more than one finished task. */
  batches: number;
  ticks: number;
};

export type SagaWorker = {
  readonly name: string;
  readonly stats: SagaWorkerStats;
  /** Resolves when the worker has stopped. */
  readonly done: Promise<void>;
  /**
   * Stops leasing, lets in-flight tasks finish and records them, then resolves. After timeoutMs
   * (default: none) the handlers still running are aborted (signal) and their attempts failed.
   */
  stop(options?: { timeoutMs?: number }): Promise<void>;
};

type Outcome = { ok: true; output: unknown } | { ok: false; error: string; retryable: boolean };
type Pending = { task: SagaTask; outcome: Outcome; done: () => void };

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

const defaultLogger: SagaWorkerLogger = {
  warn: (fields, message) => process.stderr.write(`${JSON.stringify({ level: 'warn', msg: message, ...fields })}\n`),
  error: (fields, message) => process.stderr.write(`${JSON.stringify({ level: 'error', msg: message, ...fields })}\n`),
};

const errorText = (error: unknown): string => {
  const text = error instanceof Error ? `${error.name === 'Error' ? '' : `${error.name}: `}${error.message}` : String(error);
  return text.slice(0, 4000);
};

const taskFields = (task: SagaTask): Record<string, unknown> => ({
  saga_id: task.sagaId,
  saga_type: task.sagaType,
  step: task.step,
  phase: task.phase,
  attempt: task.attempt,
});

/** A sleep that wake() ends early; a wake() while not sleeping makes the next sleep return at once. */
function createNap() {
  let wakeUp: (() => void) | null = null;
  let woken = false;
  return {
    sleep: (ms: number): Promise<void> => {
      if (woken) {
        woken = false;
        return Promise.resolve();
      }
      return new Promise((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          wakeUp = null;
          resolve();
        };
        const timer = setTimeout(done, ms);
        wakeUp = done;
      });
    },
    wake: (): void => {
      if (wakeUp === null) woken = true;
      else {
        woken = false;
        wakeUp();
      }
    },
  };
}

/**
 * Runs the TypeScript steps of sagas: leases due steps (set-based, SKIP LOCKED) from the sagas'
 * queues, runs their handlers with bounded concurrency, heartbeats long ones, and records each
 * outcome with its attempt number (the fencing token), many per transaction. A result whose lease
 * was lost (LeaseLostError, PR005) is dropped and logged: another attempt owns the step.
 */
export function createSagaWorker(options: SagaWorkerOptions): SagaWorker {
  const { sagas } = options.client;
  const name = options.worker ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  const concurrency = Math.max(1, options.concurrency ?? 10);
  const batchSize = Math.max(1, Math.min(options.batchSize ?? concurrency, 10_000));
  const pollMinMs = options.pollMinMs ?? 10;
  const pollMaxMs = Math.max(pollMinMs, options.pollMaxMs ?? 500);
  const tickIntervalMs = options.tickIntervalMs ?? 1000;
  const maxCompleteBatch = Math.max(1, options.maxCompleteBatch ?? 500);
  const logger = options.logger ?? defaultLogger;
  const stats: SagaWorkerStats = { leased: 0, completed: 0, failed: 0, leaseLost: 0, errors: 0, batches: 0, ticks: 0 };

  const byType = new Map<string, RunnableSaga>();
  for (const saga of options.sagas) {
    if (byType.has(saga.type)) throw new TypeError(`createSagaWorker: saga type ${JSON.stringify(saga.type)} given twice`);
    byType.set(saga.type, saga);
  }
  const queues = [...new Set(options.sagas.flatMap((saga) => saga.queues))];

  let stopping = false;
  let inFlight = 0;
  const running = new Map<SagaTask, AbortController>();
  const settled = new Set<Promise<void>>();
  const leaseNap = createNap();
  const tickNap = createNap();

  const report = (error: unknown, task?: SagaTask): void => {
    stats.errors += 1;
    options.onError?.(error, task);
  };

  /** Seconds of lease each heartbeat asks for, and how long the first lease is. */
  const leaseLength = (task: SagaTask): number => {
    if (options.leaseSeconds !== undefined) return options.leaseSeconds;
    const step = byType.get(task.sagaType)?.definition.steps.find((s) => s.name === task.step);
    return step?.timeout ?? 30;
  };

  // Recording outcomes: what finishes while a transaction is in flight goes into the next one.
  const pending: Pending[] = [];
  let flushing = false;

  const recordOne = async (item: Pending): Promise<void> => {
    const { task, outcome } = item;
    for (let attempt = 0; ; attempt += 1) {
      try {
        if (outcome.ok) await sagas.complete(task, outcome.output);
        else await sagas.fail(task, outcome.error, { retryable: outcome.retryable });
        if (outcome.ok) stats.completed += 1;
        else stats.failed += 1;
        return;
      } catch (error) {
        const mapped = mapError(error);
        if (mapped instanceof LeaseLostError || mapped instanceof NotFoundError) {
          stats.leaseLost += 1;
          logger.warn({ ...taskFields(task), worker: name, error: mapped.message }, 'saga step result dropped: the lease was lost');
          report(mapped, task);
          return;
        }
        report(mapped, task);
        if (attempt >= 8 || (stopping && attempt >= 3)) {
          logger.error({ ...taskFields(task), worker: name, error: errorText(mapped) }, 'could not record a saga step result; the lease will expire and the step be retried');
          return;
        }
        await sleep(Math.min(50 * 2 ** attempt, 2_000));
      }
    }
  };

  const flush = async (): Promise<void> => {
    flushing = true;
    try {
      while (pending.length > 0) {
        const batch = pending.splice(0, maxCompleteBatch);
        let singles = batch;
        const oks = batch.filter((item) => item.outcome.ok);
        if (oks.length > 1) {
          try {
            await sagas.completeMany(oks.map((item) => ({ ...item.task, output: (item.outcome as { output: unknown }).output })));
            stats.completed += oks.length;
            stats.batches += 1;
            for (const item of oks) item.done();
            singles = batch.filter((item) => !item.outcome.ok);
          } catch {
            // One lost lease (or any error) undoes the whole batch: record them one by one.
          }
        }
        await Promise.all(singles.map((item) => recordOne(item).finally(item.done)));
        leaseNap.wake(); // the sagas moved on: their next steps may be due now
      }
    } finally {
      flushing = false;
    }
  };

  const record = (task: SagaTask, outcome: Outcome): Promise<void> =>
    new Promise((resolve) => {
      pending.push({ task, outcome, done: resolve });
      if (!flushing) void flush();
    });

  const runTask = async (task: SagaTask): Promise<void> => {
    const controller = new AbortController();
    running.set(task, controller);
    const length = leaseLength(task);
    let localDeadline = Date.now() + length * 1000;
    let lost = false;
    let timer: NodeJS.Timeout | undefined;
    let handlerTimer: NodeJS.Timeout | undefined;

    const heartbeat = async (): Promise<void> => {
      if (lost) throw new LeaseLostError(`saga ${task.sagaId} step ${task.step}: the lease was lost`, 'PR005', 'attempt');
      try {
        await sagas.heartbeat(task, options.leaseSeconds);
        localDeadline = Date.now() + length * 1000;
      } catch (error) {
        const mapped = mapError(error);
        if (mapped instanceof LeaseLostError || mapped instanceof NotFoundError) {
          lost = true;
          controller.abort(mapped);
        }
        throw mapped;
      }
    };
    const scheduleHeartbeat = (): void => {
      timer = setTimeout(() => {
        if (Date.now() > localDeadline) {
          lost = true;
          controller.abort(new LeaseLostError(`saga ${task.sagaId} step ${task.step}: no heartbeat got through before the lease ended`, 'PR005', 'attempt'));
          return;
        }
        heartbeat()
          .catch((error) => {
            if (!lost) report(error, task);
          })
          .finally(() => {
            if (!lost && !controller.signal.aborted) scheduleHeartbeat();
          });
      }, Math.max(50, (length * 1000) / 3));
    };

    let outcome: Outcome;
    try {
      const saga = byType.get(task.sagaType);
      const handler = saga?.handler(task.step, task.phase);
      if (saga === undefined || handler === undefined) {
        outcome = { ok: false, error: `worker ${name} has no ${task.phase} handler for step ${task.step} of saga type ${task.sagaType}`, retryable: true };
      } else {
        const parsed = saga.input.safeParse(task.input);
        if (!parsed.success) {
          outcome = { ok: false, error: `input does not match the saga's schema: ${parsed.error.message}`, retryable: false };
        } else {
          scheduleHeartbeat();
          const run: StepRun<unknown> = {
            input: parsed.data,
            context: task.context,
            attempt: task.attempt,
            idempotencyKey: task.idempotencyKey,
            signal: controller.signal,
            sagaId: task.sagaId,
            sagaType: task.sagaType,
            step: task.step,
            phase: task.phase,
            heartbeat,
          };
          const aborted = new Promise<never>((_, reject) => {
            controller.signal.addEventListener('abort', () => reject(controller.signal.reason), { once: true });
          });
          aborted.catch(() => {});
          if (options.handlerTimeoutMs !== undefined) {
            const ms = options.handlerTimeoutMs;
            handlerTimer = setTimeout(() => controller.abort(new Error(`handler timed out after ${ms} ms`)), ms);
          }
          const output = await Promise.race([Promise.resolve().then(() => handler(run as StepRun<never>)), aborted]);
          outcome = { ok: true, output: output === undefined ? {} : output };
        }
      }
    } catch (error) {
      const retryable = !(error !== null && typeof error === 'object' && (error as { retryable?: unknown }).retryable === false);
      outcome = { ok: false, error: errorText(error), retryable };
    } finally {
      clearTimeout(timer);
      clearTimeout(handlerTimer);
    }
    if (lost) {
      stats.leaseLost += 1;
      logger.warn({ ...taskFields(task), worker: name }, 'saga step abandoned: the lease was lost');
      return;
    }
    await record(task, outcome);
  };

  const start = (task: SagaTask): void => {
    inFlight += 1;
    stats.leased += 1;
    const promise = runTask(task)
      .catch((error) => report(error, task))
      .finally(() => {
        inFlight -= 1;
        running.delete(task);
        settled.delete(promise);
        leaseNap.wake();
      });
    settled.add(promise);
  };

  const leaseLoop = async (): Promise<void> => {
    let idleMs = pollMinMs;
    let errorMs = 50;
    let next = 0;
    while (!stopping) {
      if (inFlight >= concurrency) {
        await leaseNap.sleep(pollMaxMs);
        continue;
      }
      let got = 0;
      for (let i = 0; i < queues.length && !stopping; i += 1) {
        const free = concurrency - inFlight;
        if (free <= 0) break;
        const queue = queues[next % queues.length]!;
        next += 1;
        try {
          const tasks = await sagas.lease(queue, name, Math.min(free, batchSize), options.leaseSeconds);
          errorMs = 50;
          got += tasks.length;
          for (const task of tasks) start(task);
        } catch (error) {
          report(error);
          logger.warn({ worker: name, queue, error: errorText(error) }, 'saga lease failed');
          await sleep(errorMs);
          errorMs = Math.min(errorMs * 2, 5_000);
        }
      }
      if (stopping) break;
      if (got > 0) {
        idleMs = pollMinMs;
        continue;
      }
      await leaseNap.sleep(idleMs);
      idleMs = Math.min(idleMs * 2, pollMaxMs);
    }
  };

  const tickLoop = async (): Promise<void> => {
    if (tickIntervalMs <= 0) return;
    while (!stopping) {
      await tickNap.sleep(tickIntervalMs);
      if (stopping) return;
      try {
        let advanced: number;
        do {
          advanced = await sagas.tick(100);
          stats.ticks += advanced;
          if (advanced > 0) leaseNap.wake();
        } while (advanced >= 100 && !stopping);
      } catch (error) {
        report(error);
        logger.warn({ worker: name, error: errorText(error) }, 'saga tick failed');
      }
    }
  };

  if (queues.length === 0 && tickIntervalMs <= 0) {
    logger.warn({ worker: name }, 'saga worker has no TypeScript steps to run');
  }
  const loops = Promise.all([queues.length > 0 ? leaseLoop() : Promise.resolve(), tickLoop()]);
  let stopped: Promise<void> | undefined;
  let resolveDone: () => void = () => {};
  const done = new Promise<void>((resolve) => {
    resolveDone = resolve;
  });

  return {
    name,
    stats,
    done,
    stop: (stopOptions = {}) =>
      (stopped ??= (async () => {
        stopping = true;
        leaseNap.wake();
        tickNap.wake();
        await loops;
        const timeoutMs = stopOptions.timeoutMs;
        let giveUp: NodeJS.Timeout | undefined;
        if (timeoutMs !== undefined) {
          giveUp = setTimeout(() => {
            for (const controller of running.values()) controller.abort(new Error('the saga worker is stopping'));
          }, timeoutMs);
        }
        while (settled.size > 0) await Promise.all([...settled]);
        clearTimeout(giveUp);
        resolveDone();
      })()),
  };
}
