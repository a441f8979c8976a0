import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RelayMetrics } from './metrics-types.js';

/** Prometheus series of one daemon, on a registry of its own (never the global one). */
export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'pgrelay_process_' });
  const labels = ['subscription'] as const;
  const delivered = new Counter({ name: 'pgrelay_delivered_total', help: 'Messages acknowledged by a sink', labelNames: labels, registers: [registry] });
  const failed = new Counter({ name: 'pgrelay_failed_total', help: 'Failed delivery attempts', labelNames: labels, registers: [registry] });
  const dead = new Counter({ name: 'pgrelay_dead_lettered_total', help: 'Messages dead-lettered after max_attempts', labelNames: labels, registers: [registry] });
  const latency = new Histogram({
    name: 'pgrelay_delivery_latency_seconds',
    help: 'From a message being committed to its acknowledgement by the sink',
    labelNames: labels,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [registry],
  });
  const lagMessages = new Gauge({ name: 'pgrelay_lag_messages', help: 'Messages not yet delivered', labelNames: ['subscription', 'partition'], registers: [registry] });
  const lagSeconds = new Gauge({ name: 'pgrelay_lag_seconds', help: 'Age of the oldest undelivered message', labelNames: ['subscription', 'partition'], registers: [registry] });
  const stallSeconds = new Gauge({ name: 'pgrelay_horizon_stall_seconds', help: 'How long the oldest open transaction has held the read horizon', registers: [registry] });
  const stallPid = new Gauge({ name: 'pgrelay_horizon_stall_pid', help: 'Backend pid holding the read horizon (0: none or a prepared transaction)', registers: [registry] });

  const syncPending = new Gauge({ name: 'pgrelay_sync_lag_messages', help: 'Source messages a sync has not applied', labelNames: ['sync'], registers: [registry] });
  const syncSeconds = new Gauge({ name: 'pgrelay_sync_lag_seconds', help: 'Age of the oldest source message a sync has not applied', labelNames: ['sync'], registers: [registry] });

  const relay: RelayMetrics = {
    delivered: (subscription, count) => delivered.inc({ subscription }, count),
    failed: (subscription, count) => failed.inc({ subscription }, count),
    deadLettered: (subscription, count) => dead.inc({ subscription }, count),
    deliveryLatency: (subscription, seconds) => latency.observe({ subscription }, seconds),
    setLag: (subscription, partition, pending, seconds) => {
      lagMessages.set({ subscription, partition: String(partition) }, pending);
      lagSeconds.set({ subscription, partition: String(partition) }, seconds);
    },
    setHorizonStall: (seconds, pid) => {
      stallSeconds.set(seconds);
      stallPid.set(pid ?? 0);
    },
    setSyncLag: (sync, pending, seconds) => {
      syncPending.set({ sync }, pending);
      syncSeconds.set({ sync }, seconds);
    },
  };
  return { registry, relay, render: () => registry.metrics(), contentType: registry.contentType };
}
