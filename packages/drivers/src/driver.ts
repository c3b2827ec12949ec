import { invalidArgument, isId, type PoolKind, type Qcow2Options, type VolumeFormat } from "@stowage/core";

/**
 * The contract every pool kind implements (as Proxmox's pve-storage plugins do). Every mutating call is
 * idempotent: it looks at what already exists (the artefact and its ownership marker) before acting, so a
 * redelivered or retried operation converges instead of leaving a second artefact (DESIGN.md invariant 2).
 */

/** One volume as it exists on the backend. */
export interface VolumeArtifact {
  volumeId: string;
  poolName: string;
  /** Virtual size, as the guest sees it. */
  sizeBytes: bigint;
  format: VolumeFormat;
  /** Bytes the backend actually holds for it. */
  allocatedBytes: bigint;
  /** Where QEMU opens it (a file, a device node, an rbd: spec). */
  path: string;
  /** The operation that created it, from the ownership marker. */
  operationId: string;
}

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

export interface CreateVolumeSpec {
  volumeId: string;
  operationId: string;
  sizeBytes: bigint;
  format: VolumeFormat;
  qcow2?: Qcow2Options;
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

export interface PoolDriver {
  readonly kind: PoolKind;
  readonly poolName: string;
  check(): Promise<{ healthy: boolean; message: string }>;
  capacity(): Promise<PoolCapacityReport>;
  createVolume(spec: CreateVolumeSpec): Promise<CreateResult>;
  /** A missing volume gives `existed: false`, not an error, so repeated deletes succeed. */
  deleteVolume(volumeId: string, opts?: { operationId?: string }): Promise<{ existed: boolean }>;
  resizeVolume(volumeId: string, newSizeBytes: bigint, opts: ResizeOptions): Promise<VolumeArtifact>;
  /** Undefined when the volume does not exist (or is not ours). */
  info(volumeId: string): Promise<VolumeArtifact | undefined>;
  /** `foreign`: names of artefacts in the pool without our ownership marker, to report, never to delete. */
  list(): Promise<{ volumes: VolumeArtifact[]; foreign: string[] }>;
}

/**
 * Every driver entry point calls this before anything else: artefact names are built from volume ids only,
 * and a volume id can never hold a path separator, `..`, or a shell word (DESIGN.md invariant 4).
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
