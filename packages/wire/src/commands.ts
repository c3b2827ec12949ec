import { type AgentOperation, type AgentOperationSpec, StowageError } from "@stowage/core";
import type { AgentCommand } from "@stowage/proto";
import { formats, wipeModes } from "./enums.js";
import { qcow2FromWire } from "./qcow2.js";

/**
 * An agent command as the driver call it asks for. A format that is unset or unknown is INVALID_ARGUMENT
 * (never a default: the controller always names it); an unset wipe mode means no wipe.
 */
export function operationFromCommand(cmd: AgentCommand): AgentOperation {
  return { operationId: cmd.operationId, poolName: cmd.poolName, ...specFromPayload(cmd) };
}

function specFromPayload(cmd: AgentCommand): AgentOperationSpec {
  const operationId = cmd.operationId;
  const p = cmd.payload;
  switch (p.case) {
    case "createVolume":
      return {
        kind: "create_volume",
        spec: {
          volumeId: p.value.volumeId,
          operationId,
          sizeBytes: p.value.sizeBytes,
          format: formats.require(p.value.format, "create_volume.format"),
          qcow2: qcow2FromWire(p.value.qcow2),
        },
      };
    case "cloneVolume":
      return {
        kind: "clone_volume",
        spec: {
          volumeId: p.value.volumeId,
          operationId,
          sourceVolumeId: p.value.sourceVolumeId,
          ...(p.value.sourceSnapshotId ? { sourceSnapshotId: p.value.sourceSnapshotId } : {}),
          ...(p.value.sizeBytes ? { sizeBytes: p.value.sizeBytes } : {}),
          format: formats.require(p.value.format, "clone_volume.format"),
          flatten: p.value.flatten,
        },
      };
    case "deleteVolume":
      return {
        kind: "delete_volume",
        spec: {
          volumeId: p.value.volumeId,
          operationId,
          wipe: wipeModes.optional(p.value.wipe, "delete_volume.wipe") ?? "none",
        },
      };
    case "resizeVolume":
      return {
        kind: "resize_volume",
        spec: {
          volumeId: p.value.volumeId,
          operationId,
          newSizeBytes: p.value.newSizeBytes,
          allowShrink: p.value.allowShrink,
        },
      };
    case "createSnapshot":
    case "deleteSnapshot":
    case "revertSnapshot":
      return {
        kind: SNAPSHOT_KINDS[p.case],
        spec: { volumeId: p.value.volumeId, snapshotId: p.value.snapshotId, operationId },
      };
    default:
      throw new StowageError("unimplemented", "this agent cannot run an empty command");
  }
}

const SNAPSHOT_KINDS = {
  createSnapshot: "create_snapshot",
  deleteSnapshot: "delete_snapshot",
  revertSnapshot: "revert_snapshot",
} as const;
