import { isAbsolute, join, resolve } from "node:path";
import {
  failedPrecondition,
  invalidArgument,
  type Qcow2Options,
  type VolumeFormat,
  validateName,
} from "@stowage/core";
import { assertWipeRate } from "../guard.js";
import type { ToolRunner } from "../runner.js";
import { localPoolFs, type PoolFs } from "./fs.js";

export { allocatedOf, isNoEnt, type PathKind } from "./fs.js";

/**
 * `dir` pools: qcow2/raw files in one directory, `<root>/<volumeId>.<qcow2|raw>`, each owned through a sidecar
 * record `<root>/.stowage/<volumeId>.json`. The sidecar is written before the image (it is the intent) and
 * removed after it, so at every instant a file under a final name either has its record or is not ours.
 *
 * Snapshots, clones and flatten follow Proxmox's dir storage:
 * - A snapshot is a qcow2 internal snapshot whose tag is the snapshot id, recorded in the volume's sidecar
 *   (the record is written first, as the intent). Raw files have nowhere to keep one: refused.
 * - A clone of a snapshot is a qcow2 overlay on a read-only base image, `.stowage/base-<snapshotId>.qcow2`,
 *   exported from the snapshot once (`qemu-img convert -l`) and shared by every clone of that snapshot. A live
 *   image cannot be a backing file (the VM keeps writing it), so a clone of a volume's current data, a clone
 *   into raw, and a clone asked for with `flatten` are full copies (`qemu-img convert`).
 * - A base exported from a snapshot of an overlay only holds what differs from the overlay's own base
 *   (`convert -B`), so clones of clones share their data; `maxChainDepth` bounds the chains this builds.
 * - A snapshot whose base image still has clones (or bases of their snapshots) on it cannot be deleted, nor
 *   can its volume: failed_precondition names them (as RBD refuses to remove a snapshot with children).
 *   The base lives as long as its snapshot, so later clones of the same snapshot reuse it.
 */

export interface DirDriverOptions {
  poolName: string;
  /** Absolute path of the pool directory. It must exist; the driver never creates it. */
  root: string;
  runner: ToolRunner;
  /** Applied under each request's own qcow2 options (the request wins). Not applied to raw volumes. */
  qcow2Defaults?: Qcow2Options;
  /**
   * The longest backing chain a linked clone may get, counted in backing files below it (a clone of a plain
   * volume's snapshot: 1; a clone of a snapshot of that clone: 2). A clone that would go deeper is made as a
   * full copy instead: every link costs a lookup on each cluster read that misses. 0: every clone is a full
   * copy. Default 8.
   */
  maxChainDepth?: number;
  /**
   * Default throttle for `wipe: "zero"`, in bytes per second, so wiping a large volume does not starve the
   * VMs on the same disks; a delete's own `wipeBytesPerSecond` wins. 0 or absent: unthrottled.
   */
  wipeBytesPerSecond?: number;
  /**
   * Timeout for `qemu-img create`. Default: the runner's default, or 30 minutes with falloc/full preallocation,
   * which writes the whole image.
   */
  createTimeoutMs?: number;
  /** Timeout for commands that copy a volume's data (clone by copy, base export, flatten). Default 6 hours. */
  copyTimeoutMs?: number;
  /** Clock for `createdAt` (tests). */
  now?: () => Date;
}

/** Directory for ownership records and temp images, inside the pool so renames never cross filesystems. */
export const DIR_META = ".stowage";
export const DEFAULT_MAX_CHAIN_DEPTH = 8;
const DEFAULT_COPY_TIMEOUT_MS = 6 * 60 * 60_000;
export const FORMATS: readonly VolumeFormat[] = ["qcow2", "raw"];

/**
 * One file-based pool (dir, or netfs through netfs/index.ts): its settings, where each artefact lives, and
 * the file operations that reach it.
 */
export interface DirPool {
  /** "dir" or "netfs": the pool kind, as messages name it. */
  label: string;
  poolName: string;
  where: string;
  /** The pool directory: an absolute path (dir) or the export's `nfs://` URL (netfs). */
  root: string;
  metaDir: string;
  fs: PoolFs;
  /** A file in `.stowage/`. */
  metaPath(name: string): string;
  /** A backing file name as qemu-img reports it, made absolute the way qemu resolves it (a layout path). */
  resolveBacking(name: string): string;
  /** What a volume's artifact and messages give as a path: the layout path (dir), or what qemu opens (netfs). */
  artifactPath(path: string): string;
  runner: ToolRunner;
  now: () => Date;
  options: DirDriverOptions;
  maxChainDepth: number;
  copyTimeoutMs: number;
  volumePath(id: string, format: VolumeFormat): string;
  tempPath(id: string, format: VolumeFormat): string;
  /** A deleted image is first renamed here, so it leaves its final name at once, and wiped afterwards. */
  trashPath(id: string, format: VolumeFormat): string;
  sidecarPath(id: string): string;
  basePath(snapshotId: string): string;
  baseTempPath(snapshotId: string): string;
  baseRecordPath(snapshotId: string): string;
  /** qcow2 options for images the driver makes by copying: the pool's, less preallocation (a copy is dense). */
  copyOptions(format: VolumeFormat): Qcow2Options;
  assertRootUsable(): Promise<void>;
}

export function createDirPool(opts: DirDriverOptions): DirPool {
  const poolName = validateName("pool name", opts.poolName);
  if (!isAbsolute(opts.root)) {
    throw invalidArgument(`dir pool ${poolName}: root ${JSON.stringify(opts.root)} must be an absolute path`);
  }
  const root = resolve(opts.root);
  return createFilePool(opts, {
    label: "dir",
    root,
    fs: localPoolFs,
    join,
    resolveBacking: (name) => resolve(root, name),
  });
}

/** Where a file pool keeps its files and how it reaches them: the part that differs between dir and netfs. */
export interface FilePoolPlace {
  label: string;
  root: string;
  fs: PoolFs;
  join(dir: string, name: string): string;
  resolveBacking(name: string): string;
  /** Default: the layout path itself. */
  artifactPath?(path: string): string;
}

/** The layout of a file pool (see the top of this file) on `place`. */
export function createFilePool(opts: DirDriverOptions, place: FilePoolPlace): DirPool {
  const { label, root, fs } = place;
  const shown = place.artifactPath?.(root) ?? root;
  const poolName = validateName("pool name", opts.poolName);
  const maxChainDepth = opts.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  if (!Number.isInteger(maxChainDepth) || maxChainDepth < 0) {
    throw invalidArgument(
      `${label} pool ${poolName}: maxChainDepth ${maxChainDepth} must be a whole number ≥ 0`,
    );
  }
  if (opts.wipeBytesPerSecond !== undefined) assertWipeRate(opts.wipeBytesPerSecond);
  const join = place.join;
  const metaDir = join(root, DIR_META);
  return {
    label,
    poolName,
    where: `pool ${poolName}`,
    root,
    metaDir,
    fs,
    metaPath: (name) => join(metaDir, name),
    resolveBacking: place.resolveBacking,
    artifactPath: place.artifactPath ?? ((path) => path),
    runner: opts.runner,
    now: opts.now ?? (() => new Date()),
    options: opts,
    maxChainDepth,
    copyTimeoutMs: opts.copyTimeoutMs ?? DEFAULT_COPY_TIMEOUT_MS,
    volumePath: (id, format) => join(root, `${id}.${format}`),
    tempPath: (id, format) => join(metaDir, `tmp-${id}.${format}`),
    trashPath: (id, format) => join(metaDir, `trash-${id}.${format}`),
    sidecarPath: (id) => join(metaDir, `${id}.json`),
    basePath: (snapshotId) => join(metaDir, `base-${snapshotId}.qcow2`),
    baseTempPath: (snapshotId) => join(metaDir, `tmp-base-${snapshotId}.qcow2`),
    baseRecordPath: (snapshotId) => join(metaDir, `base-${snapshotId}.json`),
    copyOptions: (format) => {
      if (format !== "qcow2") return {};
      const { preallocation: _, ...rest } = opts.qcow2Defaults ?? {};
      return rest;
    },
    async assertRootUsable() {
      let isDir: boolean;
      try {
        isDir = await fs.isDirectory(root);
      } catch (e) {
        if (fs.isMissing(e))
          throw failedPrecondition(`${label} pool ${poolName}: root ${shown} does not exist`);
        throw e;
      }
      if (!isDir) throw failedPrecondition(`${label} pool ${poolName}: root ${shown} is not a directory`);
    },
  };
}
