import type { VolumeFormat } from "./domain.js";
import { invalidArgument } from "./errors.js";

export const PREALLOCATIONS = ["off", "metadata", "falloc", "full"] as const;
export type Preallocation = (typeof PREALLOCATIONS)[number];
export const COMPRESSION_TYPES = ["zlib", "zstd"] as const;
export type CompressionType = (typeof COMPRESSION_TYPES)[number];

export interface Qcow2Options {
  clusterSize?: number;
  preallocation?: Preallocation;
  lazyRefcounts?: boolean;
  compressionType?: CompressionType;
  extendedL2?: boolean;
}

export const MIN_CLUSTER_SIZE = 512;
export const MAX_CLUSTER_SIZE = 2 * 1024 * 1024;
/** qcow2 subclusters are cluster/32; qemu refuses extended L2 below 16 KiB clusters. */
export const MIN_EXTENDED_L2_CLUSTER_SIZE = 16 * 1024;
/** qemu's default qcow2 cluster size, which extended_l2 is checked against when none is given. */
export const DEFAULT_CLUSTER_SIZE = 64 * 1024;
/** A raw file can be preallocated too, but has no metadata to preallocate. */
export const RAW_PREALLOCATIONS: readonly Preallocation[] = ["off", "falloc", "full"];

const QCOW2_ONLY = ["clusterSize", "lazyRefcounts", "compressionType", "extendedL2"] as const;

/** A cluster size qemu-img accepts: a power of two from 512 B to 2 MiB. */
export function isQcow2ClusterSize(bytes: number): boolean {
  return (
    Number.isInteger(bytes) &&
    bytes >= MIN_CLUSTER_SIZE &&
    bytes <= MAX_CLUSTER_SIZE &&
    (bytes & (bytes - 1)) === 0
  );
}

/**
 * The one set of image-option rules, checked by the controller before anything is written and by the drivers
 * before qemu-img runs: names qemu knows, a cluster size it takes, extended L2 only on clusters of 16 KiB or
 * more, and on raw only a preallocation raw has. Returns the options unchanged.
 */
export function validateQcow2(format: VolumeFormat, q: Qcow2Options): Qcow2Options {
  const pre = q.preallocation;
  if (pre !== undefined && !(PREALLOCATIONS as readonly string[]).includes(pre)) {
    throw invalidArgument(
      `preallocation ${JSON.stringify(pre)} is not valid: use ${PREALLOCATIONS.join(", ")}`,
      {
        field: "preallocation",
      },
    );
  }
  if (format === "raw") return validateRawOptions(q);
  if (format !== "qcow2") {
    throw invalidArgument(`volume format ${JSON.stringify(format)} is not valid: use qcow2 or raw`, {
      field: "format",
    });
  }
  const cs = q.clusterSize;
  if (cs !== undefined && !isQcow2ClusterSize(cs)) {
    throw invalidArgument(
      `qcow2 cluster size ${cs} is not valid: use a power of two from ${MIN_CLUSTER_SIZE} to ${MAX_CLUSTER_SIZE} bytes (64 KiB is qemu's default)`,
      { field: "clusterSize" },
    );
  }
  const compression = q.compressionType;
  if (compression !== undefined && !(COMPRESSION_TYPES as readonly string[]).includes(compression)) {
    throw invalidArgument(
      `compression type ${JSON.stringify(compression)} is not valid: use ${COMPRESSION_TYPES.join(" or ")}`,
      { field: "compressionType" },
    );
  }
  if (q.extendedL2 && (cs ?? DEFAULT_CLUSTER_SIZE) < MIN_EXTENDED_L2_CLUSTER_SIZE) {
    throw invalidArgument(
      `qcow2 extended L2 entries need a cluster size of at least ${MIN_EXTENDED_L2_CLUSTER_SIZE} bytes (got ${cs})`,
      { field: "extendedL2" },
    );
  }
  return q;
}

function validateRawOptions(q: Qcow2Options): Qcow2Options {
  const qcow2Only = QCOW2_ONLY.filter((k) => q[k] !== undefined);
  if (qcow2Only.length > 0) {
    throw invalidArgument(`option ${qcow2Only.join(", ")} applies to qcow2 volumes only, not raw`, {
      field: qcow2Only[0],
    });
  }
  if (q.preallocation !== undefined && !RAW_PREALLOCATIONS.includes(q.preallocation)) {
    throw invalidArgument(
      `preallocation ${q.preallocation} is not supported for raw volumes: use ${RAW_PREALLOCATIONS.join(", ")}`,
      { field: "preallocation" },
    );
  }
  return q;
}
