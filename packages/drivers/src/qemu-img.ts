import {
  COMPRESSION_TYPES,
  invalidArgument,
  type Qcow2Options,
  type VolumeFormat,
  validateQcow2,
  validateVolumeSize,
} from "@stowage/core";
import { z } from "zod";
import { parseJsonOutput } from "./runner.js";

/**
 * qemu-img (7.2) output schemas, parsers and argv builders. The JSON keys are qemu's; what callers get back is
 * camelCase with sizes as bigint, like every other size in Stowage.
 */

const size = z.number().int().nonnegative();

const snapshotSchema = z.looseObject({
  id: z.string(),
  name: z.string(),
  "vm-state-size": size,
  "date-sec": z.number().int(),
  "date-nsec": z.number().int(),
  "vm-clock-sec": z.number().int(),
  "vm-clock-nsec": z.number().int(),
  icount: z.number().int().optional(),
});

const qcow2DataSchema = z.looseObject({
  compat: z.string(),
  "lazy-refcounts": z.boolean().optional(),
  "compression-type": z.enum(COMPRESSION_TYPES).optional(),
  "extended-l2": z.boolean().optional(),
  "refcount-bits": z.number().int().optional(),
  corrupt: z.boolean().optional(),
  "data-file": z.string().optional(),
});

const formatSpecificSchema = z.union([
  z.object({ type: z.literal("qcow2"), data: qcow2DataSchema }),
  // Other formats (luks, vmdk, rbd, ...) carry their own data; we only need to know the type.
  z.object({ type: z.string().refine((t) => t !== "qcow2"), data: z.unknown().optional() }),
]);

export const qemuImgInfoSchema = z.looseObject({
  "virtual-size": size,
  filename: z.string(),
  format: z.string(),
  // Absent for protocols that cannot say (rbd:, some nfs:// servers).
  "actual-size": size.optional(),
  "cluster-size": z.number().int().positive().optional(),
  "dirty-flag": z.boolean().optional(),
  "backing-filename": z.string().optional(),
  "full-backing-filename": z.string().optional(),
  "backing-filename-format": z.string().optional(),
  snapshots: z.array(snapshotSchema).optional(),
  "format-specific": formatSpecificSchema.optional(),
});

export const qemuImgCheckSchema = z.looseObject({
  filename: z.string(),
  format: z.string(),
  "check-errors": z.number().int().nonnegative(),
  "image-end-offset": size.optional(),
  "total-clusters": z.number().int().nonnegative().optional(),
  "allocated-clusters": z.number().int().nonnegative().optional(),
  "fragmented-clusters": z.number().int().nonnegative().optional(),
  "compressed-clusters": z.number().int().nonnegative().optional(),
  corruptions: z.number().int().nonnegative().optional(),
  leaks: z.number().int().nonnegative().optional(),
  "corruptions-fixed": z.number().int().nonnegative().optional(),
  "leaks-fixed": z.number().int().nonnegative().optional(),
});

export interface QemuImgSnapshot {
  id: string;
  name: string;
  vmStateSize: bigint;
  /** Creation time. */
  date: Date;
  vmClockNsec: bigint;
}

export interface Qcow2Info {
  compat: string;
  lazyRefcounts: boolean;
  compressionType: "zlib" | "zstd";
  extendedL2: boolean;
  refcountBits: number | undefined;
  corrupt: boolean;
  dataFile: string | undefined;
}

export interface QemuImgInfo {
  filename: string;
  format: string;
  virtualSize: bigint;
  /** Bytes allocated on the host; undefined when the protocol cannot tell. */
  actualSize: bigint | undefined;
  clusterSize: number | undefined;
  dirty: boolean;
  backingFilename: string | undefined;
  fullBackingFilename: string | undefined;
  backingFormat: string | undefined;
  snapshots: QemuImgSnapshot[];
  formatSpecificType: string | undefined;
  /** Present for qcow2 images only. */
  qcow2: Qcow2Info | undefined;
}

export interface QemuImgCheck {
  filename: string;
  format: string;
  checkErrors: number;
  corruptions: number;
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset: bigint | undefined;
  totalClusters: number | undefined;
  allocatedClusters: number | undefined;
  fragmentedClusters: number | undefined;
  compressedClusters: number | undefined;
  /** No errors, corruptions or leaks left. */
  clean: boolean;
}

type RawInfo = z.output<typeof qemuImgInfoSchema>;

function toInfo(raw: RawInfo): QemuImgInfo {
  const fs = raw["format-specific"];
  const q = fs?.type === "qcow2" ? (fs.data as z.output<typeof qcow2DataSchema>) : undefined;
  const opt = (n: number | undefined) => (n === undefined ? undefined : BigInt(n));
  return {
    filename: raw.filename,
    format: raw.format,
    virtualSize: BigInt(raw["virtual-size"]),
    actualSize: opt(raw["actual-size"]),
    clusterSize: raw["cluster-size"],
    dirty: raw["dirty-flag"] ?? false,
    backingFilename: raw["backing-filename"],
    fullBackingFilename: raw["full-backing-filename"],
    backingFormat: raw["backing-filename-format"],
    snapshots: (raw.snapshots ?? []).map((s) => ({
      id: s.id,
      name: s.name,
      vmStateSize: BigInt(s["vm-state-size"]),
      date: new Date(s["date-sec"] * 1000 + Math.floor(s["date-nsec"] / 1e6)),
      vmClockNsec: BigInt(s["vm-clock-sec"]) * 1_000_000_000n + BigInt(s["vm-clock-nsec"]),
    })),
    formatSpecificType: fs?.type,
    qcow2: q && {
      compat: q.compat,
      lazyRefcounts: q["lazy-refcounts"] ?? false,
      // qemu before 5.1 did not print the field; zlib was then the only method.
      compressionType: q["compression-type"] ?? "zlib",
      extendedL2: q["extended-l2"] ?? false,
      refcountBits: q["refcount-bits"],
      corrupt: q.corrupt ?? false,
      dataFile: q["data-file"],
    },
  };
}

/** Parses `qemu-img info --output=json` (a single image). `argv` is only for error messages. */
export function parseQemuImgInfo(text: string, argv: readonly string[] = ["info"]): QemuImgInfo {
  return toInfo(parseJsonOutput("qemu-img", argv, text, qemuImgInfoSchema));
}

/** Parses `qemu-img info --backing-chain --output=json`: the image first, then each backing layer. */
export function parseQemuImgInfoChain(text: string, argv: readonly string[] = ["info"]): QemuImgInfo[] {
  return parseJsonOutput("qemu-img", argv, text, z.array(qemuImgInfoSchema).min(1)).map(toInfo);
}

/** Parses `qemu-img check --output=json`. */
export function parseQemuImgCheck(text: string, argv: readonly string[] = ["check"]): QemuImgCheck {
  const r = parseJsonOutput("qemu-img", argv, text, qemuImgCheckSchema);
  const corruptions = r.corruptions ?? 0;
  const leaks = r.leaks ?? 0;
  return {
    filename: r.filename,
    format: r.format,
    checkErrors: r["check-errors"],
    corruptions,
    leaks,
    corruptionsFixed: r["corruptions-fixed"] ?? 0,
    leaksFixed: r["leaks-fixed"] ?? 0,
    imageEndOffset: r["image-end-offset"] === undefined ? undefined : BigInt(r["image-end-offset"]),
    totalClusters: r["total-clusters"],
    allocatedClusters: r["allocated-clusters"],
    fragmentedClusters: r["fragmented-clusters"],
    compressedClusters: r["compressed-clusters"],
    clean: r["check-errors"] === 0 && corruptions === 0 && leaks === 0,
  };
}

/**
 * `qemu-img check` exit codes: 0 clean, 2 corruptions, 3 leaks only. All three print the JSON report, so a
 * runner call for check should allow 2 and 3 and let the parsed report speak. (1 = check could not finish,
 * 63 = the format has no checks.)
 */
export const QEMU_IMG_CHECK_REPORT_EXIT_CODES = [2, 3] as const;

// The qcow2 rules live in core beside Qcow2Options; these names stay exported from here for callers.
export {
  DEFAULT_CLUSTER_SIZE,
  MAX_CLUSTER_SIZE,
  MIN_CLUSTER_SIZE,
  MIN_EXTENDED_L2_CLUSTER_SIZE,
} from "@stowage/core";

/** Validates qcow2 options (and raw's preallocation) and returns them as qemu `-o key=value` pairs. */
export function createOptions(format: VolumeFormat, opts: Qcow2Options = {}): string[] {
  validateQcow2(format, opts);
  const out: string[] = [];
  if (opts.clusterSize !== undefined) out.push(`cluster_size=${opts.clusterSize}`);
  if (opts.preallocation !== undefined) out.push(`preallocation=${opts.preallocation}`);
  if (opts.lazyRefcounts !== undefined) out.push(`lazy_refcounts=${opts.lazyRefcounts ? "on" : "off"}`);
  if (opts.compressionType !== undefined) out.push(`compression_type=${opts.compressionType}`);
  if (opts.extendedL2 !== undefined) out.push(`extended_l2=${opts.extendedL2 ? "on" : "off"}`);
  return out;
}

function assertAbsolutePath(path: string): void {
  // Relative names could be read by qemu as "protocol:..." or as options; ours are always absolute.
  if (!path.startsWith("/") || path.includes("\0")) {
    throw invalidArgument(`image path ${JSON.stringify(path)} must be absolute`);
  }
}

/** argv for `qemu-img create` (without the tool name). Validates size and options first. */
export function qemuImgCreateArgv(
  path: string,
  format: VolumeFormat,
  sizeBytes: bigint,
  opts: Qcow2Options = {},
): string[] {
  assertAbsolutePath(path);
  validateVolumeSize(sizeBytes);
  const o = createOptions(format, opts);
  return [
    "create",
    "-q",
    "-f",
    format,
    ...(o.length > 0 ? ["-o", o.join(",")] : []),
    "--",
    path,
    `${sizeBytes}`,
  ];
}

/**
 * argv for `qemu-img info --output=json`. The format is always given: letting qemu probe a raw image would
 * trust whatever header a guest wrote into it (a fake qcow2 header could name a host file as backing file).
 * `-U` reads images that a running VM holds locked; sizes it reports are still right.
 */
export function qemuImgInfoArgv(path: string, format: VolumeFormat): string[] {
  assertAbsolutePath(path);
  return ["info", "--output=json", "-U", "-f", format, "--", path];
}

/** argv for `qemu-img check --output=json`. */
export function qemuImgCheckArgv(path: string, format: VolumeFormat): string[] {
  assertAbsolutePath(path);
  return ["check", "--output=json", "-f", format, "--", path];
}

/** argv for `qemu-img resize` to an absolute size; `--shrink` only when the caller accepted data loss. */
export function qemuImgResizeArgv(
  path: string,
  format: VolumeFormat,
  newSizeBytes: bigint,
  opts: { shrink?: boolean } = {},
): string[] {
  assertAbsolutePath(path);
  validateVolumeSize(newSizeBytes, "new size");
  return ["resize", "-q", "-f", format, ...(opts.shrink ? ["--shrink"] : []), "--", path, `${newSizeBytes}`];
}

/** Absolute path and format of a backing file. */
export interface BackingFile {
  path: string;
  format: VolumeFormat;
}

/**
 * argv for `qemu-img create -b BACKING -F FMT`: a qcow2 overlay whose unwritten clusters read through to
 * `backing`. The backing path is stored in the overlay as given, so it must be absolute (a relative one is
 * resolved against the overlay's directory, which breaks when either moves).
 */
export function qemuImgCreateOverlayArgv(
  path: string,
  backing: BackingFile,
  sizeBytes: bigint,
  opts: Qcow2Options = {},
): string[] {
  assertAbsolutePath(path);
  assertAbsolutePath(backing.path);
  validateVolumeSize(sizeBytes);
  const o = createOptions("qcow2", opts);
  return [
    "create",
    "-q",
    "-f",
    "qcow2",
    "-b",
    backing.path,
    "-F",
    backing.format,
    ...(o.length > 0 ? ["-o", o.join(",")] : []),
    "--",
    path,
    `${sizeBytes}`,
  ];
}

/** Internal snapshot tags are ids we issue; anything else could be read by qemu as a numeric snapshot id. */
const SNAPSHOT_TAG = /^[a-z][a-z0-9-]{0,62}$/;

function assertSnapshotTag(tag: string): void {
  if (!SNAPSHOT_TAG.test(tag)) {
    throw invalidArgument(`snapshot tag ${JSON.stringify(tag)} is not valid: expected a lower-case id`);
  }
}

/**
 * `--image-opts` for a local qcow2 file. `qemu-img snapshot` has no `-f`: without this it would probe the
 * format from the file's header. Commas are doubled, qemu's escape inside an option string.
 */
function qcow2ImageOpts(path: string): string {
  assertAbsolutePath(path);
  return `driver=qcow2,file.driver=file,file.filename=${path.replaceAll(",", ",,")}`;
}

export type QemuImgSnapshotAction = "create" | "apply" | "delete";
const SNAPSHOT_FLAG: Record<QemuImgSnapshotAction, string> = { create: "-c", apply: "-a", delete: "-d" };

/**
 * argv for `qemu-img snapshot -c/-a/-d TAG` on a qcow2 file (internal snapshots). Listing goes through
 * `qemu-img info --output=json` instead, whose JSON we already parse.
 */
export function qemuImgSnapshotArgv(path: string, action: QemuImgSnapshotAction, tag: string): string[] {
  assertSnapshotTag(tag);
  return ["snapshot", "-q", "--image-opts", SNAPSHOT_FLAG[action], tag, "--", qcow2ImageOpts(path)];
}

export interface QemuImgConvertOptions {
  sourceFormat: VolumeFormat;
  targetFormat: VolumeFormat;
  /** Read this internal snapshot of the source instead of its current data (`-l snapshot.name=`). */
  snapshotTag?: string;
  /**
   * Write only what differs from this backing file, which must hold what the source's own backing holds
   * (`-B`); absent: the output is flat, the whole backing chain copied into it.
   */
  backing?: BackingFile;
  /** Creation options of the target (qcow2 cluster size, compression type...). */
  qcow2?: Qcow2Options;
}

/** argv for `qemu-img convert`: a copy of `src` (or one of its snapshots) into a new file `dst`. */
export function qemuImgConvertArgv(src: string, dst: string, opts: QemuImgConvertOptions): string[] {
  assertAbsolutePath(src);
  assertAbsolutePath(dst);
  if (opts.snapshotTag !== undefined) assertSnapshotTag(opts.snapshotTag);
  if (opts.backing) {
    assertAbsolutePath(opts.backing.path);
    if (opts.targetFormat !== "qcow2") throw invalidArgument("only a qcow2 target can have a backing file");
  }
  const o = createOptions(opts.targetFormat, opts.qcow2 ?? {});
  return [
    "convert",
    "-q",
    "-f",
    opts.sourceFormat,
    "-O",
    opts.targetFormat,
    ...(opts.snapshotTag !== undefined ? ["-l", `snapshot.name=${opts.snapshotTag}`] : []),
    ...(opts.backing ? ["-B", opts.backing.path, "-F", opts.backing.format] : []),
    ...(o.length > 0 ? ["-o", o.join(",")] : []),
    "--",
    src,
    dst,
  ];
}

/**
 * argv for `qemu-img rebase -b ""` in safe mode: copies every cluster the image reads from its backing chain
 * into the image itself, then drops the backing file. (Only the active layer: internal snapshots of the image
 * keep reading through to the old backing file, so callers must not flatten an image that has any.)
 */
export function qemuImgFlattenArgv(path: string): string[] {
  assertAbsolutePath(path);
  return ["rebase", "-q", "-f", "qcow2", "-b", "", "--", path];
}

/** argv for `qemu-img info --backing-chain --output=json`: the image, then each backing layer. */
export function qemuImgInfoChainArgv(path: string, format: VolumeFormat): string[] {
  assertAbsolutePath(path);
  return ["info", "--backing-chain", "--output=json", "-U", "-f", format, "--", path];
}

const mapEntrySchema = z.looseObject({
  start: size,
  length: size,
  depth: z.number().int().nonnegative().optional(),
  present: z.boolean().optional(),
  zero: z.boolean(),
  data: z.boolean(),
  offset: size.optional(),
});

export interface QemuImgMapExtent {
  start: bigint;
  length: bigint;
  /** Holds data (false: a hole or known zeros). */
  data: boolean;
  zero: boolean;
}

/**
 * argv for `qemu-img map --output=json`. With format raw on any file it maps the file itself: which byte
 * ranges the filesystem holds data for, and which are holes.
 */
export function qemuImgMapArgv(path: string, format: VolumeFormat): string[] {
  assertAbsolutePath(path);
  return ["map", "--output=json", "-U", "-f", format, "--", path];
}

/** Parses `qemu-img map --output=json`. */
export function parseQemuImgMap(text: string, argv: readonly string[] = ["map"]): QemuImgMapExtent[] {
  return parseJsonOutput("qemu-img", argv, text, z.array(mapEntrySchema)).map((e) => ({
    start: BigInt(e.start),
    length: BigInt(e.length),
    data: e.data,
    zero: e.zero,
  }));
}
