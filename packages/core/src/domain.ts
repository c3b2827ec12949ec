/** Domain vocabulary shared by every package (docs/architecture.md, "The words"). Wire enums map onto these at the edges. */

export const POOL_KINDS = ["dir", "lvm", "lvmthin", "netfs", "rbd"] as const;
export type PoolKind = (typeof POOL_KINDS)[number];

export const VOLUME_FORMATS = ["raw", "qcow2"] as const;
export type VolumeFormat = (typeof VOLUME_FORMATS)[number];

/** Formats each pool kind can hold. Block pools (LVM, RBD) hold raw only. */
export const FORMATS_BY_KIND: Record<PoolKind, readonly VolumeFormat[]> = {
  dir: ["qcow2", "raw"],
  netfs: ["qcow2", "raw"],
  lvm: ["raw"],
  lvmthin: ["raw"],
  rbd: ["raw"],
};

/** Thin kinds may be overcommitted; thick kinds are bounded by free physical bytes. */
export const THIN_KINDS: ReadonlySet<PoolKind> = new Set(["lvmthin", "rbd"]);

export const OPERATION_KINDS = [
  "create_volume",
  "delete_volume",
  "resize_volume",
  "clone_volume",
  "create_snapshot",
  "delete_snapshot",
  "revert_snapshot",
  "create_export",
  "delete_export",
  "copy_volume",
] as const;
export type OperationKind = (typeof OPERATION_KINDS)[number];

export const OPERATION_STATES = ["pending", "sent", "succeeded", "failed"] as const;
export type OperationState = (typeof OPERATION_STATES)[number];

export const HOST_STATES = ["up", "down"] as const;
export type HostState = (typeof HOST_STATES)[number];

/** What the reconciler records when a host's inventory and the database disagree. */
export const FINDING_KINDS = ["orphan", "missing", "foreign"] as const;
export type FindingKind = (typeof FINDING_KINDS)[number];
