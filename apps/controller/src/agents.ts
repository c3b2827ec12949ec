import { create, fromBinary } from "@bufbuild/protobuf";
import {
  ALL_HEARTBEATS,
  ALL_INVENTORIES,
  type Bus,
  COMMAND_STREAM,
  CONTROLLER_QUEUE,
  commandSubject,
  ensureAgentConsumer,
  heartbeatSubject,
  inventorySubject,
  resultSubject,
} from "@stowage/bus";
import { invalidArgument, isId, THIN_KINDS, validateLabels, validateName } from "@stowage/core";
import {
  HeartbeatSchema,
  type HostInfo,
  type Inventory,
  InventorySchema,
  type PoolReport,
  type RegisterAgentRequest,
  type RegisterAgentResponse,
  RegisterAgentResponseSchema,
} from "@stowage/proto";
import {
  applyPoolReports,
  type Finding,
  liveVolumesOnHost,
  markInventoryReceived,
  type PoolReportRecord,
  poolId,
  type Queryable,
  recordHeartbeat,
  replaceFindings,
  upsertHost,
  volumesInFluxOnHost,
} from "@stowage/store";
import { formats, poolKinds } from "@stowage/wire";
import type { ControllerContext } from "./context.js";

function poolReportFromWire(ctx: ControllerContext, p: PoolReport): PoolReportRecord {
  const kind = poolKinds.domain(p.kind);
  if (!kind) throw invalidArgument(`pool ${p.name} has no kind`);
  const thin = THIN_KINDS.has(kind);
  return {
    name: validateName("pool name", p.name),
    kind,
    numaNode: p.numaNode ?? null,
    healthy: p.healthy,
    healthMessage: p.healthMessage,
    totalBytes: p.totalBytes,
    usedBytes: p.usedBytes,
    freeBytes: p.freeBytes,
    provisionedBytes: p.provisionedBytes,
    dataPercent: p.dataPercent ?? null,
    metadataPercent: p.metadataPercent ?? null,
    overcommitRatio: p.overcommitRatio > 0 ? p.overcommitRatio : thin ? ctx.config.thinOvercommitRatio : 1,
    maxUsedPercent: p.maxUsedPercent > 0 ? Math.min(p.maxUsedPercent, 100) : 90,
    reservedPercent: Math.min(Math.max(p.reservedPercent, 0), 99),
    maxVolumes: p.maxVolumes,
    labels: validateLabels(p.labels),
    formats: p.formats.map((f) => formats.domain(f)).filter((f) => f !== undefined),
    shared: p.shared,
  };
}

async function applyHostInfo(sql: Queryable, host: HostInfo) {
  return upsertHost(sql, {
    id: host.name,
    zone: host.zone ? validateName("zone", host.zone) : "",
    labels: validateLabels(host.labels),
    numaNodes: host.numaNodes.map((n) => ({
      id: n.id,
      cpuList: n.cpuList,
      cpus: n.cpus,
      memoryBytes: Number(n.memoryBytes),
      distances: n.distances,
    })),
    cpuCount: host.cpuCount,
    memoryBytes: host.memoryBytes,
    agentVersion: host.agentVersion,
    initiatorName: host.initiatorName,
    metricsAddress: host.metricsAddress,
  });
}

/** RegisterAgent: records the host and its pools, and makes sure its command consumer exists. Idempotent. */
export async function registerAgent(
  ctx: ControllerContext,
  req: RegisterAgentRequest,
): Promise<RegisterAgentResponse> {
  if (!req.host) throw invalidArgument("host is required");
  const hostId = validateName("host name", req.host.name);
  const pools = req.pools.map((p) => poolReportFromWire(ctx, p));
  const durable = await ensureAgentConsumer(ctx.bus.jsm, hostId);
  await ctx.sql.begin(async (tx) => {
    await applyHostInfo(tx, req.host!);
    await applyPoolReports(tx, hostId, pools);
  });
  ctx.log.info({ host: hostId, pools: pools.map((p) => p.name) }, "agent registered");
  ctx.kickRelay();
  ctx.notifyChange();
  return create(RegisterAgentResponseSchema, {
    hostId,
    commandSubject: commandSubject(hostId),
    commandStream: COMMAND_STREAM,
    commandConsumer: durable,
    resultSubject: resultSubject(hostId),
    inventorySubject: inventorySubject(hostId),
    heartbeatSubject: heartbeatSubject(hostId),
    heartbeatIntervalMs: ctx.config.heartbeatIntervalMs,
  });
}

/**
 * Compares a host's inventory with the database. What the host has and the database does not is an orphan
 * (reported, never deleted); what the database has and the host lacks is missing; unmarked artefacts are foreign.
 */
export function diffInventory(
  inv: Pick<Inventory, "volumes" | "foreignArtifacts" | "pools">,
  hostId: string,
  live: { id: string; state: string; poolId: string }[],
): Finding[] {
  const findings: Finding[] = [];
  const known = new Map(live.map((v) => [v.id, v]));
  const reportedPools = new Set(inv.pools.map((p) => poolId(hostId, p.name)));
  const present = new Set<string>();
  for (const a of inv.volumes) {
    present.add(a.volumeId);
    const v = known.get(a.volumeId);
    if (!v && isId(a.volumeId, "vol")) {
      findings.push({
        hostId,
        kind: "orphan",
        subject: a.volumeId,
        poolId: poolId(hostId, a.poolName),
        detail: `artefact ${a.path} has no volume in the database`,
      });
    }
  }
  for (const v of live) {
    if (v.state === "available" && reportedPools.has(v.poolId) && !present.has(v.id)) {
      findings.push({
        hostId,
        kind: "missing",
        subject: v.id,
        poolId: v.poolId,
        detail: "the database has this volume, the host does not",
      });
    }
  }
  for (const f of inv.foreignArtifacts)
    findings.push({
      hostId,
      kind: "foreign",
      subject: f.slice(0, 200),
      poolId: "",
      detail: "no Stowage ownership marker: left alone",
    });
  return findings;
}

export async function applyInventory(ctx: ControllerContext, inv: Inventory): Promise<void> {
  if (!inv.host) return;
  const hostId = validateName("host name", inv.hostId);
  const pools = inv.pools.map((p) => poolReportFromWire(ctx, p));
  const findings = await ctx.sql.begin(async (tx) => {
    if (!(await markInventoryReceived(tx, hostId))) return undefined;
    await applyHostInfo(tx, inv.host!);
    await applyPoolReports(tx, hostId, pools);
    // Volumes being created or deleted are in flux: judge only the settled ones.
    const live = (await liveVolumesOnHost(tx, hostId)).map((v) => ({
      id: v.id,
      state: v.state,
      poolId: v.poolId,
    }));
    const inFlux = await volumesInFluxOnHost(tx, hostId);
    const found = diffInventory(
      { ...inv, volumes: inv.volumes.filter((a) => !inFlux.has(a.volumeId)) },
      hostId,
      live,
    );
    await replaceFindings(tx, hostId, found);
    return found;
  });
  if (findings?.length)
    ctx.log.warn({ host: hostId, findings: findings.length }, "inventory differs from the database");
}

async function applyHeartbeat(ctx: ControllerContext, data: Uint8Array): Promise<void> {
  const h = fromBinary(HeartbeatSchema, data);
  const r = await recordHeartbeat(ctx.sql, h.hostId, h.bootId);
  if (r.cameBack) {
    ctx.log.info({ host: h.hostId }, "host is up again");
    ctx.kickRelay();
    ctx.notifyChange();
  }
}

/** Handles every message on `subject` in the controllers' queue group, logging (not throwing) what fails. */
function subscribeQueued(
  ctx: ControllerContext,
  bus: Bus,
  subject: string,
  what: string,
  handle: (data: Uint8Array) => Promise<void>,
) {
  return bus.nc.subscribe(subject, {
    queue: CONTROLLER_QUEUE,
    callback: (err, msg) => {
      if (err) return;
      void (async () => {
        try {
          await handle(msg.data);
        } catch (e) {
          ctx.log.warn({ err: e }, `${what} handling failed`);
        }
      })();
    },
  });
}

/** Heartbeats and inventories arrive on core NATS, shared by controller replicas through a queue group. */
export function subscribeAgentTraffic(ctx: ControllerContext, bus: Bus): () => void {
  const subscriptions = [
    subscribeQueued(ctx, bus, ALL_HEARTBEATS, "heartbeat", (data) => applyHeartbeat(ctx, data)),
    subscribeQueued(ctx, bus, ALL_INVENTORIES, "inventory", (data) =>
      applyInventory(ctx, fromBinary(InventorySchema, data)),
    ),
  ];
  return () => {
    for (const s of subscriptions) s.unsubscribe();
  };
}
