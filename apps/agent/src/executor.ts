import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Qcow2Options as DomainQcow2 } from "@stowage/core";
import { StowageError } from "@stowage/core";
import type {
  VolumeArtifact as DriverArtifact,
  PoolDriver,
  WipeMode as WipeModeName,
} from "@stowage/drivers";
import {
  type AgentCommand,
  CompressionType,
  ErrorDetailSchema,
  type OperationResult,
  OperationResultSchema,
  Preallocation,
  type Qcow2Options,
  VolumeArtifactSchema,
  VolumeFormat,
  WipeMode,
} from "@stowage/proto";

const WIPE: Record<number, WipeModeName> = {
  [WipeMode.NONE]: "none",
  [WipeMode.ZERO]: "zero",
  [WipeMode.DISCARD]: "discard",
};

const PREALLOC: Record<number, DomainQcow2["preallocation"]> = {
  [Preallocation.OFF]: "off",
  [Preallocation.METADATA]: "metadata",
  [Preallocation.FALLOC]: "falloc",
  [Preallocation.FULL]: "full",
};

export function qcow2FromWire(q: Qcow2Options | undefined): DomainQcow2 {
  const out: DomainQcow2 = {};
  if (!q) return out;
  if (q.clusterSizeBytes !== undefined) out.clusterSize = Number(q.clusterSizeBytes);
  const p = PREALLOC[q.preallocation];
  if (p) out.preallocation = p;
  if (q.lazyRefcounts !== undefined) out.lazyRefcounts = q.lazyRefcounts;
  if (q.compressionType === CompressionType.ZLIB) out.compressionType = "zlib";
  if (q.compressionType === CompressionType.ZSTD) out.compressionType = "zstd";
  if (q.extendedL2 !== undefined) out.extendedL2 = q.extendedL2;
  return out;
}

export function artifactToWire(a: DriverArtifact) {
  return create(VolumeArtifactSchema, {
    volumeId: a.volumeId,
    poolName: a.poolName,
    sizeBytes: a.sizeBytes,
    format: a.format === "qcow2" ? VolumeFormat.QCOW2 : VolumeFormat.RAW,
    allocatedBytes: a.allocatedBytes,
    path: a.path,
    operationId: a.operationId,
  });
}

function errorDetail(err: unknown) {
  const e = StowageError.from(err);
  const d = e.details as {
    tool?: string;
    argv?: string[];
    exitCode?: number;
    stderr?: string;
    timedOut?: boolean;
  };
  const t = err as {
    tool?: string;
    argv?: readonly string[];
    exitCode?: number;
    stderr?: string;
    timedOut?: boolean;
  };
  return create(ErrorDetailSchema, {
    code: e.code,
    message: e.message,
    tool: t.tool ?? d.tool ?? "",
    argv: [...(t.argv ?? d.argv ?? [])],
    exitCode: t.exitCode ?? d.exitCode,
    stderr: t.stderr ?? d.stderr ?? "",
    timedOut: t.timedOut ?? d.timedOut ?? false,
  });
}

/**
 * Runs one command against the pool's driver. Drivers are idempotent, so a redelivered command converges; any
 * failure becomes a result with a structured error rather than an exception (the message is then acked).
 */
export async function executeCommand(
  drivers: ReadonlyMap<string, PoolDriver>,
  hostId: string,
  cmd: AgentCommand,
): Promise<OperationResult> {
  const t0 = Date.now();
  const base = { operationId: cmd.operationId, hostId, kind: cmd.kind };
  const finish = (fields: MessageInitShape<typeof OperationResultSchema>) =>
    create(OperationResultSchema, {
      ...base,
      ...fields,
      finishedAt: timestampNow(),
      durationMs: BigInt(Date.now() - t0),
    });
  try {
    const driver = drivers.get(cmd.poolName);
    if (!driver) {
      throw new StowageError("not_found", `pool ${cmd.poolName} is not configured on host ${hostId}`);
    }
    const p = cmd.payload;
    switch (p.case) {
      case "createVolume": {
        const r = await driver.createVolume({
          volumeId: p.value.volumeId,
          operationId: cmd.operationId,
          sizeBytes: p.value.sizeBytes,
          format: p.value.format === VolumeFormat.RAW ? "raw" : "qcow2",
          qcow2: qcow2FromWire(p.value.qcow2),
        });
        return finish({ success: true, artifact: artifactToWire(r.artifact), adopted: r.adopted });
      }
      case "deleteVolume": {
        const r = await driver.deleteVolume(p.value.volumeId, {
          operationId: cmd.operationId,
          wipe: WIPE[p.value.wipe] ?? "none",
        });
        return finish({ success: true, adopted: !r.existed });
      }
      case "cloneVolume": {
        const r = await driver.cloneVolume({
          volumeId: p.value.volumeId,
          operationId: cmd.operationId,
          sourceVolumeId: p.value.sourceVolumeId,
          ...(p.value.sourceSnapshotId ? { sourceSnapshotId: p.value.sourceSnapshotId } : {}),
          ...(p.value.sizeBytes ? { sizeBytes: p.value.sizeBytes } : {}),
          format: p.value.format === VolumeFormat.RAW ? "raw" : "qcow2",
          flatten: p.value.flatten,
        });
        return finish({ success: true, artifact: artifactToWire(r.artifact), adopted: r.adopted });
      }
      case "createSnapshot": {
        const r = await driver.createSnapshot(p.value.volumeId, p.value.snapshotId, {
          operationId: cmd.operationId,
        });
        return finish({ success: true, adopted: r.adopted });
      }
      case "deleteSnapshot": {
        const r = await driver.deleteSnapshot(p.value.volumeId, p.value.snapshotId, {
          operationId: cmd.operationId,
        });
        return finish({ success: true, adopted: !r.existed });
      }
      case "revertSnapshot": {
        const a = await driver.revertSnapshot(p.value.volumeId, p.value.snapshotId, {
          operationId: cmd.operationId,
        });
        return finish({ success: true, artifact: artifactToWire(a) });
      }
      case "resizeVolume": {
        const a = await driver.resizeVolume(p.value.volumeId, p.value.newSizeBytes, {
          allowShrink: p.value.allowShrink,
          operationId: cmd.operationId,
        });
        return finish({ success: true, artifact: artifactToWire(a) });
      }
      default:
        throw new StowageError("unimplemented", `this agent cannot run ${p.case ?? "an empty"} commands yet`);
    }
  } catch (err) {
    return finish({ success: false, error: errorDetail(err) });
  }
}
