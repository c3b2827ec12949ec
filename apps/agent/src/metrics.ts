import { Server as TlsServer } from "node:tls";
import { POISON_REASONS } from "@stowage/bus";
import { OPERATION_KINDS } from "@stowage/core";
import type { PoolCapacityReport } from "@stowage/drivers";
import {
  counter,
  createRegistry,
  DURATION_BUCKETS,
  gauge,
  histogram,
  type OpsServerOptions,
  type Registry,
  startOpsServer,
  withOutcomes,
} from "@stowage/telemetry";

export type AgentMetrics = ReturnType<typeof createAgentMetrics>;

/** One pool as the last inventory saw it: its capacity report, health and volume count. */
export interface PoolSample extends PoolCapacityReport {
  pool: string;
  kind: string;
  healthy: boolean;
  volumes: number;
}

/** Results of the runner's tool invocations (`stowage_tool_invocations_total{result}`); failures are result!="ok". */
export const TOOL_RESULTS = ["ok", "failed", "timeout"] as const;

/** The agent's metrics; pool gauges show the last inventory (refreshed every few seconds and after operations). */
export function createAgentMetrics(host: string, pools: () => PoolSample[]) {
  const registry: Registry = createRegistry({ labels: { host } });
  // Every kind of operation on every backend this agent has is exported from the start, at 0: each of the two
  // metrics makes sure of it before it is collected (the agent learns its backends from its first inventory).
  const backends = new Set<string>();
  const knowBackends = () => {
    for (const p of pools()) {
      if (backends.has(p.kind)) continue;
      backends.add(p.kind);
      for (const kind of OPERATION_KINDS) {
        operations.inc({ kind, backend: p.kind, result: "succeeded" }, 0);
        operationDuration.zero({ kind, backend: p.kind });
      }
    }
  };
  const operations = withOutcomes(
    counter(
      registry,
      "stowage_agent_operations_total",
      "Operations run by this agent, by kind, backend (the pool kind) and result (succeeded, failed).",
      ["kind", "backend", "result"],
      knowBackends,
    ),
    "result",
    ["succeeded", "failed"],
  );
  const operationDuration = histogram(
    registry,
    "stowage_agent_operation_duration_seconds",
    "Time to run one operation, by kind and backend (the pool kind).",
    ["kind", "backend"],
    DURATION_BUCKETS,
    knowBackends,
  );
  const poolGauge = (name: string, help: string, pick: (p: PoolSample) => number | undefined) =>
    gauge(registry, name, help, ["pool", "kind"], function () {
      this.reset();
      for (const p of pools()) {
        const v = pick(p);
        if (v !== undefined) this.set({ pool: p.pool, kind: p.kind }, v);
      }
    });
  poolGauge(
    "stowage_agent_pool_capacity_bytes",
    "Usable size of the pool's backing store, as the backend reports it.",
    (p) => Number(p.totalBytes),
  );
  poolGauge("stowage_agent_pool_used_bytes", "Physically used bytes in the pool.", (p) =>
    Number(p.usedBytes),
  );
  poolGauge("stowage_agent_pool_free_bytes", "Physically free bytes in the pool.", (p) =>
    Number(p.freeBytes),
  );
  poolGauge(
    "stowage_agent_pool_provisioned_bytes",
    "Sum of the virtual sizes of the volumes found in the pool.",
    (p) => Number(p.provisionedBytes),
  );
  poolGauge(
    "stowage_agent_pool_data_percent",
    "Thin pools: data space used, in percent.",
    (p) => p.dataPercent,
  );
  poolGauge(
    "stowage_agent_pool_metadata_percent",
    "Thin pools: metadata space used, in percent.",
    (p) => p.metadataPercent,
  );
  poolGauge("stowage_agent_pool_healthy", "1 when the pool passes its health check.", (p) =>
    p.healthy ? 1 : 0,
  );
  poolGauge("stowage_agent_pool_volumes", "Volumes owned by Stowage found in the pool.", (p) => p.volumes);
  return {
    registry,
    operations,
    operationDuration,
    toolInvocations: withOutcomes(
      counter(
        registry,
        "stowage_tool_invocations_total",
        'External tool invocations, by tool and result (ok, failed, timeout); failures are result!="ok".',
        ["tool", "result"],
      ),
      "result",
      TOOL_RESULTS,
    ),
    toolDuration: histogram(registry, "stowage_tool_duration_seconds", "External tool run time, by tool.", [
      "tool",
    ]),
    redeliveries: counter(
      registry,
      "stowage_agent_commands_redelivered_total",
      "Commands delivered more than once by JetStream.",
    ),
    busPoison: poisonCounter(registry),
  };
}

/**
 * Commands parked as poison (terminated and copied to the dead-letter stream, @stowage/bus poison.ts), by reason
 * (undecodable, invalid: meant for another host, failed: its handling failed on every delivery up to the limit);
 * as the controller's, with consumer="commands". Every reason is exported at 0 from the start.
 */
function poisonCounter(registry: Registry) {
  const c = counter(
    registry,
    "stowage_bus_poison_messages_total",
    "Bus messages parked as poison (terminated and copied to the dead-letter stream), by consumer and reason (undecodable, invalid, failed: its handling failed on every delivery up to the limit).",
    ["consumer", "reason"],
  );
  for (const reason of POISON_REASONS) c.inc({ consumer: "commands", reason }, 0);
  return c;
}

/** Whether a `host:port` listen address is on loopback (127.0.0.0/8, ::1, localhost). */
export function listensOnLoopback(listen: string): boolean {
  const host = listen.slice(0, listen.lastIndexOf(":")).replace(/^\[|\]$/g, "");
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}

/** A certificate and key (PEM) for the metrics listener's HTTPS. */
export interface MetricsTls {
  cert: string;
  key: string;
}

/**
 * /metrics, /healthz and /readyz on `listen` (host:port; port 0 picks a free one), over HTTPS with `tls` (the
 * host certificate, in secure mode off loopback; `useTls` swaps in a renewed one for new connections).
 * `address` is where the controller is told to scrape.
 */
export async function serveMetrics(
  listen: string,
  registry: Registry,
  ready: OpsServerOptions["ready"],
  tls?: MetricsTls,
) {
  const host = listen.slice(0, listen.lastIndexOf(":"));
  const options = {
    host,
    port: Number(listen.slice(listen.lastIndexOf(":") + 1)),
    registry,
    ready,
    ...(tls ? { tls } : {}),
  };
  const ops = await startOpsServer(options);
  const secure = ops.server instanceof TlsServer;
  if (tls && !secure) {
    await ops.close();
    throw new Error(
      `cannot serve the agent's metrics over HTTPS on ${listen}: startOpsServer has no tls option`,
    );
  }
  return {
    port: ops.port,
    address: `${host}:${ops.port}`,
    /** Whether it serves HTTPS. */
    secure,
    useTls: (next: MetricsTls) => {
      if (ops.server instanceof TlsServer) ops.server.setSecureContext({ cert: next.cert, key: next.key });
    },
    close: () => ops.close(),
  };
}
