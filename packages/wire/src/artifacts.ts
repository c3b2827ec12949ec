import { create } from "@bufbuild/protobuf";
import type { VolumeArtifact as DomainArtifact } from "@stowage/core";
import { type VolumeArtifact, VolumeArtifactSchema } from "@stowage/proto";
import { formats } from "./enums.js";

export function artifactToWire(a: DomainArtifact): VolumeArtifact {
  return create(VolumeArtifactSchema, {
    volumeId: a.volumeId,
    poolName: a.poolName,
    sizeBytes: a.sizeBytes,
    format: formats.wire(a.format),
    allocatedBytes: a.allocatedBytes,
    path: a.path,
    operationId: a.operationId,
  });
}

/** An artefact an agent reported; a format this build does not know is INVALID_ARGUMENT. */
export function artifactFromWire(a: VolumeArtifact): DomainArtifact {
  return {
    volumeId: a.volumeId,
    poolName: a.poolName,
    sizeBytes: a.sizeBytes,
    format: formats.require(a.format, "artifact.format"),
    allocatedBytes: a.allocatedBytes,
    path: a.path,
    operationId: a.operationId,
  };
}
