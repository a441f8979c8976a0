// What the example uses from pgrelay (in your code: from 'pgrelay') and its own modules.
export { createClient, createSagaWorker, migrate, TERMINAL_SAGA_STATUSES } from '../../client/index.js';
export { createOrderSaga, orderInput, orderSagaSqlOnly, type OrderInput } from './saga.js';
export { SHOP_SCHEMA } from './schema.js';
