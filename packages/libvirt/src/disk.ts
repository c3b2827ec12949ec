import { invalidArgument } from "@stowage/core";
import { fragment } from "xmlbuilder2";
import type { XMLBuilder } from "xmlbuilder2/lib/interfaces.js";
import {
  checkAbsolutePath,
  checkCephName,
  checkGenericName,
  checkHost,
  checkIothreadId,
  checkIqn,
  checkLun,
  checkPort,
  checkRelativePath,
  checkSecretUsage,
  checkSerial,
  checkTargetDev,
  checkText,
} from "./validate.js";

// The libvirt <disk> element for a volume, built with xmlbuilder2 (never by concatenating strings with user
// data). The element shapes follow domaincommon.rng of libvirt 9.0 (Debian libvirt-clients), against which
// the tests run virt-xml-validate; the defaults are tabled in packages/libvirt/README.md.

export type DiskBus = "virtio" | "scsi" | "sata";
export type CacheMode = "none" | "directsync" | "writethrough" | "writeback" | "unsafe" | "default";
export type IoMode = "native" | "threads" | "io_uring";
export type DiscardMode = "unmap" | "ignore";

export interface DiskTarget {
  /** `vd[a-z]+` (bus virtio) or `sd[a-z]+` (bus scsi or sata). */
  dev: string;
  /** Defaults from the name: virtio for vd*, scsi for sd*. */
  bus?: DiskBus;
}

/** What every kind of disk takes. */
export interface DiskCommon {
  target: DiskTarget;
  /** The volume id, which the guest sees as the disk's serial (virtio-blk shows its first 20 bytes). */
  serial?: string;
  cache?: CacheMode;
  io?: IoMode;
  discard?: DiscardMode;
  /** The iothread (1, 2, ...) that serves this disk; virtio only. The domain must define that many. */
  iothread?: number;
  readonly?: boolean;
  shareable?: boolean;
  /**
   * The user's name of the volume. It becomes `<alias name='ua-NAME'/>` when libvirt accepts that (its
   * aliasName: A-Z, a-z, 0-9, '_', '-', '.'); any name, escaped, goes into the domain metadata
   * (`volumeMetadataElement`), which `validationDomain` writes.
   */
  alias?: string;
  /** The volume's labels; only in the domain metadata, never in the <disk> element. */
  labels?: Record<string, string>;
}

export interface HostPort {
  host: string;
  port: number;
}

/** A reference to a libvirt secret by its usage name; the secret's value never enters the XML. */
export interface SecretRef {
  username: string;
  secretUsage: string;
}

export interface FileDiskSpec extends DiskCommon {
  kind: "file";
  path: string;
  format: "qcow2" | "raw";
}

export interface BlockDiskSpec extends DiskCommon {
  kind: "block";
  path: string;
  format: "raw";
  /** A thin LV (or anything that frees on discard): the guest's discards are passed down. */
  thin?: boolean;
}

export interface IscsiDiskSpec extends DiskCommon {
  kind: "iscsi";
  portal: HostPort;
  iqn: string;
  lun: number;
  /** The attaching host's initiator name, which the target's ACL admits. */
  initiatorIqn: string;
  chap?: SecretRef;
  /** What the LUN holds: raw (a block device, a raw file), or a qcow2 image served as it is (default raw). */
  format?: "qcow2" | "raw";
}

export interface RbdDiskSpec extends DiskCommon {
  kind: "rbd";
  pool: string;
  image: string;
  monitors: HostPort[];
  /** A cephx user (without "client.") and the usage name of a libvirt secret of type ceph holding its key. */
  auth?: SecretRef;
}

export interface NfsDiskSpec extends DiskCommon {
  kind: "nfs";
  host: string;
  /** Omitted: qemu's libnfs asks the server's portmapper. */
  port?: number;
  /** The export, as the server names it (absolute). */
  exportPath: string;
  /** The image's path inside the export. */
  file: string;
  format: "qcow2" | "raw";
  /** The user and group (names, or "+N" for a number) qemu claims to the server; omitted: qemu's own. */
  identity?: { user?: string; group?: string };
}

export type DiskSpec = FileDiskSpec | BlockDiskSpec | IscsiDiskSpec | RbdDiskSpec | NfsDiskSpec;
export type DiskKind = DiskSpec["kind"];

/** The driver settings a disk gets when the spec does not say. */
export interface DriverDefaults {
  cache: CacheMode;
  io: IoMode;
  discard?: DiscardMode;
}

/**
 * Defaults per kind. cache='none' everywhere: it is the mode libvirt considers safe for live migration (no
 * host page cache holding writes the destination cannot see). io='native' (Linux AIO) where the image is raw
 * on a device or a network protocol; io='threads' for files, where native AIO can block the submitting
 * thread on file-system allocation (qcow2 clusters, holes in a sparse raw file). discard='unmap' where the
 * storage is thin and frees what the guest trims.
 */
export function driverDefaults(spec: DiskSpec): DriverDefaults {
  switch (spec.kind) {
    case "file":
      return { cache: "none", io: "threads", discard: "unmap" };
    case "block":
      return spec.thin ? { cache: "none", io: "native", discard: "unmap" } : { cache: "none", io: "native" };
    case "iscsi":
      return { cache: "none", io: "native" };
    case "rbd":
      return { cache: "none", io: "native", discard: "unmap" };
    case "nfs":
      return { cache: "none", io: "threads", discard: "unmap" };
  }
}

const ALIAS_NAME = /^[a-zA-Z0-9_.-]+$/;

/** `ua-NAME` when libvirt accepts it as a user alias, else undefined (the name then lives in the metadata). */
export function userAlias(name: string): string | undefined {
  const alias = `ua-${name}`;
  return ALIAS_NAME.test(alias) ? alias : undefined;
}

const CACHE_MODES: readonly CacheMode[] = [
  "none",
  "directsync",
  "writethrough",
  "writeback",
  "unsafe",
  "default",
];
const IO_MODES: readonly IoMode[] = ["native", "threads", "io_uring"];
const DISCARD_MODES: readonly DiscardMode[] = ["unmap", "ignore"];

function oneOf<T extends string>(what: string, value: T, allowed: readonly T[]): T {
  if (!allowed.includes(value)) {
    throw invalidArgument(`${what} ${JSON.stringify(value)} is not one of ${allowed.join(", ")}`, {
      field: what,
    });
  }
  return value;
}

function imageFormat(spec: DiskSpec): "qcow2" | "raw" {
  switch (spec.kind) {
    case "file":
    case "nfs":
      return oneOf(`${spec.kind}.format`, spec.format, ["qcow2", "raw"] as const);
    case "block":
      return oneOf("block.format", spec.format, ["raw"] as const);
    case "iscsi":
      return oneOf("iscsi.format", spec.format ?? "raw", ["qcow2", "raw"] as const);
    case "rbd":
      return "raw";
  }
}

/** The bus a target gets, checked against its device name. */
function targetBus(target: DiskTarget): DiskBus {
  const dev = checkTargetDev("target.dev", target.dev);
  const virtio = dev.startsWith("vd");
  const bus = target.bus ?? (virtio ? "virtio" : "scsi");
  oneOf("target.bus", bus, ["virtio", "scsi", "sata"] as const);
  if (virtio !== (bus === "virtio")) {
    throw invalidArgument(
      `target ${dev} does not fit bus ${bus}: vd* names are virtio disks, sd* names are scsi or sata ones`,
      { field: "target.bus" },
    );
  }
  return bus;
}

/** Attributes with the undefined ones left out (xmlbuilder2 would write them as "undefined"). */
function attrs(values: Record<string, string | number | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(values)) if (v !== undefined) out[k] = String(v);
  return out;
}

function appendHost(source: XMLBuilder, what: string, hp: { host: string; port?: number | undefined }): void {
  source.ele(
    "host",
    attrs({
      name: checkHost(`${what}.host`, hp.host),
      port: hp.port === undefined ? undefined : checkPort(`${what}.port`, hp.port),
    }),
  );
}

function appendAuth(source: XMLBuilder, what: string, ref: SecretRef, type: "iscsi" | "ceph"): void {
  source
    .ele("auth", { username: checkGenericName(`${what}.username`, ref.username) })
    .ele("secret", { type, usage: checkSecretUsage(`${what}.secretUsage`, ref.secretUsage) });
}

function appendSource(disk: XMLBuilder, spec: DiskSpec): void {
  switch (spec.kind) {
    case "file":
      disk.ele("source", { file: checkAbsolutePath("file.path", spec.path) });
      return;
    case "block":
      disk.ele("source", { dev: checkAbsolutePath("block.path", spec.path) });
      return;
    case "iscsi": {
      const iqn = checkIqn("iscsi.iqn", spec.iqn);
      const lun = checkLun("iscsi.lun", spec.lun);
      const source = disk.ele("source", { protocol: "iscsi", name: `${iqn}/${lun}` });
      appendHost(source, "iscsi.portal", spec.portal);
      if (spec.chap) appendAuth(source, "iscsi.chap", spec.chap, "iscsi");
      source.ele("initiator").ele("iqn", { name: checkIqn("iscsi.initiatorIqn", spec.initiatorIqn) });
      return;
    }
    case "rbd": {
      const pool = checkCephName("rbd.pool", spec.pool);
      const image = checkCephName("rbd.image", spec.image);
      if (!Array.isArray(spec.monitors) || spec.monitors.length === 0) {
        throw invalidArgument("rbd.monitors must name at least one Ceph monitor", { field: "rbd.monitors" });
      }
      const source = disk.ele("source", { protocol: "rbd", name: `${pool}/${image}` });
      spec.monitors.forEach((m, i) => {
        appendHost(source, `rbd.monitors[${i}]`, m);
      });
      if (spec.auth) appendAuth(source, "rbd.auth", spec.auth, "ceph");
      return;
    }
    case "nfs": {
      const exportPath = checkAbsolutePath("nfs.exportPath", spec.exportPath);
      const file = checkRelativePath("nfs.file", spec.file);
      const name = `${exportPath.replace(/\/+$/, "")}/${file}`;
      const source = disk.ele("source", { protocol: "nfs", name });
      appendHost(source, "nfs", { host: spec.host, port: spec.port });
      // libvirt 9.0's schema requires <identity> on an NFS source (diskSourceNetworkNFS); both attributes
      // are optional, and without them qemu uses its own uid and gid.
      source.ele(
        "identity",
        attrs({
          user:
            spec.identity?.user === undefined
              ? undefined
              : checkGenericName("nfs.identity.user", spec.identity.user),
          group:
            spec.identity?.group === undefined
              ? undefined
              : checkGenericName("nfs.identity.group", spec.identity.group),
        }),
      );
      return;
    }
  }
}

const DISK_TYPE: Record<DiskKind, "file" | "block" | "network"> = {
  file: "file",
  block: "block",
  iscsi: "network",
  rbd: "network",
  nfs: "network",
};

/** The driver attributes a spec resolves to: its overrides over the kind's defaults, checked together. */
export function resolveDriver(
  spec: DiskSpec,
): DriverDefaults & { format: "qcow2" | "raw"; iothread?: number } {
  const defaults = driverDefaults(spec);
  const format = imageFormat(spec);
  const cache = oneOf("cache", spec.cache ?? defaults.cache, CACHE_MODES);
  const io = oneOf("io", spec.io ?? defaults.io, IO_MODES);
  const discard =
    spec.discard === undefined ? defaults.discard : oneOf("discard", spec.discard, DISCARD_MODES);
  if (io === "native" && cache !== "none" && cache !== "directsync") {
    // qemu: "aio=native was specified, but it requires cache.direct=on"
    throw invalidArgument(`io='native' needs cache='none' or 'directsync' (O_DIRECT), not cache='${cache}'`, {
      field: "io",
    });
  }
  if (spec.shareable && !spec.readonly && format !== "raw") {
    // libvirt too: "shared access for disk ... requires use of supported storage format"
    throw invalidArgument(
      "a shareable writable disk must be raw: two writers of one qcow2 image corrupt it",
      {
        field: "shareable",
      },
    );
  }
  const out: DriverDefaults & { format: "qcow2" | "raw"; iothread?: number } = { format, cache, io };
  if (discard !== undefined) out.discard = discard;
  if (spec.iothread !== undefined) out.iothread = checkIothreadId("iothread", spec.iothread);
  return out;
}

/** Checks the kind, so that a spec from outside TypeScript with a bad kind fails clearly. */
function checkKind(spec: DiskSpec): DiskKind {
  const kind = (spec as { kind?: unknown } | null)?.kind;
  if (typeof kind !== "string" || !Object.hasOwn(DISK_TYPE, kind)) {
    throw invalidArgument(
      `disk kind ${JSON.stringify(kind)} is not one of ${Object.keys(DISK_TYPE).join(", ")}`,
      {
        field: "kind",
      },
    );
  }
  return kind as DiskKind;
}

/**
 * Appends the `<disk>` element for `spec` to `parent` (a `<devices>` element, or a fragment) and returns it.
 * Throws `invalid_argument` on bad input before anything is appended.
 */
export function diskElement(parent: XMLBuilder, spec: DiskSpec): XMLBuilder {
  // Build on a detached fragment first, so that a refused spec leaves `parent` as it was.
  const disk = buildDisk(spec);
  return parent.import(disk).last();
}

function buildDisk(spec: DiskSpec): XMLBuilder {
  const kind = checkKind(spec);
  if (spec.target === undefined || spec.target === null) {
    throw invalidArgument("target is required (like {dev: 'vdb', bus: 'virtio'})", { field: "target" });
  }
  const bus = targetBus(spec.target);
  const driver = resolveDriver(spec);
  if (driver.iothread !== undefined && bus !== "virtio") {
    throw invalidArgument(`iothread needs a virtio disk; ${spec.target.dev} is on bus ${bus}`, {
      field: "iothread",
    });
  }
  const serial = spec.serial === undefined ? undefined : checkSerial("serial", spec.serial);
  const alias = spec.alias === undefined ? undefined : userAlias(checkText("alias", spec.alias));

  const disk = fragment().ele("disk", { type: DISK_TYPE[kind], device: "disk" });
  disk.ele(
    "driver",
    attrs({
      name: "qemu",
      type: driver.format,
      cache: driver.cache,
      io: driver.io,
      discard: driver.discard,
      iothread: driver.iothread,
    }),
  );
  appendSource(disk, spec);
  disk.ele("target", { dev: spec.target.dev, bus });
  if (spec.readonly) disk.ele("readonly");
  if (spec.shareable) disk.ele("shareable");
  if (serial !== undefined) disk.ele("serial").txt(serial);
  if (alias !== undefined) disk.ele("alias", { name: alias });
  return disk;
}

/** The `<disk>` element for `spec`, as a string (pretty-printed, no XML declaration). */
export function diskXml(spec: DiskSpec): string {
  return buildDisk(spec).end({ headless: true, prettyPrint: true, wellFormed: true });
}
