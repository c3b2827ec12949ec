import type { WipeMode } from "./capabilities.js";
import type { VolumeFormat } from "./domain.js";
import type { Qcow2Options } from "./qcow2.js";

/** One volume as it exists on a backend. */
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

export interface CreateVolumeSpec {
  volumeId: string;
  operationId: string;
  sizeBytes: bigint;
  format: VolumeFormat;
  qcow2?: Qcow2Options;
}

export interface CloneVolumeSpec {
  /** The new volume. */
  volumeId: string;
  operationId: string;
  sourceVolumeId: string;
  /** Clone from this snapshot of the source; absent: from the source's current data. */
  sourceSnapshotId?: string;
  /** Defaults to the source's size; may be larger (grown after cloning). */
  sizeBytes?: bigint;
  format: VolumeFormat;
  /** Copy every block now instead of sharing them with the source. */
  flatten?: boolean;
}

export interface DeleteVolumeSpec {
  volumeId: string;
  operationId: string;
  wipe: WipeMode;
}

export interface ResizeVolumeSpec {
  volumeId: string;
  operationId: string;
  newSizeBytes: bigint;
  /** Shrinking throws away the data past the new end; it needs an explicit yes. */
  allowShrink: boolean;
}

export interface SnapshotSpec {
  volumeId: string;
  snapshotId: string;
  operationId: string;
}

/** What one operation asks of the pool's driver, as plain domain values (decoded from an agent command). */
export type AgentOperationSpec =
  | { kind: "create_volume"; spec: CreateVolumeSpec }
  | { kind: "clone_volume"; spec: CloneVolumeSpec }
  | { kind: "delete_volume"; spec: DeleteVolumeSpec }
  | { kind: "resize_volume"; spec: ResizeVolumeSpec }
  | { kind: "create_snapshot" | "delete_snapshot" | "revert_snapshot"; spec: SnapshotSpec };

/** An operation for one pool of the agent's host. */
export type AgentOperation = AgentOperationSpec & { operationId: string; poolName: string };
