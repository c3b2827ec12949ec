import { FORMATS_BY_KIND, type PoolKind, type VolumeFormat } from "./domain.js";
import { failedPrecondition } from "./errors.js";

/** How a deleted volume's data is destroyed: not at all, by writing zeros, or by discarding (unmap/TRIM). */
export const WIPE_MODES = ["none", "zero", "discard"] as const;
export type WipeMode = (typeof WIPE_MODES)[number];

/**
 * How a volume is reached from another host: an iSCSI target (tgt), NFS, NBD, or an RBD access grant (a cephx
 * client of the other host's own). A netfs volume needs none: every host that reaches the share reaches it.
 */
export const EXPORT_KINDS = ["iscsi", "nfs", "nbd", "rbd"] as const;
export type ExportKind = (typeof EXPORT_KINDS)[number];

/** What volumes of one pool kind and format can do. */
export interface Capabilities {
  snapshots: boolean;
  clones: boolean;
  /** Reverting a volume to one of its snapshots. */
  revert: boolean;
  /** Making a clone independent of its source. */
  flatten: boolean;
  shrink: boolean;
  wipe: readonly WipeMode[];
  exports: readonly ExportKind[];
}

export type Capability = Exclude<keyof Capabilities, "wipe" | "exports">;

const FILE_QCOW2: Capabilities = {
  snapshots: true,
  clones: true,
  revert: true,
  flatten: true,
  shrink: true,
  wipe: ["none", "zero", "discard"],
  exports: ["iscsi"],
};
// A raw file has nowhere to keep a snapshot; clones and flatten are full copies.
const FILE_RAW: Capabilities = { ...FILE_QCOW2, snapshots: false, revert: false };
const LVM: Capabilities = FILE_QCOW2;
// Files on a share every attached host reaches already; tgt needs a local path, which libnfs does not give.
const NETFS_QCOW2: Capabilities = { ...FILE_QCOW2, exports: [] };
const NETFS_RAW: Capabilities = { ...FILE_RAW, exports: [] };
// Zeros on a thin RBD image allocate every object: a zero wipe would fill the cluster. Other hosts reach an
// image through a cephx grant of their own.
const RBD: Capabilities = { ...FILE_QCOW2, wipe: ["none", "discard"], exports: ["rbd"] };

/**
 * The one table of what each pool kind and format can do (docs/architecture.md, "Capabilities"). The
 * controller refuses an unsupported request from it before anything is written, and the drivers' conformance
 * suite runs the tests each row promises. A kind/format pair with no row cannot hold volumes at all.
 */
export const CAPABILITIES: Readonly<Record<PoolKind, Partial<Record<VolumeFormat, Capabilities>>>> = {
  dir: { qcow2: FILE_QCOW2, raw: FILE_RAW },
  netfs: { qcow2: NETFS_QCOW2, raw: NETFS_RAW },
  lvm: { raw: LVM },
  lvmthin: { raw: LVM },
  rbd: { raw: RBD },
};

const NONE: Capabilities = {
  snapshots: false,
  clones: false,
  revert: false,
  flatten: false,
  shrink: false,
  wipe: ["none"],
  exports: [],
};

/** The capabilities of a volume of this kind and format (nothing at all for a pair that cannot exist). */
export function capabilitiesOf(kind: PoolKind, format: VolumeFormat, table = CAPABILITIES): Capabilities {
  return table[kind]?.[format] ?? NONE;
}

const WHAT: Record<Capability, string> = {
  snapshots: "snapshots",
  clones: "clones",
  revert: "reverting to a snapshot",
  flatten: "flattening a clone",
  shrink: "shrinking",
};

/** Throws FAILED_PRECONDITION when volumes of this kind and format cannot do `capability`. */
export function requireCapability(
  kind: PoolKind,
  format: VolumeFormat,
  capability: Capability,
  table = CAPABILITIES,
): void {
  if (!capabilitiesOf(kind, format, table)[capability]) {
    throw failedPrecondition(`${format} volumes on ${kind} pools do not support ${WHAT[capability]}`, {
      kind,
      format,
      capability,
    });
  }
}

/** Throws FAILED_PRECONDITION when volumes of this kind and format cannot be wiped this way. */
export function requireWipe(
  kind: PoolKind,
  format: VolumeFormat,
  mode: WipeMode,
  table = CAPABILITIES,
): void {
  const modes = capabilitiesOf(kind, format, table).wipe;
  if (!modes.includes(mode)) {
    throw failedPrecondition(
      `${format} volumes on ${kind} pools cannot be wiped with ${mode}: use ${modes.join(" or ")}`,
      { kind, format, wipe: mode },
    );
  }
}

/** Every row agrees with FORMATS_BY_KIND: a format a kind cannot hold has no row. */
export function checkCapabilityTable(table = CAPABILITIES): void {
  for (const [kind, rows] of Object.entries(table) as [
    PoolKind,
    Partial<Record<VolumeFormat, Capabilities>>,
  ][]) {
    for (const format of Object.keys(rows) as VolumeFormat[]) {
      if (!FORMATS_BY_KIND[kind].includes(format)) {
        throw new Error(`capability row ${kind}/${format}: ${kind} pools cannot hold ${format} volumes`);
      }
    }
  }
}

/** Throws FAILED_PRECONDITION when volumes of this kind and format cannot be exported this way. */
export function requireExport(
  kind: PoolKind,
  format: VolumeFormat,
  exportKind: ExportKind,
  table = CAPABILITIES,
): void {
  const kinds = capabilitiesOf(kind, format, table).exports;
  if (!kinds.includes(exportKind)) {
    throw failedPrecondition(
      kinds.length === 0
        ? `${format} volumes on ${kind} pools cannot be exported${kind === "netfs" ? ": every host attached to the share reaches them already" : ""}`
        : `${format} volumes on ${kind} pools cannot be exported over ${exportKind}: use ${kinds.join(" or ")}`,
      { kind, format, export: exportKind },
    );
  }
}

/**
 * The cephx client (without its `client.` prefix) through which host `hostName` reaches the image of RBD export
 * `exportId`: one per export and host, so that revoking one host's grant leaves every other key alone:
 * `stowage-<export id's hex>-<host>`. It must also be a libvirt `<auth username>`, which takes only
 * [A-Za-z0-9_+-], so the host name's '.' and '_' are escaped as "_d" and "__" (one name per host, no two
 * alike). Built from an export id and a host name only, so it is safe as a Ceph entity name.
 */
export function cephxUserFor(exportId: string, hostName: string): string {
  const host = hostName.replaceAll("_", "__").replaceAll(".", "_d");
  return `stowage-${exportId.slice(exportId.indexOf("-") + 1)}-${host}`;
}
