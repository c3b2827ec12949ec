import {
  type CloneVolumeSpec as CloneSpec,
  type CreateVolumeSpec,
  invalidArgument,
  isId,
  type PoolKind,
  type VolumeArtifact,
  type WipeMode,
} from "@stowage/core";

// The specs a driver is called with are core's plain domain values, the same the wire decodes commands to.
export type {
  CloneVolumeSpec as CloneSpec,
  CreateVolumeSpec,
  VolumeArtifact,
  WipeMode,
} from "@stowage/core";

export interface PoolCapacityReport {
  totalBytes: bigint;
  usedBytes: bigint;
  freeBytes: bigint;
  /** Sum of the virtual sizes of the volumes Stowage owns in the pool. */
  provisionedBytes: bigint;
  /** Thin pools only. */
  dataPercent?: number;
  metadataPercent?: number;
}

export interface CreateResult {
  artifact: VolumeArtifact;
  /** It already existed (a redelivery, or a crash after the work but before the result was sent). */
  adopted: boolean;
}

export interface ResizeOptions {
  /** Shrinking throws away the data past the new end; it needs an explicit yes. */
  allowShrink: boolean;
  operationId: string;
}

export interface DeleteOptions {
  operationId?: string;
  /** Destroy the data before the space is released (zero: write zeros; discard: blkdiscard/fallocate punch). */
  wipe?: WipeMode;
  /** Throttle for wipes, in bytes per second (0 or absent: unthrottled). */
  wipeBytesPerSecond?: number;
}

/** A point-in-time copy of a volume. Snapshot ids are `snap-` + 32 hex digits, issued by the controller. */
export interface SnapshotInfo {
  snapshotId: string;
  volumeId: string;
  /** The volume's virtual size when the snapshot was taken. */
  sizeBytes: bigint;
  createdAt: string;
  /** The operation that made it, from the ownership marker. */
  operationId: string;
}

/**
 * The contract every pool kind offers (as Proxmox's pve-storage plugins do); each kind implements it through
 * guardDriver (guard.ts), which checks arguments, locks and looks volumes up the same way for all of them.
 * Every mutating call is idempotent: it looks at what already exists (the artefact and its ownership marker)
 * before acting, so a redelivered or retried operation converges instead of leaving a second artefact
 * (docs/architecture.md, invariant 2).
 */
export interface PoolDriver {
  readonly kind: PoolKind;
  readonly poolName: string;
  check(): Promise<{ healthy: boolean; message: string }>;
  capacity(): Promise<PoolCapacityReport>;
  createVolume(spec: CreateVolumeSpec): Promise<CreateResult>;
  /** A missing volume gives `existed: false`, not an error, so repeated deletes succeed. */
  deleteVolume(volumeId: string, opts?: DeleteOptions): Promise<{ existed: boolean }>;
  resizeVolume(volumeId: string, newSizeBytes: bigint, opts: ResizeOptions): Promise<VolumeArtifact>;
  /** Undefined when the volume does not exist (or is not ours). */
  info(volumeId: string): Promise<VolumeArtifact | undefined>;
  /** `foreign`: names of artefacts in the pool without our ownership marker, to report, never to delete. */
  list(): Promise<{ volumes: VolumeArtifact[]; foreign: string[] }>;

  /** Idempotent: an existing snapshot with this id is returned with `adopted: true`. */
  createSnapshot(
    volumeId: string,
    snapshotId: string,
    opts: { operationId: string },
  ): Promise<{ snapshot: SnapshotInfo; adopted: boolean }>;
  listSnapshots(volumeId: string): Promise<SnapshotInfo[]>;
  /** A missing snapshot gives `existed: false`. A snapshot that clones depend on is refused (failed_precondition). */
  deleteSnapshot(
    volumeId: string,
    snapshotId: string,
    opts: { operationId: string },
  ): Promise<{ existed: boolean }>;
  /** Rolls the volume back to the snapshot's data; repeating it converges. */
  revertSnapshot(
    volumeId: string,
    snapshotId: string,
    opts: { operationId: string },
  ): Promise<VolumeArtifact>;
  /** Idempotent like createVolume: an existing clone with this volume id is adopted. */
  cloneVolume(spec: CloneSpec): Promise<CreateResult>;
  /** Removes the volume's dependency on its source (backing chain or RBD parent). Repeating it converges. */
  flattenVolume(volumeId: string, opts: { operationId: string }): Promise<VolumeArtifact>;
}

/** Snapshot ids name artefacts too: the same rule as volume ids. */
export function assertSnapshotId(snapshotId: unknown): asserts snapshotId is string {
  if (typeof snapshotId !== "string" || !isId(snapshotId, "snap")) {
    throw invalidArgument(
      `snapshot id ${JSON.stringify(typeof snapshotId === "string" ? snapshotId.slice(0, 80) : snapshotId)} is not valid: expected snap- followed by 32 hex digits`,
      { field: "snapshotId" },
    );
  }
}

/**
 * The guard (guard.ts) calls this before anything else, for every driver: artefact names are built from volume
 * ids only, and a volume id can never hold a path separator, `..`, or a shell word (docs/architecture.md,
 * invariant 4).
 */
export function assertVolumeId(volumeId: unknown): asserts volumeId is string {
  if (typeof volumeId !== "string" || !isId(volumeId, "vol")) {
    throw invalidArgument(
      `volume id ${JSON.stringify(typeof volumeId === "string" ? volumeId.slice(0, 80) : volumeId)} is not valid: expected vol- followed by 32 hex digits`,
      { field: "volumeId" },
    );
  }
}

/** Operation ids are recorded in ownership markers; they must be ids we issued. */
export function assertOperationId(operationId: unknown): asserts operationId is string {
  if (typeof operationId !== "string" || !isId(operationId, "op")) {
    throw invalidArgument(
      `operation id ${JSON.stringify(typeof operationId === "string" ? operationId.slice(0, 80) : operationId)} is not valid: expected op- followed by 32 hex digits`,
      { field: "operationId" },
    );
  }
}

/** Inventories list volumes and snapshots in id order. */
export function byVolumeId(a: { volumeId: string }, b: { volumeId: string }): number {
  return compareIds(a.volumeId, b.volumeId);
}

export function bySnapshotId(a: { snapshotId: string }, b: { snapshotId: string }): number {
  return compareIds(a.snapshotId, b.snapshotId);
}

function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
