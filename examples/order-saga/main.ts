// A runnable order flow: `npm run build && DATABASE_URL=postgres://... node dist/examples/order-saga/main.js`.
// Installs pgrelay and the shop's tables, then runs three orders through the saga with a worker:
// one that completes, one the customer cannot pay for (the reservation is released), and one that
// is out of stock (nothing to undo). Prints each saga's end and the shop's tables.
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { createClient, createOrderSaga, createSagaWorker, migrate, SHOP_SCHEMA, TERMINAL_SAGA_STATUSES, type OrderInput } from './index.js';

const url = process.env.DATABASE_URL;
if (url === undefined || url === '') {
  process.stderr.write('set DATABASE_URL to a PostgreSQL database pgrelay may install itself into\n');
  process.exit(1);
}

await migrate({ connectionString: url, direction: 'up' });
const admin = new pg.Client({ connectionString: url });
await admin.connect();
await admin.query(SHOP_SCHEMA);
await admin.query(`INSERT INTO shop.inventory VALUES ('widget', 5) ON CONFLICT (sku) DO UPDATE SET available = 5`);
await admin.query(`INSERT INTO shop.accounts VALUES ('alice', 100), ('bob', 10) ON CONFLICT (customer) DO UPDATE SET balance = excluded.balance`);

const client = await createClient({ connectionString: url });
const orderSaga = createOrderSaga(client.connection);
await orderSaga.register(client);
const worker = createSagaWorker({ client, sagas: [orderSaga], concurrency: 10 });

const run = randomUUID().slice(0, 8);
const orders: OrderInput[] = [
  { order_id: `${run}-1`, sku: 'widget', quantity: 2, customer: 'alice', amount: 30, flaky_attempts: 1 },
  { order_id: `${run}-2`, sku: 'widget', quantity: 1, customer: 'bob', amount: 50 },
  { order_id: `${run}-3`, sku: 'widget', quantity: 10, customer: 'alice', amount: 5 },
];
const ids = await Promise.all(orders.map((order) => orderSaga.start(client, order, { idempotencyKey: order.order_id })));

for (const [i, id] of ids.entries()) {
  for (;;) {
    const status = await client.sagas.status(id);
    if (TERMINAL_SAGA_STATUSES.includes(status.status)) {
      const failed = status.steps.find((step) => step.status === 'failed');
      process.stdout.write(
        `order ${orders[i]!.order_id}: ${status.status}` +
          `${failed ? ` (${failed.name} failed: ${failed.last_error})` : ''}; steps ${status.steps.map((s) => `${s.name}=${s.status}`).join(' ')}\n`,
      );
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
await worker.stop();
const inventory = await admin.query(`SELECT available FROM shop.inventory WHERE sku = 'widget'`);
const accounts = await admin.query(`SELECT customer, balance::float AS balance FROM shop.accounts ORDER BY customer`);
process.stdout.write(`widgets available: ${inventory.rows[0].available}; balances: ${accounts.rows.map((r) => `${r.customer} ${r.balance}`).join(', ')}\n`);
await admin.end();
await client.end();
