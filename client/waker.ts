import pgListen from 'pg-listen';

type CreateSubscriber = typeof import('pg-listen').default;
// pg-listen is CommonJS with an `exports.default`: under Node's ESM the default import is the
// module object, whose .default is the factory.
const createSubscriber: CreateSubscriber =
  (pgListen as unknown as { default?: CreateSubscriber }).default ?? (pgListen as unknown as CreateSubscriber);

/**
 * One LISTEN connection on channel 'pgrelay' shared by every loop of a process. wait() resolves
 * on the next notification, on a reconnect (NOTIFY is lost while disconnected, so a reconnect
 * counts as a wake-up), on wakeAll(), or after timeoutMs.
 */
export type Waker = {
  /**
   * With `since` (a generation read earlier) it resolves at once when a wake-up came in since
   * then: a ring that arrives while its loop is busy fetching is not lost.
   */
  wait(timeoutMs: number, since?: number): Promise<'notified' | 'timeout'>;
  /** Counts wake-ups (notifications, reconnects, wakeAll); read it before a fetch, pass it to wait(). */
  readonly generation: number;
  wakeAll(): void;
  readonly notifications: number;
  readonly reconnects: number;
  close(): Promise<void>;
};

export type WakerOptions = { onError?: (error: Error) => void; onReconnect?: () => void };

export async function createWaker(connectionString: string, options: WakerOptions = {}): Promise<Waker> {
  const subscriber = createSubscriber(
    { connectionString, application_name: 'pgrelay-listen' },
    { parse: (payload: string) => payload, retryLimit: Infinity, retryTimeout: Infinity, retryInterval: (attempt: number) => Math.min(100 * 2 ** attempt, 5_000), paranoidChecking: 10_000 },
  );
  const waiters = new Set<() => void>();
  let notifications = 0;
  let reconnects = 0;
  let generation = 0;
  const wakeAll = (): void => {
    generation += 1;
    for (const wake of [...waiters]) wake();
  };
  subscriber.notifications.on('pgrelay', () => {
    notifications += 1;
    wakeAll();
  });
  subscriber.events.on('reconnect', () => {
    reconnects += 1;
    options.onReconnect?.();
  });
  subscriber.events.on('connected', wakeAll);
  subscriber.events.on('error', (error: Error) => options.onError?.(error));
  await subscriber.connect();
  await subscriber.listenTo('pgrelay');
  return {
    wait: (timeoutMs, since) =>
      new Promise((resolve) => {
        if (since !== undefined && since !== generation) {
          resolve('notified');
          return;
        }
        const done = (result: 'notified' | 'timeout'): void => {
          clearTimeout(timer);
          waiters.delete(wake);
          resolve(result);
        };
        const wake = (): void => done('notified');
        const timer = setTimeout(() => done('timeout'), timeoutMs);
        waiters.add(wake);
      }),
    wakeAll,
    get generation() {
      return generation;
    },
    get notifications() {
      return notifications;
    },
    get reconnects() {
      return reconnects;
    },
    close: async () => {
      wakeAll();
      await subscriber.close();
    },
  };
}
