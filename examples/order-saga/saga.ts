// The order saga: reserve inventory -> charge the customer's account -> confirm the order, with
// release and refund as compensations. Reserve and confirm are SQL steps (they run inside the
// database, atomically with the saga's state); charge is a TypeScript step run by a saga worker,
// as a call to a payment provider would be. orderSagaSqlOnly is the same flow with every step in
// SQL: it needs no TypeScript worker at all (the daemon, or pg_cron, moves it along).
import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { defineSaga, NonRetryableError, type SagaDefinitionJson } from '../../client/index.js';

export const orderInput = z.object({
  order_id: z.string().min(1),
  sku: z.string().min(1),
  quantity: z.number().int().positive(),
  customer: z.string().min(1),
  amount: z.number().positive(),
  /** For demonstrations and tests: the payment provider fails this many first attempts. */
  flaky_attempts: z.number().int().min(0).optional(),
});
export type OrderInput = z.infer<typeof orderInput>;

const resultSchema = z.object({ result: z.unknown() });

/** The SQLSTATE the shop raises when a payment is refused for good (see schema.ts). */
const sqlStateOf = (error: unknown): string | undefined => {
  for (let e = error as { code?: unknown; cause?: unknown } | undefined, depth = 0; e !== undefined && e !== null && depth < 5; e = e.cause as typeof e, depth += 1) {
    if (typeof e.code === 'string') return e.code;
  }
  return undefined;
};

/**
 * The payment provider: here the shop's own accounts, called in a transaction of its own (not the
 * saga's), exactly as a remote API would be. The order id makes the call idempotent.
 */
async function callPaymentProvider(db: CommonQueryMethods, fn: 'charge' | 'refund', input: OrderInput, attempt: number): Promise<unknown> {
  const args = sql.jsonb(input as never);
  const context = sql.jsonb({ attempt } as never);
  try {
    return fn === 'charge'
      ? await db.oneFirst(sql.type(resultSchema)`SELECT shop.charge_account(${args}, ${context}) AS result`)
      : await db.oneFirst(sql.type(resultSchema)`SELECT shop.refund_account(${args}, ${context}) AS result`);
  } catch (error) {
    // A refusal is final: retrying cannot make the balance big enough.
    if (sqlStateOf(error) === 'SH402') throw new NonRetryableError(error instanceof Error ? error.message : String(error), { cause: error });
    throw error;
  }
}

/** The saga with its TypeScript step; `db` is where the payment provider lives. */
export function createOrderSaga(db: CommonQueryMethods) {
  return defineSaga({
    type: 'shop.order',
    input: orderInput,
    steps: [
      { name: 'reserve', action: { sql: 'shop.reserve_inventory' }, compensate: { sql: 'shop.release_inventory' }, maxAttempts: 1 },
      {
        name: 'charge',
        action: async ({ input, attempt }) => callPaymentProvider(db, 'charge', input, attempt),
        compensate: async ({ input, attempt }) => callPaymentProvider(db, 'refund', input, attempt),
        maxAttempts: 4,
        timeout: 10,
        backoff: { initial_ms: 20, max_ms: 200, multiplier: 2, jitter: 0.2 },
      },
      { name: 'confirm', action: { sql: 'shop.confirm_order' } },
    ],
  });
}

/** The same flow with every step in SQL. */
export const orderSagaSqlOnly: { type: string; definition: SagaDefinitionJson } = {
  type: 'shop.order-sql',
  definition: {
    steps: [
      { name: 'reserve', action: { sql: 'shop.reserve_inventory' }, compensation: { sql: 'shop.release_inventory' }, max_attempts: 1 },
      {
        name: 'charge',
        action: { sql: 'shop.charge_account' },
        compensation: { sql: 'shop.refund_account' },
        max_attempts: 4,
        backoff: { initial_ms: 20, max_ms: 200, multiplier: 2, jitter: 0.2 },
      },
      { name: 'confirm', action: { sql: 'shop.confirm_order' } },
    ],
  },
};
