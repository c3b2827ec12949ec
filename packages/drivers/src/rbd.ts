import { invalidArgument } from "@stowage/core";
import { z } from "zod";
import { parseJsonOutput, ToolError } from "./runner.js";

/**
 * The `rbd` and `ceph` command lines the rbd driver runs, and zod parsers for their `--format json` output
 * (Ceph 16.2 "pacific"; golden files in testdata/rbd-*.json were captured from a real cluster).
 *
 * Facts the builders encode:
 * - Every command names the cluster explicitly (`--conf`, `--id`, `--keyring`), so nothing depends on the
 *   agent's environment or /etc/ceph.
 * - `--no-progress` is accepted only by the commands that draw progress bars (create, resize, rm, flatten,
 *   sparsify, snap create/rollback/rm/purge); the others reject it as an unrecognised option.
 * - `--size` takes a unit; `B` makes it exact bytes.
 * - `rbd` exits with the errno of the failure (2 ENOENT, 16 EBUSY, 17 EEXIST, 22 EINVAL, 39 ENOTEMPTY) and 1
 *   for usage errors, so the exit code says what went wrong without parsing messages.
 * - `rbd image-meta list --format json` prints nothing at all (not `{}`) for an image without metadata.
 */

/** How to reach the cluster. Absent fields fall back to librados defaults (CEPH_CONF, /etc/ceph, client.admin). */
export interface RbdConnection {
  /** Path of ceph.conf. */
  cephConf?: string;
  /** Client id without `client.` (e.g. `admin`, `stowage`). */
  cephUser?: string;
  /** Path of the keyring holding that client's key. */
  keyring?: string;
}

/** Where an image (or a snapshot of it) lives. */
export interface RbdImageSpec {
  pool: string;
  /** RADOS namespace inside the pool; absent or empty: the default namespace. */
  namespace?: string;
  image: string;
  snapshot?: string;
}

export const RBD_ERRNO = { ENOENT: 2, EBUSY: 16, EEXIST: 17, EINVAL: 22, ENOTEMPTY: 39 } as const;

/**
 * Pool, namespace, image and snapshot names end up inside `pool/ns/image@snap` and in qemu's `rbd:` strings,
 * where `/`, `@` and `:` are separators: only a conservative character set is accepted.
 */
const CEPH_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const CEPH_USER = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function validateCephName(what: string, value: string): string {
  if (typeof value !== "string" || !CEPH_NAME.test(value)) {
    throw invalidArgument(
      `${what} ${JSON.stringify(value)} is not valid: use letters, digits, '.', '_' and '-' (it must not start with a symbol)`,
      { field: what },
    );
  }
  return value;
}

/** Checks a connection before any argv is built from it. */
export function validateRbdConnection(conn: RbdConnection): RbdConnection {
  if (conn.cephUser !== undefined && !CEPH_USER.test(conn.cephUser)) {
    throw invalidArgument(
      `ceph user ${JSON.stringify(conn.cephUser)} is not valid: give the id without "client.", e.g. admin`,
      { field: "cephUser" },
    );
  }
  for (const [field, path] of [
    ["cephConf", conn.cephConf],
    ["keyring", conn.keyring],
  ] as const) {
    // ':' would cut qemu's `rbd:...:conf=PATH` option string; relative paths depend on the agent's cwd.
    if (path !== undefined && (!path.startsWith("/") || path.includes(":") || path.includes("\0"))) {
      throw invalidArgument(`${field} ${JSON.stringify(path)} must be an absolute path without ':'`, {
        field,
      });
    }
  }
  return conn;
}

/** `pool/image`, `pool/ns/image`, with `@snap` when a snapshot is named: the form rbd (and qemu) take. */
export function rbdSpec(s: RbdImageSpec): string {
  const ns = s.namespace ? `${s.namespace}/` : "";
  const snap = s.snapshot !== undefined ? `@${s.snapshot}` : "";
  return `${s.pool}/${ns}${s.image}${snap}`;
}

/** `pool` or `pool/ns`: the form `rbd ls` and `rbd du` take for a whole pool (namespace). */
export function rbdPoolSpec(pool: string, namespace?: string): string {
  return namespace ? `${pool}/${namespace}` : pool;
}

export function rbdConnectionArgs(conn: RbdConnection): string[] {
  const args: string[] = [];
  if (conn.cephConf !== undefined) args.push("--conf", conn.cephConf);
  if (conn.cephUser !== undefined) args.push("--id", conn.cephUser);
  if (conn.keyring !== undefined) args.push("--keyring", conn.keyring);
  return args;
}

const JSON_OUT = ["--format", "json"] as const;
const NO_PROGRESS = "--no-progress";

// Argv builders. The subcommand comes first so errors read "rbd info ..." (see runner's commandLabel).

export const rbdCreateArgv = (c: RbdConnection, s: RbdImageSpec, sizeBytes: bigint): string[] => [
  "create",
  "--size",
  `${sizeBytes}B`,
  NO_PROGRESS,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdInfoArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "info",
  ...JSON_OUT,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdLsArgv = (c: RbdConnection, pool: string, namespace?: string): string[] => [
  "ls",
  ...JSON_OUT,
  ...rbdConnectionArgs(c),
  rbdPoolSpec(pool, namespace),
];
export const rbdLsLongArgv = (c: RbdConnection, pool: string, namespace?: string): string[] => [
  "ls",
  "-l",
  ...JSON_OUT,
  ...rbdConnectionArgs(c),
  rbdPoolSpec(pool, namespace),
];
/** One image, its snapshots included. */
export const rbdDuArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "du",
  ...JSON_OUT,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
/** Every image of a pool (namespace). `du`'s positional argument is an image, so the pool goes in options. */
export const rbdDuPoolArgv = (c: RbdConnection, pool: string, namespace?: string): string[] => [
  "du",
  ...JSON_OUT,
  "--pool",
  pool,
  ...(namespace ? ["--namespace", namespace] : []),
  ...rbdConnectionArgs(c),
];
export const rbdImageMetaListArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "image-meta",
  "list",
  ...JSON_OUT,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdImageMetaSetArgv = (
  c: RbdConnection,
  s: RbdImageSpec,
  key: string,
  value: string,
): string[] => ["image-meta", "set", ...rbdConnectionArgs(c), rbdSpec(s), key, value];
export const rbdImageMetaRemoveArgv = (c: RbdConnection, s: RbdImageSpec, key: string): string[] => [
  "image-meta",
  "remove",
  ...rbdConnectionArgs(c),
  rbdSpec(s),
  key,
];
export const rbdRenameArgv = (c: RbdConnection, from: RbdImageSpec, to: RbdImageSpec): string[] => [
  "rename",
  ...rbdConnectionArgs(c),
  rbdSpec(from),
  rbdSpec(to),
];
export const rbdRemoveArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "rm",
  NO_PROGRESS,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdResizeArgv = (
  c: RbdConnection,
  s: RbdImageSpec,
  sizeBytes: bigint,
  opts: { allowShrink: boolean },
): string[] => [
  "resize",
  "--size",
  `${sizeBytes}B`,
  ...(opts.allowShrink ? ["--allow-shrink"] : []),
  NO_PROGRESS,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdSnapCreateArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "snap",
  "create",
  NO_PROGRESS,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdSnapListArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "snap",
  "ls",
  ...JSON_OUT,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdSnapRemoveArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "snap",
  "rm",
  NO_PROGRESS,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdSnapPurgeArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "snap",
  "purge",
  NO_PROGRESS,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdSnapRollbackArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "snap",
  "rollback",
  NO_PROGRESS,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdSnapProtectArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "snap",
  "protect",
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdSnapUnprotectArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "snap",
  "unprotect",
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdCloneArgv = (c: RbdConnection, parent: RbdImageSpec, child: RbdImageSpec): string[] => [
  "clone",
  ...rbdConnectionArgs(c),
  rbdSpec(parent),
  rbdSpec(child),
];
export const rbdFlattenArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "flatten",
  NO_PROGRESS,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdChildrenArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "children",
  ...JSON_OUT,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdStatusArgv = (c: RbdConnection, s: RbdImageSpec): string[] => [
  "status",
  ...JSON_OUT,
  ...rbdConnectionArgs(c),
  rbdSpec(s),
];
export const rbdVersionArgv = (): string[] => ["--version"];
export const cephDfArgv = (c: RbdConnection): string[] => ["df", ...JSON_OUT, ...rbdConnectionArgs(c)];
export const cephOsdDumpArgv = (c: RbdConnection): string[] => [
  "osd",
  "dump",
  ...JSON_OUT,
  ...rbdConnectionArgs(c),
];
export const cephOsdMetadataArgv = (c: RbdConnection): string[] => [
  "osd",
  "metadata",
  ...JSON_OUT,
  ...rbdConnectionArgs(c),
];

/** The errno `rbd` exited with, when it ran to the end and failed (not a timeout, not a missing binary). */
export function rbdErrno(e: unknown): number | undefined {
  if (!(e instanceof ToolError) || e.timedOut || e.exitCode === undefined) return undefined;
  return e.exitCode;
}

/**
 * The image (or snapshot) does not exist. A missing pool or namespace also exits with ENOENT; that is a broken
 * pool, not a missing volume, so it is not counted here and surfaces as the error it is.
 */
export function isRbdNotFound(e: unknown): boolean {
  return (
    rbdErrno(e) === RBD_ERRNO.ENOENT &&
    !/error opening pool|namespace '[^']*' does not exist/.test((e as ToolError).stderr)
  );
}

// Parsers. Sizes are JSON numbers: exact up to 2^53 bytes (8 PiB), far above the 1 PiB volume limit.

const bytes = z.number().int().nonnegative();
const big = (n: number) => BigInt(n);
const boolString = z.enum(["true", "false"]).transform((v) => v === "true");

const parentSchema = z.object({
  pool: z.string(),
  pool_namespace: z.string().optional(),
  image: z.string(),
  id: z.string().optional(),
  snapshot: z.string(),
  trash: z.boolean().optional(),
  overlap: bytes.optional(),
});

export interface RbdParent {
  pool: string;
  namespace: string;
  image: string;
  snapshot: string;
  /** Bytes still shared with the parent (info only). */
  overlapBytes?: bigint;
}

const toParent = (p: z.output<typeof parentSchema>): RbdParent => ({
  pool: p.pool,
  namespace: p.pool_namespace ?? "",
  image: p.image,
  snapshot: p.snapshot,
  ...(p.overlap !== undefined ? { overlapBytes: big(p.overlap) } : {}),
});

export const rbdInfoSchema = z.object({
  name: z.string(),
  id: z.string(),
  size: bytes,
  objects: z.number().int().nonnegative(),
  order: z.number().int(),
  object_size: bytes,
  snapshot_count: z.number().int().nonnegative().optional(),
  block_name_prefix: z.string(),
  format: z.number().int(),
  features: z.array(z.string()),
  op_features: z.array(z.string()).optional(),
  flags: z.array(z.string()),
  create_timestamp: z.string().optional(),
  /** Only when a snapshot is named. */
  protected: boolString.optional(),
  parent: parentSchema.optional(),
});

export interface RbdImageInfo {
  name: string;
  id: string;
  sizeBytes: bigint;
  objectSizeBytes: bigint;
  features: string[];
  flags: string[];
  snapshotCount: number;
  parent?: RbdParent;
}

export function parseRbdInfo(text: string, argv: readonly string[] = ["info"]): RbdImageInfo {
  const d = parseJsonOutput("rbd", argv, text, rbdInfoSchema);
  return {
    name: d.name,
    id: d.id,
    sizeBytes: big(d.size),
    objectSizeBytes: big(d.object_size),
    features: d.features,
    flags: d.flags,
    snapshotCount: d.snapshot_count ?? 0,
    ...(d.parent ? { parent: toParent(d.parent) } : {}),
  };
}

export const rbdLsLongSchema = z.array(
  z.object({
    image: z.string(),
    id: z.string().optional(),
    size: bytes,
    format: z.number().int(),
    snapshot: z.string().optional(),
    snapshot_id: z.number().int().optional(),
    protected: boolString.optional(),
    parent: parentSchema.optional(),
    lock_type: z.string().optional(),
  }),
);

export interface RbdLsEntry {
  image: string;
  sizeBytes: bigint;
  parent?: RbdParent;
}

export interface RbdLsSnapshotEntry {
  image: string;
  snapshot: string;
  sizeBytes: bigint;
  protected: boolean;
}

/** A pool's (namespace's) images with their sizes, and apart from them the per-snapshot rows `ls -l` adds. */
export function parseRbdLsLong(
  text: string,
  argv: readonly string[] = ["ls", "-l"],
): { images: RbdLsEntry[]; snapshots: RbdLsSnapshotEntry[] } {
  const rows = parseJsonOutput("rbd", argv, text, rbdLsLongSchema);
  const images: RbdLsEntry[] = [];
  const snapshots: RbdLsSnapshotEntry[] = [];
  for (const e of rows) {
    if (e.snapshot !== undefined) {
      snapshots.push({
        image: e.image,
        snapshot: e.snapshot,
        sizeBytes: big(e.size),
        protected: e.protected ?? false,
      });
    } else {
      images.push({
        image: e.image,
        sizeBytes: big(e.size),
        ...(e.parent ? { parent: toParent(e.parent) } : {}),
      });
    }
  }
  return { images, snapshots };
}

export const rbdSnapLsSchema = z.array(
  z.object({
    id: z.number().int(),
    name: z.string(),
    size: bytes,
    protected: boolString,
    timestamp: z.string(),
  }),
);

export interface RbdSnapshot {
  id: number;
  name: string;
  sizeBytes: bigint;
  protected: boolean;
  /** As rbd prints it (ctime, local time, no zone). */
  timestamp: string;
}

export function parseRbdSnapLs(text: string, argv: readonly string[] = ["snap", "ls"]): RbdSnapshot[] {
  return parseJsonOutput("rbd", argv, text, rbdSnapLsSchema).map((s) => ({
    id: s.id,
    name: s.name,
    sizeBytes: big(s.size),
    protected: s.protected,
    timestamp: s.timestamp,
  }));
}

export const rbdDuSchema = z.object({
  images: z.array(
    z.object({
      name: z.string(),
      id: z.string().optional(),
      snapshot: z.string().optional(),
      snapshot_id: z.number().int().optional(),
      provisioned_size: bytes,
      used_size: bytes,
    }),
  ),
  total_provisioned_size: bytes.optional(),
  total_used_size: bytes.optional(),
});

export interface RbdDu {
  /** One row per image head (`snapshot` absent) and per snapshot. */
  rows: { image: string; snapshot?: string; provisionedBytes: bigint; usedBytes: bigint }[];
  /** Bytes allocated per image, heads and snapshots together. */
  usedByImage: Map<string, bigint>;
  totalUsedBytes: bigint;
}

export function parseRbdDu(text: string, argv: readonly string[] = ["du"]): RbdDu {
  const d = parseJsonOutput("rbd", argv, text, rbdDuSchema);
  const rows = d.images.map((i) => ({
    image: i.name,
    ...(i.snapshot !== undefined ? { snapshot: i.snapshot } : {}),
    provisionedBytes: big(i.provisioned_size),
    usedBytes: big(i.used_size),
  }));
  const usedByImage = new Map<string, bigint>();
  for (const r of rows) usedByImage.set(r.image, (usedByImage.get(r.image) ?? 0n) + r.usedBytes);
  const totalUsedBytes =
    d.total_used_size !== undefined ? big(d.total_used_size) : rows.reduce((s, r) => s + r.usedBytes, 0n);
  return { rows, usedByImage, totalUsedBytes };
}

export const rbdImageMetaSchema = z.record(z.string(), z.string());

/** Image metadata as a plain map; rbd prints nothing for an image without any. */
export function parseRbdImageMeta(
  text: string,
  argv: readonly string[] = ["image-meta", "list"],
): Record<string, string> {
  if (text.trim() === "") return {};
  return parseJsonOutput("rbd", argv, text, rbdImageMetaSchema);
}

export const rbdChildrenSchema = z.array(
  z.object({
    pool: z.string(),
    pool_namespace: z.string().optional(),
    image: z.string(),
    id: z.string().optional(),
    trash: z.boolean().optional(),
  }),
);

export interface RbdChild {
  pool: string;
  namespace: string;
  image: string;
}

export function parseRbdChildren(text: string, argv: readonly string[] = ["children"]): RbdChild[] {
  return parseJsonOutput("rbd", argv, text, rbdChildrenSchema).map((c) => ({
    pool: c.pool,
    namespace: c.pool_namespace ?? "",
    image: c.image,
  }));
}

export const rbdStatusSchema = z.object({
  watchers: z.array(z.object({ address: z.string(), client: z.number().int(), cookie: z.number() })),
});

/** Addresses of the clients that have the image open (a running VM, qemu-img, an rbd-nbd). */
export function parseRbdStatus(text: string, argv: readonly string[] = ["status"]): { watchers: string[] } {
  const d = parseJsonOutput("rbd", argv, text, rbdStatusSchema);
  return { watchers: d.watchers.map((w) => `client.${w.client} ${w.address}`) };
}

export const rbdLsSchema = z.array(z.string());

export function parseRbdLs(text: string, argv: readonly string[] = ["ls"]): string[] {
  return parseJsonOutput("rbd", argv, text, rbdLsSchema);
}

export const cephDfSchema = z.object({
  stats: z.object({
    total_bytes: bytes,
    total_avail_bytes: bytes,
    total_used_bytes: bytes,
    total_used_raw_bytes: bytes,
  }),
  pools: z.array(
    z.object({
      name: z.string(),
      id: z.number().int(),
      stats: z.object({
        stored: bytes,
        objects: z.number().int().nonnegative(),
        bytes_used: bytes,
        percent_used: z.number(),
        max_avail: bytes,
      }),
    }),
  ),
});

export interface CephDf {
  totalBytes: bigint;
  availBytes: bigint;
  /** False when the mon has no statistics to give: no ceph-mgr has reported yet, every number reads 0. */
  hasStats: boolean;
  pools: Map<string, { storedBytes: bigint; usedRawBytes: bigint; maxAvailBytes: bigint; objects: number }>;
}

export function parseCephDf(text: string, argv: readonly string[] = ["df"]): CephDf {
  const d = parseJsonOutput("ceph", argv, text, cephDfSchema);
  const pools = new Map(
    d.pools.map((p) => [
      p.name,
      {
        storedBytes: big(p.stats.stored),
        usedRawBytes: big(p.stats.bytes_used),
        maxAvailBytes: big(p.stats.max_avail),
        objects: p.stats.objects,
      },
    ]),
  );
  return {
    totalBytes: big(d.stats.total_bytes),
    availBytes: big(d.stats.total_avail_bytes),
    hasStats: d.stats.total_bytes > 0,
    pools,
  };
}

export const cephOsdDumpSchema = z.object({
  full_ratio: z.number().positive().max(1),
  pools: z.array(
    z.object({
      pool_name: z.string(),
      size: z.number().int().positive(),
      quota_max_bytes: bytes,
    }),
  ),
  osds: z.array(z.object({ osd: z.number().int(), up: z.number().int(), in: z.number().int() })),
});

export interface CephOsdDump {
  fullRatio: number;
  pools: Map<string, { replicas: number; quotaMaxBytes: bigint }>;
  /** Ids of the OSDs that are up and in: the ones holding data. */
  activeOsds: number[];
}

export function parseCephOsdDump(text: string, argv: readonly string[] = ["osd", "dump"]): CephOsdDump {
  const d = parseJsonOutput("ceph", argv, text, cephOsdDumpSchema);
  return {
    fullRatio: d.full_ratio,
    pools: new Map(
      d.pools.map((p) => [p.pool_name, { replicas: p.size, quotaMaxBytes: big(p.quota_max_bytes) }]),
    ),
    activeOsds: d.osds.filter((o) => o.up === 1 && o.in === 1).map((o) => o.osd),
  };
}

const decimal = z.string().regex(/^\d+$/);
export const cephOsdMetadataSchema = z.array(
  z.object({
    id: z.number().int(),
    osd_objectstore: z.string().optional(),
    bluestore_bdev_size: decimal.optional(),
    memstore_device_bytes: decimal.optional(),
  }),
);

/** Device size per OSD id, where the OSD reports one (bluestore: the block device; memstore: its limit). */
export function parseCephOsdMetadata(
  text: string,
  argv: readonly string[] = ["osd", "metadata"],
): Map<number, bigint | undefined> {
  return new Map(
    parseJsonOutput("ceph", argv, text, cephOsdMetadataSchema).map((o) => {
      const size = o.bluestore_bdev_size ?? o.memstore_device_bytes;
      return [o.id, size !== undefined ? BigInt(size) : undefined];
    }),
  );
}
