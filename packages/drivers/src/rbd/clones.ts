import { formatSize, invalidArgument, notFound, StowageError } from "@stowage/core";
import type { VolumeArtifact } from "../driver.js";
import {
  type RbdParent,
  type RbdSnapshot,
  rbdCloneArgv,
  rbdFlattenArgv,
  rbdResizeArgv,
  rbdSnapCreateArgv,
} from "../rbd.js";
import type { Owned, RbdBackend, RbdImages } from "./images.js";
import { cloneSnapshot, finalImage, RBD_META, type RbdPool, tempImage } from "./layout.js";
import type { RbdVolumes } from "./volumes.js";

// Clones hang from a protected snapshot of the source: one of its snapshots, or a hidden one made for the clone.

export function createRbdClones(pool: RbdPool, images: RbdImages, volumes: RbdVolumes) {
  const { conn, spec, rbd, where, long } = pool;

  const tooSmall = (sourceBytes: bigint) =>
    invalidArgument(
      `a clone cannot be smaller than its source (${formatSize(sourceBytes)}); ask for at least that size`,
      { field: "sizeBytes" },
    );

  async function flattenImage(id: string, image: string, parent: RbdParent): Promise<void> {
    await rbd(rbdFlattenArgv(conn, spec(image)), long);
    await images.dropCloneSnapshot(id, parent);
  }

  const clone: RbdBackend["clone"] = async (req, owned, withSource) => {
    const id = req.volumeId;
    const sourceId = req.sourceVolumeId;
    if (owned) {
      // Done before. A flatten asked for and not finished (a crash) is finished now.
      if (req.flatten) {
        const info = await images.imageInfo(finalImage(id));
        if (info?.parent) await flattenImage(id, finalImage(id), info.parent);
      }
      return { artifact: await images.inspect(id, owned.meta), adopted: true };
    }
    const tmp = tempImage(id);
    await images.removeImage(tmp);

    let hidden = false;
    let snapName = "";
    /** The clone's size as made: its snapshot's. */
    let cloneBytes = 0n;
    let sourceMeta: Record<string, string> = {};
    // The source is held while its snapshot is prepared and cloned, so it cannot be deleted in between.
    await withSource(async (source) => {
      const sourceImage = finalImage(sourceId);
      const snaps = await images.snapshotsOf(sourceImage);
      let snap: RbdSnapshot | undefined;
      if (req.sourceSnapshotId !== undefined) {
        snapName = req.sourceSnapshotId;
        snap = snaps.find((s) => s.name === snapName);
        if (!snap || !images.snapshotRecord(source.meta, snapName)) {
          throw notFound(`snapshot ${snapName} of volume ${sourceId} does not exist in ${where}`, {
            volumeId: sourceId,
            snapshotId: snapName,
          });
        }
      } else {
        // RBD clones hang from a snapshot: the volume's current data gets a hidden one for this clone.
        hidden = true;
        snapName = cloneSnapshot(id);
        snap = snaps.find((s) => s.name === snapName);
        if (!snap) {
          const info = await images.imageInfo(sourceImage);
          if (!info) throw images.volumeMissing(sourceId);
          if (req.sizeBytes !== undefined && req.sizeBytes < info.sizeBytes) throw tooSmall(info.sizeBytes);
          await rbd(rbdSnapCreateArgv(conn, spec(sourceImage, snapName)));
          snap = (await images.snapshotsOf(sourceImage)).find((s) => s.name === snapName);
          if (!snap) throw new StowageError("internal", `rbd snap create ${snapName} left no snapshot`);
        }
      }
      if (req.sizeBytes !== undefined && req.sizeBytes < snap.sizeBytes) {
        // A hidden snapshot left by an earlier attempt, when the source was larger than now asked for.
        if (hidden) await images.dropSnapshotIfUnused(sourceImage, snapName);
        throw tooSmall(snap.sizeBytes);
      }
      cloneBytes = snap.sizeBytes;
      sourceMeta = source.meta;
      if (!snap.protected) await images.protect(sourceImage, snapName);
      await rbd(rbdCloneArgv(conn, spec(sourceImage, snapName), spec(tmp)));
    });

    const sourceParent: RbdParent = {
      pool: pool.cephPool,
      namespace: pool.namespace ?? "",
      image: finalImage(sourceId),
      snapshot: snapName,
    };
    const artifact = await volumes.publish(
      id,
      req.operationId,
      async () => {
        // A clone inherits its parent's metadata: the source's snapshot records are dropped.
        for (const key of Object.keys(sourceMeta)) {
          if (key.startsWith(RBD_META.snapshotPrefix)) await images.removeMeta(tmp, key);
        }
        if (req.sizeBytes !== undefined && req.sizeBytes > cloneBytes) {
          await rbd(rbdResizeArgv(conn, spec(tmp), req.sizeBytes, { allowShrink: false }));
        }
        if (req.flatten) await rbd(rbdFlattenArgv(conn, spec(tmp)), long);
      },
      async () => {
        if (hidden) await images.dropCloneSnapshot(id, sourceParent);
      },
    );
    if (req.flatten && hidden) await images.dropCloneSnapshot(id, sourceParent);
    return { artifact, adopted: false };
  };

  async function flatten(owned: Owned): Promise<VolumeArtifact> {
    const image = finalImage(owned.id);
    const info = await images.imageInfo(image);
    if (!info) throw images.volumeMissing(owned.id);
    if (info.parent) await flattenImage(owned.id, image, info.parent);
    // Already flat: a hidden snapshot left by a flatten that crashed before its cleanup goes now.
    else await images.dropCloneSnapshot(owned.id);
    return images.inspect(owned.id, owned.meta);
  }

  return { clone, flatten };
}
