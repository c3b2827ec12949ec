import type { Bus } from "@stowage/bus";
import type { CAPABILITIES } from "@stowage/core";
import type { Database, OperationRow, Queryable, Sql } from "@stowage/store";
import type { Logger } from "@stowage/telemetry";
import type { ControllerConfig } from "./config.js";
import type { LiveView } from "./live-view.js";
import type { ControllerMetrics } from "./metrics.js";

/**
 * Mints and revokes agents' NATS credentials (decentralised JWT auth; nats-auth.ts). Absent when NATS runs
 * without per-agent credentials (a loopback cluster).
 */
export interface NatsAuthority {
  /**
   * A user JWT for an agent's NATS public key ("U..."), allowing only its host's subjects, until `expiresAt`.
   * `sql` is the caller's transaction when there is one (PGlite has a single connection: a query outside the
   * transaction would wait for it for ever).
   */
  mintAgentJwt(hostId: string, publicKey: string, expiresAt: Date, sql?: Queryable): Promise<string>;
  /**
   * Makes the NATS server refuse these user keys from now on and close their connections: the account JWT,
   * with every revoked key the database holds (host_certificates), is pushed to the server. Idempotent.
   */
  pushRevocations(): Promise<void>;
}

/** What every part of the controller works with. */
export interface ControllerContext {
  config: ControllerConfig;
  db: Database;
  sql: Sql;
  bus: Bus;
  log: Logger;
  metrics: ControllerMetrics;
  /** Agents' NATS credentials; undefined without NATS JWT auth. */
  natsAuthority?: NatsAuthority;
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
