import { mapLimit } from "../async.js";
import { byVolumeId, type VolumeArtifact } from "../driver.js";
import type { DirImages } from "./images.js";
import type { DirPool } from "./layout.js";
import { currentSize, type DirRecords, type OwnedVolume, type Sidecar } from "./records.js";

/**
 * What the pool holds, kept in memory so that capacity() costs no `qemu-img` run and no directory walk: each
 * owned volume's virtual size, from its sidecar record. Loaded once, lazily, from the directory (readdir and
 * the records); kept up to date by every create, clone, delete, resize and revert through the driver, which
 * calls `put`/`remove` under the volume's lock; and rebuilt from disk by every full `list()` (readdir, the
 * records, one lstat per image: no `qemu-img` run either), so a volume added or removed behind the driver's
 * back is found there.
 *
 * Sizes come from the records, never from the images: a volume resized behind the driver's back (`qemu-img
 * resize` by hand) keeps its recorded size in list() and capacity() until the driver resizes or reverts it
 * again, and a volume deleted behind its back still counts in capacity() until the next list(). `info()` asks
 * qemu-img and always tells the truth.
 */
export interface DirInventory {
  /** Every owned volume, from the directory as it is now (readdir, the records, one lstat per image). */
  scan(): Promise<{ volumes: VolumeArtifact[]; foreign: string[] }>;
  /** Sum of the owned volumes' virtual sizes: loads the index on first use, then answers from memory. */
  provisionedBytes(): Promise<bigint>;
  /** The volume was made, adopted, resized or reverted (the caller holds its lock). */
  put(rec: Sidecar): void;
  /** The volume is gone (the caller holds its lock). */
  remove(volumeId: string): void;
}

const STAT_CONCURRENCY = 16;

export function createDirInventory(pool: DirPool, records: DirRecords, images: DirImages): DirInventory {
  /** Volume id -> current virtual size, from its record; undefined until first loaded. */
  let sizes: Map<string, bigint> | undefined;
  let provisioned = 0n;
  let loading: Promise<void> | undefined;
  /** One map per scan in flight: what the driver changed while it read the directory (undefined: removed). */
  const changedDuringScans = new Set<Map<string, bigint | undefined>>();

  function change(id: string, size: bigint | undefined): void {
    for (const changed of changedDuringScans) changed.set(id, size);
    if (!sizes) return;
    provisioned -= sizes.get(id) ?? 0n;
    if (size === undefined) sizes.delete(id);
    else {
      sizes.set(id, size);
      provisioned += size;
    }
  }

  /**
   * Replaces the index with what a scan found. A volume changed through the driver while the scan ran keeps
   * what the change said (the scan may have read the directory before or after it): only the driver's own
   * changes race a scan, and those it knows exactly.
   */
  function install(owned: OwnedVolume[], changed: Map<string, bigint | undefined>): void {
    const next = new Map<string, bigint>();
    for (const { id, rec } of owned) next.set(id, currentSize(rec));
    for (const [id, size] of changed) {
      if (size === undefined) next.delete(id);
      else next.set(id, size);
    }
    let sum = 0n;
    for (const size of next.values()) sum += size;
    sizes = next;
    provisioned = sum;
  }

  async function readOwned(): Promise<{ owned: OwnedVolume[]; foreign: string[] }> {
    const changed = new Map<string, bigint | undefined>();
    changedDuringScans.add(changed);
    try {
      await pool.assertRootUsable();
      const found = await records.scanOwned();
      install(found.owned, changed);
      return found;
    } finally {
      changedDuringScans.delete(changed);
    }
  }

  async function load(): Promise<void> {
    if (sizes) return;
    loading ??= readOwned().then(
      () => {
        loading = undefined;
      },
      (e) => {
        loading = undefined;
        throw e;
      },
    );
    await loading;
  }

  async function scan(): Promise<{ volumes: VolumeArtifact[]; foreign: string[] }> {
    const { owned, foreign } = await readOwned();
    const volumes = await mapLimit(owned, STAT_CONCURRENCY, async ({ id, rec }) => {
      const path = pool.volumePath(id, rec.format);
      let allocatedBytes: bigint;
      try {
        allocatedBytes = await pool.fs.allocated(path);
      } catch (e) {
        // Deleted between readdir and stat: it is simply gone.
        if (pool.fs.isMissing(e)) return undefined;
        throw e;
      }
      return images.fromRecord(id, rec, allocatedBytes);
    });
    return {
      volumes: volumes.filter((v): v is VolumeArtifact => v !== undefined).sort(byVolumeId),
      foreign: foreign.sort(),
    };
  }

  return {
    scan,
    async provisionedBytes() {
      await load();
      return provisioned;
    },
    put: (rec) => change(rec.volumeId, currentSize(rec)),
    remove: (volumeId) => change(volumeId, undefined),
  };
}
