import { alreadyExists, failedPrecondition, formatSize, invalidArgument, notFound } from "@stowage/core";
import type { VolumeArtifact } from "../driver.js";
import {
  qemuImgConvertArgv,
  qemuImgCreateOverlayArgv,
  qemuImgFlattenArgv,
  qemuImgResizeArgv,
} from "../qemu-img.js";
import type { DirBases } from "./bases.js";
import type { DirImages } from "./images.js";
import type { DirPool } from "./layout.js";
import type { DirBackend, OwnedVolume, Sidecar } from "./records.js";
import type { DirVolumes } from "./volumes.js";

// Clones: linked (a qcow2 overlay on the snapshot's base image) when they can be, full copies otherwise.

export function createDirClones(pool: DirPool, images: DirImages, bases: DirBases, volumes: DirVolumes) {
  const { poolName, runner, copyTimeoutMs } = pool;

  const clone: DirBackend["clone"] = async (spec, rec, withSource) => {
    const id = spec.volumeId;
    const sourceId = spec.sourceVolumeId;
    const snapshotId = spec.sourceSnapshotId;
    if (rec) {
      const same =
        rec.clone?.sourceVolumeId === sourceId &&
        rec.clone.sourceSnapshotId === snapshotId &&
        rec.format === spec.format;
      if (!same) {
        const what = rec.clone
          ? `a clone of ${rec.clone.sourceVolumeId}${rec.clone.sourceSnapshotId ? `@${rec.clone.sourceSnapshotId}` : ""}`
          : "a volume";
        throw alreadyExists(
          `volume ${id} already exists in pool ${poolName} as ${what} (${rec.format}, operation ${rec.operationId}); this request clones ${sourceId}${snapshotId ? `@${snapshotId}` : ""}`,
          { volumeId: id, poolName },
        );
      }
    }
    const adopted = await volumes.adopt(id, rec, spec.format);
    if (adopted) return adopted;
    return withSource(async (source) => {
      const src = source.rec;
      const srcPath = pool.volumePath(sourceId, src.format);
      const srcInfo = await images.imageInfo(srcPath, src.format);
      let sourceSize = srcInfo.virtualSize;
      if (snapshotId !== undefined) {
        if (!srcInfo.snapshots.some((s) => s.name === snapshotId)) {
          throw notFound(`snapshot ${snapshotId} of volume ${sourceId} does not exist in pool ${poolName}`, {
            volumeId: sourceId,
            snapshotId,
          });
        }
        // The snapshot's own size: the volume may have been resized since.
        sourceSize = src.snapshots.find((s) => s.snapshotId === snapshotId)?.sizeBytes ?? sourceSize;
      }
      const size = spec.sizeBytes ?? sourceSize;
      if (size < sourceSize) {
        throw invalidArgument(
          `a clone of ${sourceId} cannot be smaller than its source (${formatSize(sourceSize)}, asked ${formatSize(size)}); clone, then shrink it explicitly`,
          { field: "sizeBytes" },
        );
      }

      // Linked when it can be: a qcow2 overlay on the snapshot's base, unless that chain would get too deep.
      let linked = snapshotId !== undefined && spec.format === "qcow2" && spec.flatten !== true;
      if (linked && snapshotId !== undefined) {
        const base = pool.basePath(snapshotId);
        const below =
          (await pool.fs.kindOf(base)) === "file"
            ? (await images.backingDepth(base, "qcow2")) + 1
            : (await images.backingDepth(srcPath, src.format)) + 1;
        linked = below <= pool.maxChainDepth;
      }

      const record: Sidecar = {
        volumeId: id,
        operationId: spec.operationId,
        format: spec.format,
        sizeBytes: size,
        createdAt: pool.now().toISOString(),
        snapshots: [],
        clone: {
          sourceVolumeId: sourceId,
          ...(snapshotId !== undefined ? { sourceSnapshotId: snapshotId } : {}),
        },
      };
      const artifact = await volumes.materialise(record, async (tmp) => {
        if (linked && snapshotId !== undefined) {
          const base = await bases.ensure(sourceId, srcPath, srcInfo, snapshotId, spec.operationId);
          await runner.run(
            "qemu-img",
            qemuImgCreateOverlayArgv(tmp, { path: base, format: "qcow2" }, size, pool.copyOptions("qcow2")),
          );
          return;
        }
        await runner.run(
          "qemu-img",
          qemuImgConvertArgv(srcPath, tmp, {
            sourceFormat: src.format,
            targetFormat: spec.format,
            ...(snapshotId !== undefined ? { snapshotTag: snapshotId } : {}),
            qcow2: pool.copyOptions(spec.format),
          }),
          { timeoutMs: copyTimeoutMs },
        );
        // A copy has the size of what it read (for a snapshot: the image's size now, not the snapshot's).
        const copied = (await images.imageInfo(tmp, spec.format)).virtualSize;
        if (copied !== size) {
          await runner.run("qemu-img", qemuImgResizeArgv(tmp, spec.format, size, { shrink: copied > size }));
        }
      });
      return { artifact, adopted: false };
    });
  };

  /**
   * Copies what the volume reads from its backing chain into it and drops the backing file: `qemu-img rebase
   * -b ""` in safe mode, in place. That is crash-safe as it is: qemu fills the overlay's unallocated clusters
   * with the very data they already read through, and only then rewrites the header, so the guest sees the
   * same bytes at every instant. It also takes qemu's image lock, so it fails rather than flatten an image a
   * running VM has open (a copy-and-rename would silently replace the file under the VM).
   */
  async function flatten(volume: OwnedVolume): Promise<VolumeArtifact> {
    const { id, rec } = volume;
    const path = pool.volumePath(id, rec.format);
    const image = await images.imageInfo(path, rec.format);
    // Already flat (a raw file always is): a redelivered flatten converges.
    if (rec.format === "raw" || images.backingOf(image) === undefined)
      return images.toArtifact(id, rec, image);
    if (image.snapshots.length > 0) {
      // rebase rewrites the active layer only: the snapshots' unallocated clusters would read zeros.
      throw failedPrecondition(
        `volume ${id} has internal snapshots (${image.snapshots.map((s) => s.name).join(", ")}) that read through its backing file; flattening would change their data, so delete them first`,
        { volumeId: id },
      );
    }
    await runner.run("qemu-img", qemuImgFlattenArgv(path), { timeoutMs: copyTimeoutMs });
    // Flattening keeps the virtual size: the artifact is the one read above, with the blocks it holds now.
    return images.toArtifact(id, rec, { ...image, actualSize: await pool.fs.fsyncFile(path) });
  }

  return { clone, flatten };
}
