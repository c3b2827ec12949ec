import { failedPrecondition, type VolumeFormat } from "@stowage/core";
import type { VolumeArtifact } from "../driver.js";
import {
  type BackingFile,
  parseQemuImgInfo,
  parseQemuImgInfoChain,
  type QemuImgInfo,
  qemuImgInfoArgv,
  qemuImgInfoChainArgv,
} from "../qemu-img.js";
import type { DirPool } from "./layout.js";
import { currentSize, type OwnedVolume, type Sidecar } from "./records.js";

/** What qemu-img says about the pool's images. */
export interface DirImages {
  imageInfo(path: string, format: VolumeFormat): Promise<QemuImgInfo>;
  /** How many backing files lie below the image (0 for a flat image). */
  backingDepth(path: string, format: VolumeFormat): Promise<number>;
  toArtifact(id: string, rec: Sidecar, info: QemuImgInfo): VolumeArtifact;
  /** The artifact from what the driver knows without asking qemu-img: the record, and the image's blocks. */
  fromRecord(id: string, rec: Sidecar, allocatedBytes: bigint): VolumeArtifact;
  inspect(volume: OwnedVolume): Promise<VolumeArtifact>;
  backingOf(info: QemuImgInfo): BackingFile | undefined;
}

export function createDirImages(pool: DirPool): DirImages {
  const { runner } = pool;

  async function imageInfo(path: string, format: VolumeFormat): Promise<QemuImgInfo> {
    const argv = qemuImgInfoArgv(path, format);
    const { stdout } = await runner.run("qemu-img", argv);
    return parseQemuImgInfo(stdout, argv);
  }

  function toArtifact(id: string, rec: Sidecar, info: QemuImgInfo): VolumeArtifact {
    return {
      volumeId: id,
      poolName: pool.poolName,
      sizeBytes: info.virtualSize,
      format: rec.format,
      allocatedBytes: info.actualSize ?? 0n,
      path: pool.artifactPath(pool.volumePath(id, rec.format)),
      operationId: rec.operationId,
    };
  }

  function fromRecord(id: string, rec: Sidecar, allocatedBytes: bigint): VolumeArtifact {
    return {
      volumeId: id,
      poolName: pool.poolName,
      sizeBytes: currentSize(rec),
      format: rec.format,
      allocatedBytes,
      path: pool.artifactPath(pool.volumePath(id, rec.format)),
      operationId: rec.operationId,
    };
  }

  return {
    imageInfo,
    fromRecord,
    async backingDepth(path, format) {
      if (format === "raw") return 0;
      const argv = qemuImgInfoChainArgv(path, format);
      const { stdout } = await runner.run("qemu-img", argv);
      return parseQemuImgInfoChain(stdout, argv).length - 1;
    },
    toArtifact,
    async inspect({ id, rec }) {
      return toArtifact(id, rec, await imageInfo(pool.volumePath(id, rec.format), rec.format));
    },
    backingOf(i) {
      const name = i.fullBackingFilename ?? i.backingFilename;
      if (name === undefined) return undefined;
      const format = i.backingFormat ?? "qcow2";
      if (format !== "qcow2" && format !== "raw") {
        throw failedPrecondition(
          `${i.filename} has a backing file of format ${format}, which ${pool.label} pools never make`,
        );
      }
      return { path: pool.resolveBacking(name), format };
    },
  };
}
