import { create } from "@bufbuild/protobuf";
import type { Qcow2Options as DomainQcow2 } from "@stowage/core";
import { CompressionType, Preallocation, type Qcow2Options, Qcow2OptionsSchema } from "@stowage/proto";
import { compressionTypes, preallocations } from "./enums.js";

/** Wire qcow2 options as core's; unset fields stay unset, an enum number this build does not know is refused. */
export function qcow2FromWire(q: Qcow2Options | undefined): DomainQcow2 {
  if (!q) return {};
  const out: DomainQcow2 = {};
  if (q.clusterSizeBytes !== undefined) out.clusterSize = Number(q.clusterSizeBytes);
  const p = preallocations.optional(q.preallocation, "qcow2.preallocation");
  if (p) out.preallocation = p;
  if (q.lazyRefcounts !== undefined) out.lazyRefcounts = q.lazyRefcounts;
  const c = compressionTypes.optional(q.compressionType, "qcow2.compression_type");
  if (c) out.compressionType = c;
  if (q.extendedL2 !== undefined) out.extendedL2 = q.extendedL2;
  return out;
}

export function qcow2ToWire(q: DomainQcow2): Qcow2Options {
  return create(Qcow2OptionsSchema, {
    clusterSizeBytes: q.clusterSize === undefined ? undefined : BigInt(q.clusterSize),
    preallocation: q.preallocation ? preallocations.wire(q.preallocation) : Preallocation.UNSPECIFIED,
    lazyRefcounts: q.lazyRefcounts,
    compressionType: q.compressionType
      ? compressionTypes.wire(q.compressionType)
      : CompressionType.UNSPECIFIED,
    extendedL2: q.extendedL2,
  });
}
