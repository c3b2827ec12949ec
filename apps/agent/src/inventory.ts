import { type NetworkInterfaceInfo, networkInterfaces } from "node:os";
import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { type Bus, inventoryRequestSubject } from "@stowage/bus";
import { FORMATS_BY_KIND } from "@stowage/core";
import type { PoolCapacityReport, PoolDriver } from "@stowage/drivers";
import {
  type AgentCommand,
  type ExportArtifact,
  HeartbeatSchema,
  type HostInfo,
  HostInfoSchema,
  InventorySchema,
  type OperationResult,
  type PoolReport,
  PoolReportSchema,
  type RegisterAgentResponse,
  type VolumeArtifact,
} from "@stowage/proto";
import type { Logger } from "@stowage/telemetry";
import { artifactToWire, formats, operationKinds, poolKinds } from "@stowage/wire";
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
    addresses: hostAddresses(),
  });
}

/** The host's unicast addresses, loopback and link-local left out: what export ACLs bind (HostInfo.addresses). */
export function hostAddresses(
  interfaces: NodeJS.Dict<NetworkInterfaceInfo[]> = networkInterfaces(),
): string[] {
  const out = new Set<string>();
  for (const list of Object.values(interfaces))
    for (const a of list ?? [])
      if (!a.internal && !(a.family === "IPv6" && a.address.toLowerCase().startsWith("fe80:")))
        out.add(a.address);
  return [...out].sort();
}

export interface PoolScan {
  reports: PoolReport[];
  artifacts: VolumeArtifact[];
  /** `<pool>/<name>` of artefacts without our ownership marker. */
  foreign: string[];
  samples: PoolSample[];
  /** Volume ids per pool, for the volume counts that deltas keep current. */
  volumeIds: Map<string, Set<string>>;
}

const NO_CAPACITY: PoolCapacityReport = {
  totalBytes: 0n,
  usedBytes: 0n,
  freeBytes: 0n,
  provisionedBytes: 0n,
};

type Health = { healthy: boolean; message: string };

function poolReport({ config: p, numaNode }: AgentPool, health: Health, cap: PoolCapacityReport): PoolReport {
  return create(PoolReportSchema, {
    name: p.name,
    kind: poolKinds.wire(p.kind),
    numaNode,
    healthy: health.healthy,
    healthMessage: health.message,
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
    // Several hosts reach the same Ceph pool or NFS export; a netfs pool's share is its export's URL
    // (canonical since the config was read), so the controller keeps it as one pool.
    shared: p.kind === "rbd" || p.kind === "netfs",
    ...(p.kind === "netfs" ? { share: p.url } : {}),
  });
}

/** A pool's capacity (cheap: statfs, vgs, ceph df); a failure makes the pool unhealthy, not the report fail. */
async function poolCapacity(pool: AgentPool, health: Health) {
  if (!health.healthy) return { health, cap: NO_CAPACITY };
  try {
    return { health, cap: await pool.driver.capacity() };
  } catch (err) {
    return { health: { healthy: false, message: (err as Error).message }, cap: NO_CAPACITY };
  }
}

const checkPool = (pool: AgentPool): Promise<Health> =>
  pool.driver.check().catch((err: Error) => ({ healthy: false, message: err.message }));

/** One pool's health, capacity and contents; a pool that fails its check is reported unhealthy, not dropped. */
async function scanPool(pool: AgentPool) {
  let { health, cap } = await poolCapacity(pool, await checkPool(pool));
  let contents: Awaited<ReturnType<PoolDriver["list"]>> = { volumes: [], foreign: [] };
  if (health.healthy) {
    try {
      contents = await pool.driver.list();
    } catch (err) {
      health = { healthy: false, message: (err as Error).message };
      cap = NO_CAPACITY;
    }
  }
  return { report: poolReport(pool, health, cap), contents, health, cap };
}

const sampleOf = (pool: AgentPool, health: Health, cap: PoolCapacityReport, volumes: number): PoolSample => ({
  pool: pool.config.name,
  kind: pool.config.kind,
  ...cap,
  healthy: health.healthy,
  volumes,
});

/** Capacity and contents of every pool, in configuration order. */
export async function scanPools(pools: Iterable<AgentPool>): Promise<PoolScan> {
  const scan: PoolScan = { reports: [], artifacts: [], foreign: [], samples: [], volumeIds: new Map() };
  for (const pool of pools) {
    const { report, contents, health, cap } = await scanPool(pool);
    scan.reports.push(report);
    scan.artifacts.push(...contents.volumes.map(artifactToWire));
    scan.foreign.push(...contents.foreign.map((f) => `${pool.config.name}/${f}`));
    scan.samples.push(sampleOf(pool, health, cap, contents.volumes.length));
    scan.volumeIds.set(pool.config.name, new Set(contents.volumes.map((v) => v.volumeId)));
  }
  return scan;
}

export interface InventoryOptions {
  bus: Bus;
  registration: RegisterAgentResponse;
  bootId: string;
  host: () => HostInfo;
  pools: ReadonlyMap<string, AgentPool>;
  runningOperations: () => number;
  log: Logger;
  /** Deltas of one pool are sent at most this often: a burst of operations becomes one delta per pool. */
  deltaCoalesceMs?: number;
  /** The exports the host serves, for full inventories (exports.ts). */
  exports?: () => ExportArtifact[];
  /** The full scan (default `scanPools` of the pools); tests count it. */
  scan?: () => Promise<PoolScan>;
}

/** What changed in one pool since the last delta: its touched volumes, as they now stand or removed. */
interface PoolChanges {
  artifacts: Map<string, VolumeArtifact>;
  removed: Set<string>;
}

function addChange(into: Map<string, PoolChanges>, pool: string, change: (c: PoolChanges) => void) {
  let c = into.get(pool);
  if (!c) {
    c = { artifacts: new Map(), removed: new Set() };
    into.set(pool, c);
  }
  change(c);
}

function mergeChanges(into: Map<string, PoolChanges>, from: Map<string, PoolChanges>) {
  for (const [pool, c] of from)
    addChange(into, pool, (t) => {
      for (const [id, a] of c.artifacts) {
        t.removed.delete(id);
        t.artifacts.set(id, a);
      }
      for (const id of c.removed) {
        t.artifacts.delete(id);
        t.removed.add(id);
      }
    });
}

/** Pool reports from health checks and capacity only, no volume scan: what registration sends. */
export async function poolReports(pools: Iterable<AgentPool>): Promise<PoolReport[]> {
  const reports: PoolReport[] = [];
  for (const pool of pools) {
    const { health, cap } = await poolCapacity(pool, await checkPool(pool));
    reports.push(poolReport(pool, health, cap));
  }
  return reports;
}

/**
 * Inventory and heartbeats on the subjects the controller gave at registration, numbered in one sequence
 * (docs/architecture.md, inventory). After an operation the agent sends a delta: the touched pool's capacity
 * and the touched volume; a full inventory (one scan of every pool) goes out only on the slow interval, on
 * reconnect and on request. Full scans are awaited and coalesced: one at a time, and every caller during a
 * scan shares the next one.
 */
export function createInventory(o: InventoryOptions) {
  let sequence = 0n;
  const reg = o.registration;
  const scan = o.scan ?? (() => scanPools(o.pools.values()));
  const coalesceMs = o.deltaCoalesceMs ?? 150;
  const health = new Map<string, Health>();
  const volumeIds = new Map<string, Set<string>>();
  const samples = new Map<string, PoolSample>();

  let scanning: Promise<void> | undefined;
  let nextScan: Promise<void> | undefined;
  /** Changes made while a scan runs, which its result may not show: sent again as a delta after it. */
  let changedDuringScan: Map<string, PoolChanges> | undefined;
  let pending = new Map<string, PoolChanges>();
  let flushTimer: NodeJS.Timeout | undefined;
  let flushing: Promise<void> = Promise.resolve();
  let stopped = false;

  const publish = (inv: MessageInitShape<typeof InventorySchema>) => {
    sequence++;
    o.bus.nc.publish(
      reg.inventorySubject,
      toBinary(
        InventorySchema,
        create(InventorySchema, { ...inv, hostId: reg.hostId, sequence, at: timestampNow() }),
      ),
    );
  };

  const scanAndPublish = async () => {
    changedDuringScan = new Map();
    try {
      const s = await scan();
      for (const [i, pool] of [...o.pools.values()].entries()) {
        const r = s.reports[i];
        if (r) health.set(pool.config.name, { healthy: r.healthy, message: r.healthMessage });
      }
      for (const [pool, ids] of s.volumeIds) volumeIds.set(pool, ids);
      for (const sample of s.samples) samples.set(sample.pool, sample);
      if (stopped) return;
      publish({
        host: o.host(),
        pools: s.reports,
        volumes: s.artifacts,
        foreignArtifacts: s.foreign,
        exports: o.exports?.() ?? [],
      });
    } finally {
      const changed = changedDuringScan;
      changedDuringScan = undefined;
      if (changed.size && !stopped) {
        mergeChanges(pending, changed);
        scheduleFlush();
      }
    }
  };

  const startScan = (): Promise<void> => {
    scanning = scanAndPublish().finally(() => {
      scanning = undefined;
    });
    return scanning;
  };

  const flush = async () => {
    flushTimer = undefined;
    const changes = pending;
    pending = new Map();
    if (changes.size === 0 || stopped) return;
    const reports: PoolReport[] = [];
    const volumes: VolumeArtifact[] = [];
    const removed: string[] = [];
    for (const [name, c] of changes) {
      const pool = o.pools.get(name);
      if (!pool) continue;
      const { health: h, cap } = await poolCapacity(pool, health.get(name) ?? (await checkPool(pool)));
      reports.push(poolReport(pool, h, cap));
      volumes.push(...c.artifacts.values());
      removed.push(...c.removed);
      const ids = volumeIds.get(name) ?? new Set<string>();
      for (const id of c.artifacts.keys()) ids.add(id);
      for (const id of c.removed) ids.delete(id);
      volumeIds.set(name, ids);
      samples.set(name, sampleOf(pool, h, cap, ids.size));
    }
    if (reports.length) publish({ delta: true, pools: reports, volumes, removedVolumeIds: removed });
  };

  const scheduleFlush = () => {
    if (flushTimer || stopped) return;
    flushTimer = setTimeout(() => {
      flushing = flushing
        .then(flush)
        .catch((err) => o.log.warn({ err }, "inventory delta failed; the next full inventory corrects it"));
    }, coalesceMs);
  };

  return {
    /** Publishes a full inventory after a scan of every pool; a call during a scan shares the next one. */
    publishFull(): Promise<void> {
      if (!scanning) return startScan();
      nextScan ??= scanning
        .catch(() => {})
        .then(() => {
          nextScan = undefined;
          return startScan();
        });
      return nextScan;
    },
    /** A full inventory now; a failure is logged, and the next interval tries again. */
    refresh(): Promise<void> {
      return this.publishFull().catch((err) => o.log.warn({ err }, "inventory failed"));
    },
    /** Records what an operation changed; a delta of its pool follows within `deltaCoalesceMs`. */
    noteOperation(cmd: AgentCommand, result: OperationResult): void {
      const v = cmd.payload.value;
      const volumeId = v && "volumeId" in v ? v.volumeId : "";
      const deleted = result.success && operationKinds.domain(cmd.kind) === "delete_volume";
      const change = (c: PoolChanges) => {
        if (deleted && volumeId) {
          c.artifacts.delete(volumeId);
          c.removed.add(volumeId);
        } else if (result.artifact) {
          c.removed.delete(result.artifact.volumeId);
          c.artifacts.set(result.artifact.volumeId, result.artifact);
        }
      };
      addChange(pending, cmd.poolName, change);
      if (changedDuringScan) addChange(changedDuringScan, cmd.poolName, change);
      scheduleFlush();
    },
    publishHeartbeat(): void {
      // A connection closed for good (the server refused its credentials) takes no more messages: the agent's
      // `lost` says so once (agent.ts), and a heartbeat must not throw from its timer.
      if (o.bus.nc.isClosed()) return;
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
    /** The pools' last known capacity and volume counts, for /metrics. */
    samples: (): PoolSample[] => [...samples.values()],
    /** Answers `inventoryRequestSubject` of this host with a full inventory; returns what unsubscribes. */
    serveRequests(): () => void {
      const sub = o.bus.nc.subscribe(inventoryRequestSubject(reg.hostId), {
        callback: (err, msg) => {
          if (err) return;
          if (msg.reply) msg.respond();
          void this.refresh();
        },
      });
      return () => sub.unsubscribe();
    },
    /** Sends the pending delta now and waits (up to `graceMs`) for it and any scan under way; then publishes nothing. */
    async stop(graceMs: number): Promise<void> {
      if (flushTimer) {
        clearTimeout(flushTimer);
        flushTimer = undefined;
        flushing = flushing.then(flush).catch(() => {});
      }
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all([flushing, scanning?.catch(() => {})]),
        new Promise<void>((r) => {
          timer = setTimeout(r, graceMs);
        }),
      ]);
      clearTimeout(timer);
      stopped = true;
    },
  };
}
export type Inventory = ReturnType<typeof createInventory>;

/** Heartbeats at the controller's interval and a full inventory on the agent's; returns what stops both. */
export function startReporting(inventory: Inventory, heartbeatMs: number, inventoryMs: number) {
  const heartbeats = setInterval(() => inventory.publishHeartbeat(), heartbeatMs);
  const inventories = setInterval(() => void inventory.refresh(), inventoryMs);
  return () => {
    clearInterval(heartbeats);
    clearInterval(inventories);
  };
}
