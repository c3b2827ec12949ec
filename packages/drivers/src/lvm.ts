import { invalidArgument } from "@stowage/core";
import { z } from "zod";
import { parseJsonOutput } from "./runner.js";

/**
 * LVM2 argv builders and report parsers (`lvs`/`vgs`/`pvs --reportformat json`), checked against real output
 * (testdata/lvm-*.json: captured from lvm2 2.03.16 on a loop device, thin pools and snapshots in the kernel VM).
 *
 * Every builder returns the argv after the tool name; the tool itself is the LVM command (`lvcreate`, ...), so a
 * ToolError names it. Every command takes the pool's optional `--config` (hosts without udevd need
 * `activation{udev_sync=0 udev_rules=0}`: with the defaults lvcreate fails with "device not cleared").
 */

/** VG, LV and thin pool names: LVM's own rule, minus a leading hyphen (it would read as an option). */
const LVM_NAME = /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$/;
/** Tag characters LVM 2.02.78+ accepts (2.03.16 checked: `=` and `:` pass, `@` is refused). */
const LVM_TAG = /^[A-Za-z0-9_+.=:/!&#-]{1,1024}$/;

export function assertLvmName(what: string, name: string): string {
  if (
    !LVM_NAME.test(name) ||
    name === "." ||
    name === ".." ||
    name.startsWith("snapshot") ||
    name.startsWith("pvmove")
  ) {
    throw invalidArgument(
      `${what} ${JSON.stringify(name)} is not a usable LVM name: letters, digits and + _ . - (not first)`,
    );
  }
  return name;
}

export function assertLvmTag(tag: string): string {
  if (!LVM_TAG.test(tag) || tag.startsWith("-")) {
    throw invalidArgument(
      `${JSON.stringify(tag)} is not a valid LVM tag (letters, digits and _ + . = : / ! & # -)`,
    );
  }
  return tag;
}

/** Options every LVM command gets. */
export interface LvmCommandOptions {
  /** Passed as `--config`, e.g. `activation{udev_sync=0 udev_rules=0} devices{obtain_device_list_from_udev=0}`. */
  config?: string;
}

function common(opts: LvmCommandOptions): string[] {
  return opts.config ? ["--config", opts.config] : [];
}

function tagArgs(flag: "--addtag" | "--deltag", tags: readonly string[]): string[] {
  return tags.flatMap((t) => [flag, assertLvmTag(t)]);
}

/** Sizes go to LVM in bytes (`b`); LVM rounds them up to whole extents. */
function bytes(size: bigint): string {
  if (size <= 0n) throw invalidArgument(`LVM size ${size} must be positive`);
  return `${size}b`;
}

const REPORT = ["--reportformat", "json", "--units", "b", "--nosuffix"];

export const LVS_FIELDS = [
  "lv_name",
  "vg_name",
  "lv_uuid",
  "lv_path",
  "lv_size",
  "lv_attr",
  "lv_tags",
  "lv_time",
  "segtype",
  "pool_lv",
  "origin",
  "origin_size",
  "data_percent",
  "metadata_percent",
  "lv_active",
  "lv_device_open",
  "lv_skip_activation",
] as const;

export const VGS_FIELDS = [
  "vg_name",
  "vg_uuid",
  "vg_size",
  "vg_free",
  "vg_extent_size",
  "vg_extent_count",
  "vg_free_count",
  "lv_count",
] as const;

export const PVS_FIELDS = ["pv_name", "vg_name", "pv_uuid", "pv_size", "pv_free"] as const;

/** `lvs` over a whole VG: one command answers every question about the pool (hidden sub-LVs left out). */
export function lvsArgv(vg: string, opts: LvmCommandOptions = {}): string[] {
  return [...common(opts), ...REPORT, "-o", LVS_FIELDS.join(","), assertLvmName("volume group", vg)];
}

export function vgsArgv(vg: string, opts: LvmCommandOptions = {}): string[] {
  return [...common(opts), ...REPORT, "-o", VGS_FIELDS.join(","), assertLvmName("volume group", vg)];
}

/** All PVs, or those of one VG. */
export function pvsArgv(opts: LvmCommandOptions & { vg?: string } = {}): string[] {
  const select = opts.vg ? ["--select", `vg_name=${assertLvmName("volume group", opts.vg)}`] : [];
  return [...common(opts), ...REPORT, "-o", PVS_FIELDS.join(","), ...select];
}

export interface LvcreateSpec extends LvmCommandOptions {
  vg: string;
  name: string;
  sizeBytes: bigint;
  tags: readonly string[];
  /** Set: a thin LV in this thin pool (virtual size). Unset: a linear LV of real extents. */
  thinPool?: string;
}

export function lvcreateArgv(spec: LvcreateSpec): string[] {
  const vg = assertLvmName("volume group", spec.vg);
  const where = spec.thinPool
    ? ["-V", bytes(spec.sizeBytes), "--thinpool", `${vg}/${assertLvmName("thin pool", spec.thinPool)}`]
    : ["-L", bytes(spec.sizeBytes), vg];
  return [
    ...common(opts(spec)),
    "-q",
    "-y",
    "-n",
    assertLvmName("logical volume", spec.name),
    ...tagArgs("--addtag", spec.tags),
    ...where,
  ];
}

export interface SnapshotSpec extends LvmCommandOptions {
  vg: string;
  origin: string;
  name: string;
  tags: readonly string[];
  /**
   * "thin": a thin snapshot (shares the pool, no size). "cow": a classic copy-on-write snapshot whose exception
   * store gets 100%ORIGIN, so it can never fill up and turn invalid however much of the origin is rewritten.
   */
  type: "thin" | "cow";
  /**
   * Thin only. true (`-ky`): not activated with the VG, like LVM's default for thin snapshots (a snapshot
   * is kept, not opened). false (`-kn`): a normal LV that activates, which is what a clone must be.
   */
  skipActivation?: boolean;
}

export function lvcreateSnapshotArgv(spec: SnapshotSpec): string[] {
  const vg = assertLvmName("volume group", spec.vg);
  const kind = spec.type === "cow" ? ["-l", "100%ORIGIN"] : [spec.skipActivation === false ? "-kn" : "-ky"];
  return [
    ...common(opts(spec)),
    "-q",
    "-y",
    "-s",
    ...kind,
    "-n",
    assertLvmName("logical volume", spec.name),
    ...tagArgs("--addtag", spec.tags),
    `${vg}/${assertLvmName("logical volume", spec.origin)}`,
  ];
}

export function lvrenameArgv(vg: string, from: string, to: string, o: LvmCommandOptions = {}): string[] {
  return [
    ...common(o),
    "-q",
    assertLvmName("volume group", vg),
    assertLvmName("logical volume", from),
    assertLvmName("logical volume", to),
  ];
}

export function lvremoveArgv(vg: string, name: string, o: LvmCommandOptions = {}): string[] {
  return [...common(o), "-q", "-y", lvPath(vg, name)];
}

export function lvchangeTagsArgv(
  vg: string,
  name: string,
  change: { add?: readonly string[]; del?: readonly string[] },
  o: LvmCommandOptions = {},
): string[] {
  return [
    ...common(o),
    "-q",
    ...tagArgs("--deltag", change.del ?? []),
    ...tagArgs("--addtag", change.add ?? []),
    lvPath(vg, name),
  ];
}

export function lvchangeActivateArgv(
  vg: string,
  name: string,
  active: boolean,
  o: LvmCommandOptions = {},
): string[] {
  // -K: activate even a thin snapshot flagged to skip activation.
  return [...common(o), "-q", active ? "-ay" : "-an", ...(active ? ["-K"] : []), lvPath(vg, name)];
}

/** lvextend to grow, lvreduce (forced: the caller has already decided to lose the tail) to shrink. */
export function lvresizeArgv(
  vg: string,
  name: string,
  sizeBytes: bigint,
  shrink: boolean,
  o: LvmCommandOptions = {},
): { tool: "lvextend" | "lvreduce"; argv: string[] } {
  const argv = [
    ...common(o),
    "-q",
    "-y",
    ...(shrink ? ["-f"] : []),
    "-L",
    bytes(sizeBytes),
    lvPath(vg, name),
  ];
  return { tool: shrink ? "lvreduce" : "lvextend", argv };
}

/** Merges a snapshot back into its origin (and consumes it); `-i 1`: poll the merge every second, not 15. */
export function lvconvertMergeArgv(vg: string, snapshot: string, o: LvmCommandOptions = {}): string[] {
  return [...common(o), "-q", "-y", "-i", "1", "--merge", lvPath(vg, snapshot)];
}

function lvPath(vg: string, name: string): string {
  return `${assertLvmName("volume group", vg)}/${assertLvmName("logical volume", name)}`;
}

function opts(o: LvmCommandOptions): LvmCommandOptions {
  return o.config === undefined ? {} : { config: o.config };
}

// ---- reports -------------------------------------------------------------------------------------------

const decimal = z.string().regex(/^\d+$/, "expected a decimal byte count");
/** "" when LVM has no value (an inactive LV has no data%); otherwise like "12.34". */
const percent = z.string().regex(/^(\d+(\.\d+)?)?$/, "expected a percentage or nothing");
/** "" when absent (origin_size of a non-snapshot). */
const optionalDecimal = z.string().regex(/^\d*$/, "expected a decimal byte count or nothing");

const lvRowSchema = z.object({
  lv_name: z.string().min(1),
  vg_name: z.string().min(1),
  lv_uuid: z.string(),
  lv_path: z.string(),
  lv_size: decimal,
  lv_attr: z.string().min(4),
  lv_tags: z.string(),
  lv_time: z.string(),
  segtype: z.string(),
  pool_lv: z.string(),
  origin: z.string(),
  origin_size: optionalDecimal,
  data_percent: percent,
  metadata_percent: percent,
  lv_active: z.string(),
  lv_device_open: z.string(),
  lv_skip_activation: z.string(),
});

const vgRowSchema = z.object({
  vg_name: z.string().min(1),
  vg_uuid: z.string(),
  vg_size: decimal,
  vg_free: decimal,
  vg_extent_size: decimal,
  vg_extent_count: decimal,
  vg_free_count: decimal,
  lv_count: decimal,
});

const pvRowSchema = z.object({
  pv_name: z.string().min(1),
  vg_name: z.string(),
  pv_uuid: z.string(),
  pv_size: decimal,
  pv_free: decimal,
});

/** `{"report":[{"lv":[...]}]}`: every value a string. One report per command; several are flattened. */
const reportSchema = <K extends string, S extends z.ZodType>(key: K, row: S) =>
  z.object({ report: z.array(z.object({ [key]: z.array(row) } as Record<K, z.ZodArray<S>>)).min(1) });

export const lvsReportSchema = reportSchema("lv", lvRowSchema);
export const vgsReportSchema = reportSchema("vg", vgRowSchema);
export const pvsReportSchema = reportSchema("pv", pvRowSchema);

export interface LvmLogicalVolume {
  name: string;
  vg: string;
  uuid: string;
  /** /dev/VG/LV ("" for hidden LVs). */
  path: string;
  sizeBytes: bigint;
  /** The 10-character lv_attr, e.g. `Vwi-aotz--`. */
  attr: string;
  tags: string[];
  /** Creation time (ISO 8601), when LVM knows it. */
  createdAt?: string;
  /** linear, striped, thin, thin-pool, ... (a classic snapshot reads as its COW store's segtype). */
  segtype: string;
  /** The thin pool of a thin LV; "" otherwise. */
  poolLv: string;
  /** The origin of a snapshot (thin or classic); "" otherwise. */
  origin: string;
  /** Classic snapshots (and their origins): the origin's size, which is the snapshot's virtual size. */
  originSizeBytes?: bigint;
  /** Thin pools and thin LVs (and classic snapshots: how full the COW store is), only when active. */
  dataPercent?: number;
  metadataPercent?: number;
  /** undefined when LVM cannot tell (activation disabled, as on a host without device-mapper). */
  active: boolean | undefined;
  open: boolean;
  skipActivation: boolean;
  /** lv_attr[0] is `s` (classic snapshot) or a thin LV with an origin. */
  isSnapshot: boolean;
}

export interface LvmVolumeGroup {
  name: string;
  uuid: string;
  sizeBytes: bigint;
  freeBytes: bigint;
  extentSizeBytes: bigint;
  extentCount: number;
  freeExtentCount: number;
  lvCount: number;
}

export interface LvmPhysicalVolume {
  name: string;
  vg: string;
  uuid: string;
  sizeBytes: bigint;
  freeBytes: bigint;
}

export function parseLvs(text: string, argv: readonly string[] = []): LvmLogicalVolume[] {
  const parsed = parseJsonOutput("lvs", argv, text, lvsReportSchema);
  return parsed.report.flatMap((r) => r.lv).map(toLv);
}

export function parseVgs(text: string, argv: readonly string[] = []): LvmVolumeGroup[] {
  const parsed = parseJsonOutput("vgs", argv, text, vgsReportSchema);
  return parsed.report
    .flatMap((r) => r.vg)
    .map((v) => ({
      name: v.vg_name,
      uuid: v.vg_uuid,
      sizeBytes: BigInt(v.vg_size),
      freeBytes: BigInt(v.vg_free),
      extentSizeBytes: BigInt(v.vg_extent_size),
      extentCount: Number(v.vg_extent_count),
      freeExtentCount: Number(v.vg_free_count),
      lvCount: Number(v.lv_count),
    }));
}

export function parsePvs(text: string, argv: readonly string[] = []): LvmPhysicalVolume[] {
  const parsed = parseJsonOutput("pvs", argv, text, pvsReportSchema);
  return parsed.report
    .flatMap((r) => r.pv)
    .map((p) => ({
      name: p.pv_name,
      vg: p.vg_name,
      uuid: p.pv_uuid,
      sizeBytes: BigInt(p.pv_size),
      freeBytes: BigInt(p.pv_free),
    }));
}

function toLv(r: z.output<typeof lvRowSchema>): LvmLogicalVolume {
  const lv: LvmLogicalVolume = {
    name: r.lv_name,
    vg: r.vg_name,
    uuid: r.lv_uuid,
    path: r.lv_path,
    sizeBytes: BigInt(r.lv_size),
    attr: r.lv_attr,
    tags: r.lv_tags === "" ? [] : r.lv_tags.split(","),
    segtype: r.segtype,
    poolLv: r.pool_lv,
    origin: r.origin,
    // "unknown" is what LVM says with activation disabled: neither active nor inactive.
    active: r.lv_active === "active" ? true : r.lv_active === "" ? false : undefined,
    open: r.lv_device_open === "open",
    skipActivation: r.lv_skip_activation !== "",
    isSnapshot: r.lv_attr.startsWith("s") || (r.segtype === "thin" && r.origin !== ""),
  };
  const createdAt = parseLvmTime(r.lv_time);
  if (createdAt) lv.createdAt = createdAt;
  if (r.origin_size !== "") lv.originSizeBytes = BigInt(r.origin_size);
  if (r.data_percent !== "") lv.dataPercent = Number(r.data_percent);
  if (r.metadata_percent !== "") lv.metadataPercent = Number(r.metadata_percent);
  return lv;
}

/** "2026-11-22 15:54:56 +0000" (LVM's default report/time_format) to ISO 8601; undefined if unknown. */
export function parseLvmTime(text: string): string | undefined {
  const m = /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d) ([+-]\d\d)(\d\d)$/.exec(text.trim());
  if (!m) return undefined;
  const d = new Date(`${m[1]}T${m[2]}${m[3]}:${m[4]}`);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

/** The value of the first `key=value` tag with this key. */
export function tagValue(tags: readonly string[], key: string): string | undefined {
  const prefix = `${key}=`;
  return tags.find((t) => t.startsWith(prefix))?.slice(prefix.length);
}

/** Bytes of a thin pool or thin LV in use, from its size and LVM's two-decimal data%. */
export function usedFromPercent(sizeBytes: bigint, percent: number | undefined): bigint {
  if (percent === undefined) return 0n;
  const hundredths = BigInt(Math.round(percent * 100));
  const used = (sizeBytes * hundredths) / 10_000n;
  return used > sizeBytes ? sizeBytes : used;
}
