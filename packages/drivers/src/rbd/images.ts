import { alreadyExists, failedPrecondition, notFound, type StowageError } from "@stowage/core";
import { z } from "zod";
import type { VolumeArtifact } from "../driver.js";
import type { DriverBackend } from "../guard.js";
import type { KeyedLock } from "../keyed-lock.js";
import {
  isRbdNotFound,
  parseRbdChildren,
  parseRbdDu,
  parseRbdImageMeta,
  parseRbdInfo,
  parseRbdLsLong,
  parseRbdSnapLs,
  RBD_ERRNO,
  type RbdChild,
  type RbdImageInfo,
  type RbdParent,
  type RbdSnapshot,
  rbdChildrenArgv,
  rbdDuArgv,
  rbdErrno,
  rbdImageMetaListArgv,
  rbdImageMetaRemoveArgv,
  rbdImageMetaSetArgv,
  rbdInfoArgv,
  rbdLsLongArgv,
  rbdRemoveArgv,
  rbdSnapListArgv,
  rbdSnapProtectArgv,
  rbdSnapPurgeArgv,
  rbdSnapRemoveArgv,
  rbdSnapUnprotectArgv,
  rbdSpec,
} from "../rbd.js";
import { cloneSnapshot, finalImage, OWNED_IMAGE, RBD_META, type RbdPool, TEMP_IMAGE } from "./layout.js";

const snapshotRecordSchema = z.object({ operationId: z.string(), createdAt: z.string() });
export type SnapshotRecord = z.output<typeof snapshotRecordSchema>;

/** An image under a volume's final name, with its metadata. */
export interface Owned {
  id: string;
  meta: Record<string, string>;
}

/** The images of an rbd pool: their metadata (ownership), snapshots, and removal. */
export function createRbdImages(pool: RbdPool, lock: KeyedLock) {
  const { conn, spec, rbd, long, where, poolName } = pool;

  /** The result of `fn`, or undefined when the image (or snapshot) it reads does not exist. */
  async function unlessMissing<T>(fn: () => Promise<T>): Promise<T | undefined> {
    try {
      return await fn();
    } catch (e) {
      if (isRbdNotFound(e)) return undefined;
      throw e;
    }
  }

  async function readMeta(image: string): Promise<Record<string, string> | undefined> {
    const argv = rbdImageMetaListArgv(conn, spec(image));
    return unlessMissing(async () => parseRbdImageMeta((await rbd(argv)).stdout, argv));
  }

  async function imageInfo(image: string): Promise<RbdImageInfo | undefined> {
    const argv = rbdInfoArgv(conn, spec(image));
    return unlessMissing(async () => parseRbdInfo((await rbd(argv)).stdout, argv));
  }

  async function snapshotsOf(image: string): Promise<RbdSnapshot[]> {
    const argv = rbdSnapListArgv(conn, spec(image));
    return parseRbdSnapLs((await rbd(argv)).stdout, argv);
  }

  async function childrenOf(image: string, snapshot: string): Promise<RbdChild[]> {
    const argv = rbdChildrenArgv(conn, spec(image, snapshot));
    return (await unlessMissing(async () => parseRbdChildren((await rbd(argv)).stdout, argv))) ?? [];
  }

  async function setMeta(image: string, key: string, value: string): Promise<void> {
    await rbd(rbdImageMetaSetArgv(conn, spec(image), key, value));
  }

  async function removeMeta(image: string, key: string): Promise<void> {
    await unlessMissing(() => rbd(rbdImageMetaRemoveArgv(conn, spec(image), key)));
  }

  /** Removes an image and its snapshots; false when it was not there. Never called on a foreign image. */
  async function removeImage(image: string, purged = false): Promise<boolean> {
    try {
      await rbd(rbdRemoveArgv(conn, spec(image)), long);
      return true;
    } catch (e) {
      if (isRbdNotFound(e)) return false;
      if (rbdErrno(e) === RBD_ERRNO.ENOTEMPTY && !purged) {
        // `rbd rm` refuses an image with snapshots. Callers have checked that no clone depends on them.
        for (const s of await snapshotsOf(image)) {
          if (s.protected) await unprotect(image, s.name);
        }
        await rbd(rbdSnapPurgeArgv(conn, spec(image)), long);
        return removeImage(image, true);
      }
      if (rbdErrno(e) === RBD_ERRNO.EBUSY) {
        throw failedPrecondition(
          `image ${rbdSpec(spec(image))} is in use (it has watchers: a running VM or another client); detach it first`,
          { image },
        );
      }
      throw e;
    }
  }

  async function unprotect(image: string, snapshot: string): Promise<void> {
    try {
      await rbd(rbdSnapUnprotectArgv(conn, spec(image, snapshot)));
    } catch (e) {
      // EINVAL: it was not protected (a retry after the unprotect went through).
      if (isRbdNotFound(e) || rbdErrno(e) === RBD_ERRNO.EINVAL) return;
      throw e;
    }
  }

  async function protect(image: string, snapshot: string): Promise<void> {
    try {
      await rbd(rbdSnapProtectArgv(conn, spec(image, snapshot)));
    } catch (e) {
      // EBUSY: already protected.
      if (rbdErrno(e) === RBD_ERRNO.EBUSY) return;
      throw e;
    }
  }

  /** The volume's image if it exists and carries our marker for this id; foreign images throw `whenForeign`. */
  async function findOwned(
    id: string,
    whenForeign?: (image: string) => StowageError,
  ): Promise<Owned | undefined> {
    const image = finalImage(id);
    const meta = await readMeta(image);
    if (meta === undefined) return undefined;
    if (meta[RBD_META.volumeId] !== id) {
      if (whenForeign) throw whenForeign(image);
      return undefined;
    }
    return { id, meta };
  }

  function artifact(
    id: string,
    sizeBytes: bigint,
    allocatedBytes: bigint,
    meta: Record<string, string>,
  ): VolumeArtifact {
    return {
      volumeId: id,
      poolName,
      sizeBytes,
      format: "raw",
      allocatedBytes,
      path: pool.qemuPath(finalImage(id)),
      operationId: meta[RBD_META.operationId] ?? "",
    };
  }

  /** One `rbd du` gives both sizes: the head row's provisioned size is the virtual size. */
  async function inspect(id: string, meta: Record<string, string>): Promise<VolumeArtifact> {
    const image = finalImage(id);
    const argv = rbdDuArgv(conn, spec(image));
    const du = await unlessMissing(async () => parseRbdDu((await rbd(argv)).stdout, argv));
    const head = du?.rows.find((r) => r.image === image && r.snapshot === undefined);
    if (!du || !head) throw notFound(`volume ${id} disappeared from ${where}`, { volumeId: id, poolName });
    return artifact(id, head.provisionedBytes, du.usedByImage.get(image) ?? 0n, meta);
  }

  const notOurs = (image: string) =>
    alreadyExists(
      `image ${rbdSpec(spec(image))} already exists in ${where} without Stowage ownership metadata (${RBD_META.volumeId}); refusing to take it over (rename it away, or import it)`,
      { image, poolName },
    );

  const volumeMissing = (id: string) =>
    notFound(`volume ${id} does not exist in ${where}`, { volumeId: id, poolName });

  /** Volume ids of the clones, or the raw image names of children that are not ours. */
  const describeChildren = (children: RbdChild[]) =>
    children
      .map((c) => {
        const m = OWNED_IMAGE.exec(c.image) ?? TEMP_IMAGE.exec(c.image);
        return m && pool.isHere(c) ? m[1]! : rbdSpec(c);
      })
      .sort()
      .join(", ");

  /** Removes a snapshot unless a clone still hangs from it. The caller holds the image's volume lock. */
  async function dropSnapshotIfUnused(image: string, snapName: string): Promise<void> {
    if ((await childrenOf(image, snapName)).length > 0) return;
    await unprotect(image, snapName);
    await unlessMissing(() => rbd(rbdSnapRemoveArgv(conn, spec(image, snapName)), long));
  }

  /**
   * Removes the hidden snapshot a clone of `cloneId` hung from, once nothing depends on it. `sourceImage` comes
   * from the clone's parent; without it (the clone is gone, or was flattened by an attempt that then crashed)
   * the pool listing says which image holds `stowage-clone-<cloneId>`.
   */
  async function dropCloneSnapshot(cloneId: string, parent?: RbdParent): Promise<void> {
    const snapName = cloneSnapshot(cloneId);
    let images: string[];
    if (parent) {
      if (!pool.isHere(parent) || parent.snapshot !== snapName) return;
      images = [parent.image];
    } else {
      const argv = rbdLsLongArgv(conn, pool.cephPool, pool.namespace);
      images = parseRbdLsLong((await rbd(argv)).stdout, argv)
        .snapshots.filter((s) => s.snapshot === snapName)
        .map((s) => s.image);
    }
    for (const image of images) {
      const sourceId = OWNED_IMAGE.exec(image)?.[1];
      const drop = () => dropSnapshotIfUnused(image, snapName);
      await (sourceId ? lock.run(sourceId, drop) : drop());
    }
  }

  function snapshotRecord(meta: Record<string, string>, snapshotId: string): SnapshotRecord | undefined {
    const raw = meta[`${RBD_META.snapshotPrefix}${snapshotId}`];
    if (raw === undefined) return undefined;
    try {
      const parsed = snapshotRecordSchema.safeParse(JSON.parse(raw));
      return parsed.success ? parsed.data : undefined;
    } catch {
      return undefined;
    }
  }

  return {
    unlessMissing,
    readMeta,
    imageInfo,
    snapshotsOf,
    childrenOf,
    setMeta,
    removeMeta,
    removeImage,
    protect,
    unprotect,
    findOwned,
    artifact,
    inspect,
    notOurs,
    volumeMissing,
    describeChildren,
    dropSnapshotIfUnused,
    dropCloneSnapshot,
    snapshotRecord,
  };
}

export type RbdImages = ReturnType<typeof createRbdImages>;

/** Before a create or delete, what lies under a volume's name is its image, if it is ours. */
export type RbdBackend = DriverBackend<Owned, Owned | undefined>;
