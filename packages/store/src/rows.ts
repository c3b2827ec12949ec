import type {
  HostState,
  OperationKind,
  OperationState,
  PoolKind,
  VolumeFormat,
  VolumeState,
} from "@stowage/core";

export interface NumaNodeRecord {
  id: number;
  cpuList: string;
  cpus: number[];
  memoryBytes: number;
  distances: number[];
}

export interface HostRow {
  id: string;
  state: HostState;
  zone: string;
  labels: Record<string, string>;
  numaNodes: NumaNodeRecord[];
  cpuCount: number;
  memoryBytes: bigint;
  agentVersion: string;
  initiatorName: string;
  /** Unicast addresses the agent reported (export ACLs bind them). */
  addresses: string[];
  metricsAddress: string;
  schedulable: boolean;
  cordonReason: string;
  bootId: string;
  registeredAt: Date;
  lastHeartbeatAt: Date;
  inventoryAt: Date | null;
  updatedAt: Date;
}

export interface PoolRow {
  id: string;
  hostId: string;
  name: string;
  kind: PoolKind;
  numaNode: number | null;
  healthy: boolean;
  healthMessage: string;
  totalBytes: bigint;
  usedBytes: bigint;
  freeBytes: bigint;
  reportedProvisionedBytes: bigint;
  dataPercent: number | null;
  metadataPercent: number | null;
  overcommitRatio: number;
  maxUsedPercent: number;
  reservedPercent: number;
  maxVolumes: number;
  labels: Record<string, string>;
  formats: VolumeFormat[];
  shared: boolean;
  /** A shared pool's identity as its agents report it (netfs: nfs://server/path); '' for a pool of one host. */
  share: string;
  draining: boolean;
  present: boolean;
  allocatedBytes: bigint;
  reservedBytes: bigint;
  volumeCount: number;
  updatedAt: Date;
}

import type { ErrorRecord } from "@stowage/core";

export type { ErrorRecord };

export interface VolumeRow {
  id: string;
  name: string;
  sizeBytes: bigint;
  format: VolumeFormat;
  poolId: string;
  hostId: string;
  state: VolumeState;
  numaNode: number | null;
  cpuSet: string;
  labels: Record<string, string>;
  qcow2: Record<string, unknown>;
  error: ErrorRecord | null;
  requestId: string | null;
  operationId: string | null;
  allocatedBytes: bigint;
  hostPath: string;
  antiAffinityGroup: string;
  sourceVolumeId: string;
  sourceSnapshotId: string;
  createdAt: Date;
  updatedAt: Date;
  deletedAt: Date | null;
}

export interface OperationRow {
  id: string;
  kind: OperationKind;
  state: OperationState;
  hostId: string;
  poolId: string;
  volumeId: string;
  snapshotId: string;
  /** The export a create_export or delete_export changes ("" for others). */
  exportId: string;
  command: Uint8Array;
  attempts: number;
  error: ErrorRecord | null;
  requestedBy: string;
  /** The request id of the call that started it, when the caller gave one. */
  requestId: string | null;
  createdAt: Date;
  updatedAt: Date;
  sentAt: Date | null;
  finishedAt: Date | null;
}

export interface ReservationRow {
  volumeId: string;
  poolId: string;
  bytes: bigint;
  state: "reserved" | "allocated" | "released";
  expiresAt: Date;
}

/** Keyset pagination: the token is the last id of the previous page. */
export function encodePageToken(lastId: string): string {
  return Buffer.from(lastId, "utf8").toString("base64url");
}

export function decodePageToken(token: string): string {
  if (token === "") return "";
  const id = Buffer.from(token, "base64url").toString("utf8");
  if (!/^[a-z0-9./_-]{1,200}$/.test(id)) throw new Error("page token is not valid");
  return id;
}

export function pageSize(requested: number, max = 1000, dflt = 100): number {
  if (!requested) return dflt;
  return Math.min(Math.max(1, requested), max);
}
