/** What the relay service reports; daemon/metrics.ts turns it into Prometheus series. */
export type RelayMetrics = {
  delivered(subscription: string, count: number): void;
  failed(subscription: string, count: number): void;
  deadLettered(subscription: string, count: number): void;
  /** Seconds from a message's commit (created_at) to its acknowledgement by the sink. */
  deliveryLatency(subscription: string, seconds: number): void;
  /** Refreshed periodically from pgrelay.subscription_lag() and pgrelay.log_stall(). */
  setLag(subscription: string, partition: number, pendingMessages: number, lagSeconds: number): void;
  setHorizonStall(seconds: number, pid: number | null): void;
  /** A sync's lag: source messages after its checkpoint and the age of the oldest. */
  setSyncLag(sync: string, pendingMessages: number, lagSeconds: number): void;
};
