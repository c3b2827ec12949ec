import { hostHeartbeatAges, operationsUnfinishedByHost } from "@stowage/store";
import type { Registry } from "@stowage/telemetry";
import { inBatches, rowGauge, rowGaugeFamily, type ScrapeRead, shared } from "./metrics-scrape.js";

/** Hosts up and down, their heartbeat age and, given a provider, the commands waiting in their JetStream consumer. */
export function hostGauges(
  registry: Registry,
  read: ScrapeRead,
  pendingCommands?: (hostId: string) => Promise<number>,
) {
  const hosts = shared(500, () => read(hostHeartbeatAges));
  const hostGauge = rowGaugeFamily(registry, {
    labelNames: ["host"],
    rows: hosts,
    labels: (r) => ({ host: r.id }),
  });
  const gauges = {
    hostUp: hostGauge("stowage_host_up", "1 when the host is up (heartbeating), 0 when down.", (r) =>
      r.state === "up" ? 1 : 0,
    ),
    heartbeatAge: hostGauge(
      "stowage_host_heartbeat_age_seconds",
      "Seconds since the host's last heartbeat.",
      (r) => r.age,
    ),
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
  const outboxGauge = rowGaugeFamily(registry, {
    labelNames: ["host", "state"],
    rows: unfinished,
    labels: (r) => ({ host: r.hostId, state: r.state }),
  });
  return {
    operationsPending: outboxGauge(
      "stowage_operations_pending",
      "Operations not yet finished, by host and state (pending: in the outbox; sent: published, no result yet).",
      (r) => r.n,
    ),
    operationsOldestAge: outboxGauge(
      "stowage_operations_oldest_age_seconds",
      "Age of the oldest unfinished operation, by host and state (pending, sent); 0 when there is none.",
      (r) => r.oldest,
    ),
  };
}
