import { validateName } from "@stowage/core";
import {
  type RbdConnection,
  type RbdImageSpec,
  rbdSpec,
  validateCephName,
  validateRbdConnection,
} from "../rbd.js";
import type { RunOptions, ToolResult, ToolRunner } from "../runner.js";

/**
 * `rbd` pools: one RBD image per volume in a Ceph pool (optionally a RADOS namespace of it), driven through the
 * `rbd` CLI (`--format json`) like Proxmox's RBDPlugin, never through a shell.
 *
 * Names come from ids only: `stowage-<volumeId>` for a volume, `stowage-tmp-<volumeId>` while it is being made,
 * snapshots are named by their snapshot id, and `stowage-clone-<newVolumeId>` is the hidden snapshot a clone of
 * a volume's current data hangs from. Ownership lives in the image metadata (`stowage.volume-id`,
 * `stowage.operation-id`, and `stowage.snapshot.<snapshotId>` per snapshot), which `rbd rename` keeps.
 *
 * Crash safety: an image is made (or cloned) under its temp name, marked, then renamed into place. An image
 * under a final name is therefore always complete and marked; a temp image is debris of a crashed attempt and is
 * removed by the retry. A snapshot's record is written before the snapshot and removed after it.
 *
 * Wipe: `rbd rm` deletes every RADOS object of the image (and `snap purge` its snapshots), so the space is
 * released and a new image never reads old data: that is "discard". "zero" is refused: writing zeros would
 * first allocate every thin object, and BlueStore writes overwrites to fresh extents anyway, so the zeros would
 * never reach the old data on disk.
 *
 * Capacity: `ceph df` gives the pool's stored bytes and MAX AVAIL, but only with a ceph-mgr running; without
 * one every number is 0, and the driver estimates instead: the OSDs' device sizes × full_ratio ÷ replicas
 * (capped by the pool quota) for the total, `rbd du` of the pool (namespace) for the used bytes. Either way
 * the client needs read access to the mons (`mon 'allow r'`). Provisioned bytes count Stowage's volumes only.
 *
 * Cost: a delete of a volume that is already gone, and a flatten of a volume that is already flat, list the
 * pool (`rbd ls -l`) to find a hidden clone snapshot an interrupted attempt may have left on the source.
 */

export interface RbdDriverOptions {
  /** Stowage's name for the pool. */
  poolName: string;
  /** The Ceph pool holding the images. */
  cephPool: string;
  /** A RADOS namespace inside the pool; it must exist (`rbd namespace create`). */
  namespace?: string;
  /** Path of ceph.conf (default: librados' search, CEPH_CONF then /etc/ceph/ceph.conf). */
  cephConf?: string;
  /** Client id without `client.` (default: librados' default, admin). */
  cephUser?: string;
  /** Keyring with the client's key (default: the one ceph.conf names). */
  keyring?: string;
  runner: ToolRunner;
  /** Timeout for commands that touch every object (rm, flatten, rollback, shrink). Default 30 minutes. */
  longTimeoutMs?: number;
  /** Clock for snapshot `createdAt` (tests). */
  now?: () => Date;
}

export const RBD_META = {
  volumeId: "stowage.volume-id",
  operationId: "stowage.operation-id",
  /** + snapshot id; the value is a JSON `{ operationId, createdAt }`. */
  snapshotPrefix: "stowage.snapshot.",
} as const;

export const OWNED_IMAGE = /^stowage-(vol-[0-9a-f]{32})$/;
export const TEMP_IMAGE = /^stowage-tmp-(vol-[0-9a-f]{32})$/;
const DEFAULT_LONG_TIMEOUT_MS = 30 * 60_000;

export const finalImage = (id: string) => `stowage-${id}`;
export const tempImage = (id: string) => `stowage-tmp-${id}`;
export const cloneSnapshot = (id: string) => `stowage-clone-${id}`;

/** One rbd pool: where it is, and how its commands run. */
export interface RbdPool {
  poolName: string;
  cephPool: string;
  namespace: string | undefined;
  conn: RbdConnection;
  runner: ToolRunner;
  /** For commands that touch every object. */
  long: RunOptions;
  now: () => Date;
  where: string;
  spec(image: string, snapshot?: string): RbdImageSpec;
  /** Where QEMU opens the image. */
  qemuPath(image: string): string;
  rbd(argv: string[], runOpts?: RunOptions): Promise<ToolResult>;
  /** The image is in this pool (and namespace). */
  isHere(at: { pool: string; namespace: string }): boolean;
}

export function createRbdPool(opts: RbdDriverOptions): RbdPool {
  const poolName = validateName("pool name", opts.poolName);
  const cephPool = validateCephName("ceph pool", opts.cephPool);
  const namespace = opts.namespace ? validateCephName("rbd namespace", opts.namespace) : undefined;
  const conn = validateRbdConnection({
    ...(opts.cephConf !== undefined ? { cephConf: opts.cephConf } : {}),
    ...(opts.cephUser !== undefined ? { cephUser: opts.cephUser } : {}),
    ...(opts.keyring !== undefined ? { keyring: opts.keyring } : {}),
  });
  const spec = (image: string, snapshot?: string): RbdImageSpec => ({
    pool: cephPool,
    ...(namespace ? { namespace } : {}),
    image,
    ...(snapshot !== undefined ? { snapshot } : {}),
  });
  return {
    poolName,
    cephPool,
    namespace,
    conn,
    runner: opts.runner,
    long: { timeoutMs: opts.longTimeoutMs ?? DEFAULT_LONG_TIMEOUT_MS },
    now: opts.now ?? (() => new Date()),
    where: `rbd pool ${poolName} (ceph pool ${cephPool}${namespace ? `, namespace ${namespace}` : ""})`,
    spec,
    qemuPath: (image) => `rbd:${rbdSpec(spec(image))}`,
    rbd: (argv, runOpts) => opts.runner.run("rbd", argv, runOpts),
    isHere: (at) => at.pool === cephPool && at.namespace === (namespace ?? ""),
  };
}
