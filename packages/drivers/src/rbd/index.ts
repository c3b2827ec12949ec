import type { PoolDriver } from "../driver.js";
import { guardDriver } from "../guard.js";
import { createKeyedLock } from "../keyed-lock.js";
import { createRbdClones } from "./clones.js";
import { createRbdImages } from "./images.js";
import { createRbdPool, type RbdDriverOptions } from "./layout.js";
import { createRbdSnapshots } from "./snapshots.js";
import { createRbdVolumes } from "./volumes.js";

export {
  type CephAdmin,
  cephMonitorAddresses,
  cephxKeyDigest,
  grantRbdAccess,
  listStowageCephxClients,
  type RbdCaps,
  type RbdGrant,
  type RbdGrantSpec,
  type RbdImageRef,
  rbdImageCaps,
  rbdImageChain,
  revokeRbdAccess,
  STOWAGE_CEPHX_PREFIX,
  type StowageCephxClient,
} from "./access.js";
export { finalImage as rbdImageForVolume, RBD_META, type RbdDriverOptions } from "./layout.js";

/** An `rbd` pool (see layout.ts), behind the driver guard. */
export function createRbdDriver(opts: RbdDriverOptions): PoolDriver {
  const pool = createRbdPool(opts);
  const lock = createKeyedLock();
  const images = createRbdImages(pool, lock);
  const volumes = createRbdVolumes(pool, images);
  const snapshots = createRbdSnapshots(pool, images);
  const clones = createRbdClones(pool, images, volumes);
  return guardDriver({
    kind: "rbd",
    poolName: pool.poolName,
    where: pool.where,
    lock,
    findVolume: (id) => images.findOwned(id),
    artifact: (owned) => images.inspect(owned.id, owned.meta),
    ...volumes,
    explainWipe: () =>
      `${pool.where} cannot wipe by writing zeros: RBD images are thin and BlueStore writes overwrites to new extents, so zeros would never reach the old data; use wipe "discard" (the image's objects are deleted)`,
    ...snapshots,
    ...clones,
  });
}
