export { createClient, type ClientOptions, type PgrelayClient } from './client.js';
export { createBarePool, createPgrelayPool, createResultParserInterceptor, createTypeParsers } from './pool.js';
export { migrate, migrationStatus, installScript, type MigrateOptions, type MigrateResult, type MigrationStatus } from './migrate.js';
export { cursorAfter, read, publish, publishMany, horizonStall, type ReadOptions, type HorizonStall } from './log.js';
export {
  PgrelayError,
  InvalidArgumentError,
  PayloadTooLargeError,
  NotFoundError,
  ConcurrencyError,
  LeaseLostError,
  IdempotencyConflictError,
  InvalidStateError,
  SQLSTATES,
  mapError,
} from './errors.js';
export { messageSchema, START, type Cursor, type Message, type PublishInput, type PublishOptions, type Json } from './schemas.js';
export {
  subscriptionMethods,
  type SinkDescription,
  type SubscribeOptions,
  type BackoffOptions,
  type Subscription,
  type PartitionLag,
  type DeadLetter,
} from './subscriptions.js';
export { startConsumer, deliverBatch, type Consumer, type ConsumeOptions, type Delivery, type Handler, type BatchOutcome, type PgQueryable } from './consume.js';
export { createWaker, type Waker } from './waker.js';
export { syncMethods, type SyncMethods, type SyncTarget, type SyncOptions, type SyncStatus } from './sync.js';
export { inboxReceive, inboxExpire, inboxMethods, type InboxMethods, type InboxExpireOptions } from './inbox.js';
export { createInboxHandler, type InboxDelivery, type InboxHandler } from './inbox-handler.js';
export {
  idempotent,
  idempotencyBegin,
  idempotencyComplete,
  idempotencyAbandon,
  idempotencyExpire,
  idempotencyMethods,
  requestFingerprint,
  stableStringify,
  IdempotencyInProgressError,
  type IdempotencyMethods,
  type IdempotencyStatus,
  type IdempotencyBegin,
  type IdempotencyBeginOptions,
  type IdempotentOptions,
} from './idempotency.js';
export {
  aggregate,
  defineEvent,
  streamMethods,
  streamEventSchema,
  type Aggregate,
  type AggregateOptions,
  type EventDefinition,
  type EventInput,
  type EventReducer,
  type ExpectedVersion,
  type FoldOptions,
  type ReadStreamOptions,
  type StreamEvent,
  type StreamMethods,
  type TypedEvent,
} from './events.js';
export { projectionMethods, projectionLagSchema, type ProjectionLag, type ProjectionMethods, type ProjectionDefineOptions } from './projections.js';
export {
  sagaMethods,
  sagaStatusSchema,
  sagaStepStatusSchema,
  sagaTaskRowSchema,
  sagaListRowSchema,
  TERMINAL_SAGA_STATUSES,
  type SagaMethods,
  type SagaDefinitionJson,
  type SagaStepJson,
  type SagaHandlerRef,
  type SagaStatus,
  type SagaStatusName,
  type SagaStepStatus,
  type SagaStepStatusName,
  type SagaTask,
  type SagaTaskRef,
  type SagaTaskOutcome,
  type SagaStartOptions,
  type SagaLike,
  type SagaListRow,
  type SagaListOptions,
} from './sagas.js';
export { DEFAULT_MAX_GROUP_SIZE, DEFAULT_MAX_IN_FLIGHT, type SagaStartGroupingOption } from './saga-start-group.js';
export { defineSaga, NonRetryableError, type Saga, type RunnableSaga, type SagaStepOptions, type DefineSagaOptions, type StepHandler, type StepRun } from './define-saga.js';
export { createSagaWorker, type SagaWorker, type SagaWorkerOptions, type SagaWorkerStats, type SagaWorkerLogger } from './saga-worker.js';
export {
  cdcMethods,
  cdcTableSchema,
  cdcSnapshotProgressSchema,
  type CdcMethods,
  type CdcOptions,
  type CdcOperation,
  type CdcChange,
  type CdcTable,
  type CdcSnapshotOptions,
  type CdcSnapshotProgress,
} from './cdc.js';
