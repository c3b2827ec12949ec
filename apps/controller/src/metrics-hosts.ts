import { hostHeartbeatAges, operationsUnfinishedByHost } from "@stowage/store";
import type { Registry } from "@stowage/telemetry";
import { inBatches, rowGauge, type ScrapeRead, shared } from "./metrics-scrape.js";

/** Hosts up and down, their heartbeat age and, given a provider, the commands waiting in their JetStream consumer. */
export function hostGauges(
  registry: Registry,
  read: ScrapeRead,
  pendingCommands?: (hostId: string) => Promise<number>,
) {
  const hosts = shared(500, () => read(hostHeartbeatAges));
  const gauges = {
    hostUp: rowGauge(registry, {
      name: "stowage_host_up",
      help: "1 when the host is up (heartbeating), 0 when down.",
      labelNames: ["host"],
      rows: hosts,
      labels: (r) => ({ host: r.id }),
      value: (r) => (r.state === "up" ? 1 : 0),
    }),
    heartbeatAge: rowGauge(registry, {
      name: "stowage_host_heartbeat_age_seconds",
      help: "Seconds since the host's last heartbeat.",
      labelNames: ["host"],
      rows: hosts,
      labels: (r) => ({ host: r.id }),
      value: (r) => r.age,
    }),
  };
  if (pendingCommands) jetstreamPendingGauge(registry, hosts, pendingCommands);
  return gauges;
}

/** Commands waiting per host, asked of JetStream 16 hosts at a time; a host that does not answer in 2 s is left out. */
function jetstreamPendingGauge(
  registry: Registry,
  hosts: () => Promise<readonly { id: string }[] | undefined>,
  pendingCommands: (hostId: string) => Promise<number>,
) {
  rowGauge(registry, {
    name: "stowage_jetstream_commands_pending",
    help: "Commands in the host's JetStream consumer not yet delivered or not yet acknowledged by its agent.",
    labelNames: ["host"],
    rows: async () => {
      const all = (await hosts()) ?? [];
      const counts = await inBatches(all, 16, 2000, (h) => pendingCommands(h.id));
      return all.map((h, i) => ({ id: h.id, n: counts[i] }));
    },
    labels: (r) => ({ host: r.id }),
    value: (r) => r.n,
  });
}

/** The outbox: operations not yet finished per host and state, and the age of the oldest. */
export function outboxGauges(registry: Registry, read: ScrapeRead) {
  const unfinished = shared(500, () => read(operationsUnfinishedByHost));
  return {
    operationsPending: rowGauge(registry, {
      name: "stowage_operations_pending",
      help: "Operations not yet finished, by host and state (pending: in the outbox; sent: published, no result yet).",
      labelNames: ["host", "state"],
      rows: unfinished,
      labels: (r) => ({ host: r.hostId, state: r.state }),
      value: (r) => r.n,
    }),
    operationsOldestAge: rowGauge(registry, {
      name: "stowage_operations_oldest_age_seconds",
      help: "Age of the oldest unfinished operation, by host and state (pending, sent); 0 when there is none.",
      labelNames: ["host", "state"],
      rows: unfinished,
      labels: (r) => ({ host: r.hostId, state: r.state }),
      value: (r) => r.oldest,
    }),
  };
}
