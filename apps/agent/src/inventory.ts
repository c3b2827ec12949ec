import { create, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Bus } from "@stowage/bus";
import { FORMATS_BY_KIND } from "@stowage/core";
import type { PoolCapacityReport, PoolDriver } from "@stowage/drivers";
import {
  HeartbeatSchema,
  type HostInfo,
  HostInfoSchema,
  InventorySchema,
  type PoolReport,
  PoolReportSchema,
  type RegisterAgentResponse,
  type VolumeArtifact,
} from "@stowage/proto";
import type { Logger } from "@stowage/telemetry";
import { artifactToWire, formats, poolKinds } from "@stowage/wire";
import type { AgentConfig } from "./config.js";
import type { HostDiscovery } from "./discovery.js";
import type { PoolSample } from "./metrics.js";
import type { AgentPool } from "./pools.js";

export const AGENT_VERSION = "0.1.0";

/** What the agent tells the controller about its host. */
export function hostInfo(config: AgentConfig, host: HostDiscovery, metricsAddress: string): HostInfo {
  return create(HostInfoSchema, {
    name: config.hostName,
    zone: config.zone,
    labels: config.labels,
    numaNodes: host.numaNodes.map((n) => ({
      id: n.id,
      cpuList: n.cpuList,
      cpus: n.cpus,
      memoryBytes: n.memoryBytes,
      distances: n.distances,
    })),
    cpuCount: host.cpuCount,
    memoryBytes: host.memoryBytes,
    agentVersion: AGENT_VERSION,
    initiatorName: config.initiatorName,
    metricsAddress,
  });
}

export interface PoolScan {
  reports: PoolReport[];
  artifacts: VolumeArtifact[];
  /** `<pool>/<name>` of artefacts without our ownership marker. */
  foreign: string[];
  samples: PoolSample[];
}

const NO_CAPACITY: PoolCapacityReport = {
  totalBytes: 0n,
  usedBytes: 0n,
  freeBytes: 0n,
  provisionedBytes: 0n,
};

/** One pool's health, capacity and contents; a pool that fails its check is reported unhealthy, not dropped. */
async function scanPool({ config: p, driver, numaNode }: AgentPool) {
  const health = await driver.check().catch((err: Error) => ({ healthy: false, message: err.message }));
  let cap = NO_CAPACITY;
  let contents: Awaited<ReturnType<PoolDriver["list"]>> = { volumes: [], foreign: [] };
  let healthy = health.healthy;
  let message = health.message;
  if (healthy) {
    try {
      cap = await driver.capacity();
      contents = await driver.list();
    } catch (err) {
      healthy = false;
      message = (err as Error).message;
    }
  }
  const report = create(PoolReportSchema, {
    name: p.name,
    kind: poolKinds.wire(p.kind),
    numaNode,
    healthy,
    healthMessage: message,
    totalBytes: cap.totalBytes,
    usedBytes: cap.usedBytes,
    freeBytes: cap.freeBytes,
    provisionedBytes: cap.provisionedBytes,
    dataPercent: cap.dataPercent,
    metadataPercent: cap.metadataPercent,
    formats: FORMATS_BY_KIND[p.kind].map((f) => formats.wire(f)),
    labels: p.labels,
    overcommitRatio: p.overcommitRatio ?? 0,
    reservedPercent: p.reservedPercent,
    maxVolumes: p.maxVolumes,
    maxUsedPercent: p.maxUsedPercent,
    shared: p.kind === "rbd",
  });
  const sample: PoolSample = {
    pool: p.name,
    kind: p.kind,
    ...cap,
    healthy,
    volumes: contents.volumes.length,
  };
  return { report, contents, sample };
}

/** Capacity and contents of every pool, in configuration order. */
export async function scanPools(pools: Iterable<AgentPool>): Promise<PoolScan> {
  const scan: PoolScan = { reports: [], artifacts: [], foreign: [], samples: [] };
  for (const pool of pools) {
    const { report, contents, sample } = await scanPool(pool);
    scan.reports.push(report);
    scan.artifacts.push(...contents.volumes.map(artifactToWire));
    scan.foreign.push(...contents.foreign.map((f) => `${pool.config.name}/${f}`));
    scan.samples.push(sample);
  }
  return scan;
}

export interface ReporterOptions {
  bus: Bus;
  registration: RegisterAgentResponse;
  bootId: string;
  host: () => HostInfo;
  scan: () => Promise<PoolScan>;
  runningOperations: () => number;
  log: Logger;
}

/** Inventory and heartbeats on the subjects the controller gave at registration, numbered in one sequence. */
export function createReporter(o: ReporterOptions) {
  let sequence = 0n;
  const reg = o.registration;
  return {
    async publishInventory(): Promise<void> {
      const scan = await o.scan();
      sequence++;
      const inv = create(InventorySchema, {
        hostId: reg.hostId,
        sequence,
        at: timestampNow(),
        host: o.host(),
        pools: scan.reports,
        volumes: scan.artifacts,
        foreignArtifacts: scan.foreign,
      });
      o.bus.nc.publish(reg.inventorySubject, toBinary(InventorySchema, inv));
    },
    /** Publishes an inventory now; a failure is logged, and the next interval tries again. */
    refresh(): Promise<void> {
      return this.publishInventory().catch((err) => o.log.warn({ err }, "inventory failed"));
    },
    publishHeartbeat(): void {
      sequence++;
      const hb = create(HeartbeatSchema, {
        hostId: reg.hostId,
        sequence,
        at: timestampNow(),
        runningOperations: o.runningOperations(),
        bootId: o.bootId,
      });
      o.bus.nc.publish(reg.heartbeatSubject, toBinary(HeartbeatSchema, hb));
    },
  };
}
export type Reporter = ReturnType<typeof createReporter>;

/** Heartbeats at the controller's interval and a full inventory on the agent's; returns what stops both. */
export function startReporting(reporter: Reporter, heartbeatMs: number, inventoryMs: number) {
  const heartbeats = setInterval(() => reporter.publishHeartbeat(), heartbeatMs);
  const inventories = setInterval(() => void reporter.refresh(), inventoryMs);
  return () => {
    clearInterval(heartbeats);
    clearInterval(inventories);
  };
}
