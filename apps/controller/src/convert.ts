import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type {
  VolumeFormat as DomainFormat,
  OperationKind as DomainOpKind,
  PoolKind as DomainPoolKind,
  Qcow2Options as DomainQcow2,
  VolumeState as DomainVolumeState,
  WipeMode as DomainWipeMode,
} from "@stowage/core";
import {
  type CandidateExplanation,
  CandidateExplanationSchema,
  CompressionType,
  type ErrorDetail,
  ErrorDetailSchema,
  type Host,
  HostSchema,
  HostState,
  type Operation,
  OperationKind,
  OperationSchema,
  OperationState,
  type Placement,
  PlacementSchema,
  type Pool,
  PoolKind,
  PoolSchema,
  Preallocation,
  type Qcow2Options,
  Qcow2OptionsSchema,
  type Snapshot,
  SnapshotSchema,
  SnapshotState,
  type Volume,
  VolumeFormat,
  VolumeSchema,
  VolumeState,
  WipeMode,
} from "@stowage/proto";
import type { PlacementDecision } from "@stowage/scheduler";
import type { ErrorRecord, HostRow, OperationRow, PoolRow, SnapshotRow, VolumeRow } from "@stowage/store";

/** Two-way maps between wire enums and domain strings: the only place they meet. */
function enumMap<D extends string, W extends number>(pairs: [D, W][]) {
  const toWire = new Map(pairs);
  const toDomain = new Map(pairs.map(([d, w]) => [w, d]));
  return { wire: (d: D): W => toWire.get(d)!, domain: (w: W): D | undefined => toDomain.get(w) };
}

export const poolKinds = enumMap<DomainPoolKind, PoolKind>([
  ["dir", PoolKind.DIR],
  ["lvm", PoolKind.LVM],
  ["lvmthin", PoolKind.LVMTHIN],
  ["netfs", PoolKind.NETFS],
  ["rbd", PoolKind.RBD],
]);
export const formats = enumMap<DomainFormat, VolumeFormat>([
  ["raw", VolumeFormat.RAW],
  ["qcow2", VolumeFormat.QCOW2],
]);
export const volumeStates = enumMap<DomainVolumeState, VolumeState>([
  ["creating", VolumeState.CREATING],
  ["available", VolumeState.AVAILABLE],
  ["resizing", VolumeState.RESIZING],
  ["reverting", VolumeState.REVERTING],
  ["deleting", VolumeState.DELETING],
  ["deleted", VolumeState.DELETED],
  ["error", VolumeState.ERROR],
]);
export const wipeModes = enumMap<DomainWipeMode, WipeMode>([
  ["none", WipeMode.NONE],
  ["zero", WipeMode.ZERO],
  ["discard", WipeMode.DISCARD],
]);
export const operationKinds = enumMap<DomainOpKind, OperationKind>([
  ["create_volume", OperationKind.CREATE_VOLUME],
  ["delete_volume", OperationKind.DELETE_VOLUME],
  ["resize_volume", OperationKind.RESIZE_VOLUME],
  ["clone_volume", OperationKind.CLONE_VOLUME],
  ["create_snapshot", OperationKind.CREATE_SNAPSHOT],
  ["delete_snapshot", OperationKind.DELETE_SNAPSHOT],
  ["revert_snapshot", OperationKind.REVERT_SNAPSHOT],
  ["create_export", OperationKind.CREATE_EXPORT],
  ["delete_export", OperationKind.DELETE_EXPORT],
  ["copy_volume", OperationKind.COPY_VOLUME],
]);
export const operationStates = enumMap<OperationRow["state"], OperationState>([
  ["pending", OperationState.PENDING],
  ["sent", OperationState.SENT],
  ["succeeded", OperationState.SUCCEEDED],
  ["failed", OperationState.FAILED],
]);
const preallocations = enumMap<NonNullable<DomainQcow2["preallocation"]>, Preallocation>([
  ["off", Preallocation.OFF],
  ["metadata", Preallocation.METADATA],
  ["falloc", Preallocation.FALLOC],
  ["full", Preallocation.FULL],
]);
const compressions = enumMap<NonNullable<DomainQcow2["compressionType"]>, CompressionType>([
  ["zlib", CompressionType.ZLIB],
  ["zstd", CompressionType.ZSTD],
]);

export function qcow2FromWire(q: Qcow2Options | undefined): DomainQcow2 {
  if (!q) return {};
  const out: DomainQcow2 = {};
  if (q.clusterSizeBytes !== undefined) out.clusterSize = Number(q.clusterSizeBytes);
  const p = preallocations.domain(q.preallocation);
  if (p) out.preallocation = p;
  if (q.lazyRefcounts !== undefined) out.lazyRefcounts = q.lazyRefcounts;
  const c = compressions.domain(q.compressionType);
  if (c) out.compressionType = c;
  if (q.extendedL2 !== undefined) out.extendedL2 = q.extendedL2;
  return out;
}

export function qcow2ToWire(q: DomainQcow2): Qcow2Options {
  return create(Qcow2OptionsSchema, {
    clusterSizeBytes: q.clusterSize === undefined ? undefined : BigInt(q.clusterSize),
    preallocation: q.preallocation ? preallocations.wire(q.preallocation) : Preallocation.UNSPECIFIED,
    lazyRefcounts: q.lazyRefcounts,
    compressionType: q.compressionType ? compressions.wire(q.compressionType) : CompressionType.UNSPECIFIED,
    extendedL2: q.extendedL2,
  });
}

export function errorToWire(e: ErrorRecord | null): ErrorDetail | undefined {
  if (!e) return undefined;
  return create(ErrorDetailSchema, {
    code: e.code,
    message: e.message,
    tool: e.tool ?? "",
    argv: e.argv ?? [],
    exitCode: e.exitCode,
    stderr: e.stderr ?? "",
    timedOut: e.timedOut ?? false,
  });
}

export function errorFromWire(e: ErrorDetail | undefined, fallback: string): ErrorRecord {
  if (!e) return { code: "internal", message: fallback };
  const out: ErrorRecord = { code: e.code || "internal", message: e.message || fallback };
  if (e.tool) out.tool = e.tool;
  if (e.argv.length) out.argv = e.argv;
  if (e.exitCode !== undefined) out.exitCode = e.exitCode;
  if (e.stderr) out.stderr = e.stderr;
  if (e.timedOut) out.timedOut = true;
  return out;
}

export function hostToWire(h: HostRow, counts?: { pools: number; volumes: number }): Host {
  return create(HostSchema, {
    id: h.id,
    state: h.state === "up" ? HostState.UP : HostState.DOWN,
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

export function poolToWire(p: PoolRow, zone = ""): Pool {
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
    qcow2: v.format === "qcow2" ? qcow2ToWire(v.qcow2 as DomainQcow2) : undefined,
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
  });
}

const snapshotStates = enumMap<SnapshotRow["state"], SnapshotState>([
  ["creating", SnapshotState.CREATING],
  ["available", SnapshotState.AVAILABLE],
  ["deleting", SnapshotState.DELETING],
  ["deleted", SnapshotState.DELETED],
  ["error", SnapshotState.ERROR],
]);

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
