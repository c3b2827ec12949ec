import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Qcow2Options } from "@stowage/core";
import {
  type CandidateExplanation,
  CandidateExplanationSchema,
  type ErrorDetail,
  type Host,
  HostSchema,
  type Operation,
  OperationSchema,
  type Placement,
  PlacementSchema,
  type Pool,
  PoolSchema,
  type Snapshot,
  SnapshotSchema,
  type Volume,
  VolumeSchema,
} from "@stowage/proto";
import type { PlacementDecision } from "@stowage/scheduler";
import type { ErrorRecord, HostRow, OperationRow, PoolRow, SnapshotRow, VolumeRow } from "@stowage/store";
import {
  errorRecordToWire,
  formats,
  hostStates,
  operationKinds,
  operationStates,
  poolKinds,
  qcow2ToWire,
  snapshotStates,
  volumeStates,
} from "@stowage/wire";

export function errorToWire(e: ErrorRecord | null): ErrorDetail | undefined {
  return e ? errorRecordToWire(e) : undefined;
}

export function hostToWire(h: HostRow, counts?: { pools: number; volumes: number }): Host {
  return create(HostSchema, {
    id: h.id,
    state: hostStates.wire(h.state),
    zone: h.zone,
    labels: h.labels,
    numaNodes: h.numaNodes.map((n) => ({
      id: n.id,
      cpuList: n.cpuList,
      cpus: n.cpus,
      memoryBytes: BigInt(n.memoryBytes),
      distances: n.distances,
    })),
    cpuCount: h.cpuCount,
    memoryBytes: h.memoryBytes,
    agentVersion: h.agentVersion,
    registeredAt: timestampFromDate(h.registeredAt),
    lastHeartbeatAt: timestampFromDate(h.lastHeartbeatAt),
    schedulable: h.schedulable,
    poolCount: counts?.pools ?? 0,
    volumeCount: counts?.volumes ?? 0,
    initiatorName: h.initiatorName,
  });
}

/** A pool as the API answers it, a shared pool with the hosts attached to it besides its owner (`attachedHostIds`). */
export function poolToWire(p: PoolRow & { attachedHostIds?: readonly string[] }, zone = ""): Pool {
  return create(PoolSchema, {
    id: p.id,
    name: p.name,
    hostId: p.hostId,
    kind: poolKinds.wire(p.kind),
    numaNode: p.numaNode ?? undefined,
    healthy: p.healthy,
    healthMessage: p.healthMessage,
    capacity: {
      totalBytes: p.totalBytes,
      usedBytes: p.usedBytes,
      freeBytes: p.freeBytes,
      provisionedBytes: p.allocatedBytes,
      reservedBytes: p.reservedBytes,
      dataPercent: p.dataPercent ?? undefined,
      metadataPercent: p.metadataPercent ?? undefined,
    },
    overcommitRatio: p.overcommitRatio,
    labels: p.labels,
    formats: p.formats.map((f) => formats.wire(f)),
    volumeCount: p.volumeCount,
    draining: p.draining,
    zone,
    updatedAt: timestampFromDate(p.updatedAt),
    shared: p.shared,
    reservedPercent: p.reservedPercent,
    maxVolumes: p.maxVolumes,
    maxUsedPercent: p.maxUsedPercent,
    share: p.share,
    attachedHostIds: [...(p.attachedHostIds ?? [])],
  });
}

export function volumeToWire(v: VolumeRow): Volume {
  return create(VolumeSchema, {
    id: v.id,
    name: v.name,
    sizeBytes: v.sizeBytes,
    format: formats.wire(v.format),
    poolId: v.poolId,
    hostId: v.hostId,
    state: volumeStates.wire(v.state),
    numaNode: v.numaNode ?? undefined,
    labels: v.labels,
    qcow2: v.format === "qcow2" ? qcow2ToWire(v.qcow2 as Qcow2Options) : undefined,
    error: errorToWire(v.error),
    createdAt: timestampFromDate(v.createdAt),
    updatedAt: timestampFromDate(v.updatedAt),
    operationId: v.operationId ?? "",
    allocatedBytes: v.allocatedBytes,
    hostPath: v.hostPath,
    cpuSet: v.cpuSet,
    sourceVolumeId: v.sourceVolumeId,
    sourceSnapshotId: v.sourceSnapshotId,
    antiAffinityGroup: v.antiAffinityGroup,
  });
}

export function operationToWire(o: OperationRow): Operation {
  return create(OperationSchema, {
    id: o.id,
    kind: operationKinds.wire(o.kind),
    state: operationStates.wire(o.state),
    hostId: o.hostId,
    poolId: o.poolId,
    volumeId: o.volumeId,
    snapshotId: o.snapshotId,
    attempts: o.attempts,
    error: errorToWire(o.error),
    createdAt: timestampFromDate(o.createdAt),
    updatedAt: timestampFromDate(o.updatedAt),
    finishedAt: o.finishedAt ? timestampFromDate(o.finishedAt) : undefined,
    requestedBy: o.requestedBy,
  });
}

export function placementToWire(d: PlacementDecision): Placement {
  return create(PlacementSchema, {
    hostId: d.hostId,
    poolId: d.poolId,
    numaNode: d.numaNode ?? undefined,
    cpuSet: d.cpuSet,
    summary: d.summary,
    candidates: d.candidates.map(
      (c): CandidateExplanation =>
        create(CandidateExplanationSchema, {
          poolId: c.poolId,
          hostId: c.hostId,
          feasible: c.feasible,
          refusedBy: c.refusedBy,
          reason: c.reason,
          score: c.score,
          scores: c.scores,
        }),
    ),
    refusals: Object.fromEntries(d.refusals ?? []),
    poolsConsidered: d.poolsConsidered ?? 0,
  });
}

export function snapshotToWire(s: SnapshotRow, cloneCount = 0): Snapshot {
  return create(SnapshotSchema, {
    id: s.id,
    name: s.name,
    volumeId: s.volumeId,
    state: snapshotStates.wire(s.state),
    sizeBytes: s.sizeBytes,
    createdAt: timestampFromDate(s.createdAt),
    error: errorToWire(s.error),
    cloneCount,
  });
}
