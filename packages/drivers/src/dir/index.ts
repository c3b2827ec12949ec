import type { PoolDriver } from "../driver.js";
import { guardDriver } from "../guard.js";
import { createKeyedLock } from "../keyed-lock.js";
import { createDirBases } from "./bases.js";
import { createDirClones } from "./clones.js";
import { createDirImages } from "./images.js";
import { createDirInventory } from "./inventory.js";
import { createDirPool, type DirDriverOptions, type DirPool } from "./layout.js";
import { createDirRecords } from "./records.js";
import { createDirSnapshots } from "./snapshots.js";
import { createDirVolumes } from "./volumes.js";

export { DEFAULT_MAX_CHAIN_DEPTH, DIR_META, type DirDriverOptions } from "./layout.js";

/** A `dir` pool (see layout.ts for how it keeps its files), behind the guard every driver goes through. */
export function createDirDriver(opts: DirDriverOptions): PoolDriver {
  return createFilePoolDriver("dir", createDirPool(opts));
}

/** The driver of a file pool (dir, or netfs: the same layout and records on another PoolFs). */
export function createFilePoolDriver(kind: "dir" | "netfs", pool: DirPool): PoolDriver {
  const records = createDirRecords(pool);
  const images = createDirImages(pool);
  const bases = createDirBases(pool, records, images);
  const inventory = createDirInventory(pool, records, images);
  const volumes = createDirVolumes(pool, records, images, bases, inventory);
  const snapshots = createDirSnapshots(pool, records, images, bases, inventory);
  const clones = createDirClones(pool, images, bases, volumes);
  return guardDriver({
    kind,
    poolName: pool.poolName,
    where: pool.where,
    lock: createKeyedLock(),
    findVolume: (id) => records.findOwned(id),
    async inspectNames(id) {
      await pool.assertRootUsable();
      return records.readSidecar(id);
    },
    artifact: images.inspect,
    ...volumes,
    ...snapshots,
    ...clones,
  });
}
