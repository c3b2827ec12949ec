import type { Bus } from "@stowage/bus";
import type { CAPABILITIES } from "@stowage/core";
import type { Database, OperationRow, Sql } from "@stowage/store";
import type { Logger } from "@stowage/telemetry";
import type { ControllerConfig } from "./config.js";
import type { LiveView } from "./live-view.js";
import type { ControllerMetrics } from "./metrics.js";

/** What every part of the controller works with. */
export interface ControllerContext {
  config: ControllerConfig;
  db: Database;
  sql: Sql;
  bus: Bus;
  log: Logger;
  metrics: ControllerMetrics;
  /** What each pool kind and format can do (core's CAPABILITIES); requests they cannot do are refused. */
  capabilities: typeof CAPABILITIES;
  /** The scheduler's live view (live-view.ts); made on first use when absent (scheduling.ts `liveView`). */
  placement?: LiveView;
  /** Wakes the relay at once (after a transaction wrote to the outbox). */
  kickRelay(): void;
  /**
   * Publishes operations that just committed, now (relay.ts `Dispatcher`); those it cannot publish stay
   * pending for the relay.
   */
  dispatch(ops: readonly OperationRow[]): void;
  /** Wakes watchers at once (after a change they may care about). */
  notifyChange(): void;
  /** Resolves at the next change notification, or after `ms`. */
  waitForChange(ms: number, signal?: AbortSignal): Promise<void>;
}
