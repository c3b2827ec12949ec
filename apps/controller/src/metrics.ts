import { POISON_REASONS } from "@stowage/bus";
import type { Sql } from "@stowage/store";
import {
  counter,
  createRegistry,
  type GrowthForecastOptions,
  gauge,
  type Registry,
} from "@stowage/telemetry";
import { poolCapacityGauges } from "./metrics-capacity.js";
import { apiMetrics, operationMetrics, schedulerMetrics } from "./metrics-events.js";
import { hostGauges, outboxGauges } from "./metrics-hosts.js";
import { scrapeReader } from "./metrics-scrape.js";
import { findingGauges, resourceStateGauges } from "./metrics-state.js";

export { OPERATION_RESULTS } from "./metrics-events.js";
export { FINDING_KINDS, MIGRATION_PHASES } from "./metrics-state.js";

export type ControllerMetrics = ReturnType<typeof createControllerMetrics>;

export interface ControllerMetricsOptions {
  /**
   * Commands waiting in a host's JetStream consumer, not yet delivered or not yet acknowledged
   * (`pendingCommands(bus.jsm, hostId)` from @stowage/bus). Without it stowage_jetstream_commands_pending is not
   * exported.
   */
  pendingCommands?: (hostId: string) => Promise<number>;
  /** Tuning of the time-to-full forecast (window, minimum history). */
  forecast?: GrowthForecastOptions;
}

/**
 * The controller's metrics, in one registry. Counters are counted by the code that sees the events; gauges of state
 * are read from the database at scrape time (the truth), and a gauge whose read fails is left out of that scrape
 * rather than reported as zero.
 */
export function createControllerMetrics(getSql: () => Sql | undefined, opts: ControllerMetricsOptions = {}) {
  const registry: Registry = createRegistry();
  const read = scrapeReader(getSql);
  const metrics = {
    registry,
    ...operationMetrics(registry),
    ...schedulerMetrics(registry),
    ...apiMetrics(registry),
    ...findingGauges(registry, read),
    ...resourceStateGauges(registry, read),
    ...hostGauges(registry, read, opts.pendingCommands),
    ...outboxGauges(registry, read),
    ...leaseGauge(registry),
    ...poisonCounter(registry, CONTROLLER_CONSUMERS),
    ...forgedCounter(registry),
  };
  poolCapacityGauges(registry, read, opts.forecast);
  return metrics;
}

/** Whether this controller holds the lease of the singleton loops (lease.ts): 0 until it does. */
function leaseGauge(registry: Registry) {
  const leader = gauge(
    registry,
    "stowage_controller_leader",
    "1 while this controller holds the lease and runs the outbox relay and the reconciler, 0 while it follows (it still serves the API).",
  );
  leader.set(0);
  return { leader };
}

/** What the controller consumes from the bus: the result stream, and heartbeats and inventories (core NATS). */
export const CONTROLLER_CONSUMERS = ["results", "heartbeats", "inventories"] as const;

/**
 * Bus messages parked or dropped as poison (@stowage/bus poison.ts), by consumer and reason; every pair is
 * exported at 0 from the start, so an alert on its rate has data before the first one.
 */
export function poisonCounter(registry: Registry, consumers: readonly string[]) {
  const busPoison = counter(
    registry,
    "stowage_bus_poison_messages_total",
    "Bus messages parked (JetStream: terminated and copied to the dead-letter stream) or dropped (core NATS) as poison, by consumer and reason (undecodable, invalid, failed: its handling failed on every delivery up to the limit).",
    ["consumer", "reason"],
  );
  for (const consumer of consumers)
    for (const reason of POISON_REASONS) busPoison.inc({ consumer, reason }, 0);
  return { busPoison };
}

/** What a host may send only as itself: results of its own operations, its heartbeats, its inventories. */
export const FORGED_KINDS = ["result", "heartbeat", "inventory"] as const;

/**
 * Bus messages dropped because their sender is not the host they name: a heartbeat or inventory whose host is not
 * its subject's, a result on one host's subject for another host's operation (agents.ts, results.ts). Exported at
 * 0 from the start: any rise means a host's credentials are being misused.
 */
function forgedCounter(registry: Registry) {
  const busForged = counter(
    registry,
    "stowage_bus_forged_messages_total",
    "Bus messages dropped because the host they name is not the host whose subject they came on (a result: for an operation of another host), by kind (result, heartbeat, inventory).",
    ["kind"],
  );
  for (const kind of FORGED_KINDS) busForged.inc({ kind }, 0);
  return { busForged };
}
