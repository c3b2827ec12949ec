import { formatCpuList, invalidArgument, parseCpuList } from "@stowage/core";
import { create, fragment } from "xmlbuilder2";
import type { XMLBuilder } from "xmlbuilder2/lib/interfaces.js";
import { type DiskSpec, diskElement } from "./disk.js";
import { checkIothreadId, checkSerial, checkTargetDev, checkText } from "./validate.js";

/** The XML namespace of Stowage's entry in a domain's `<metadata>` (a name, not a URL anything fetches). */
export const STOWAGE_XMLNS = "urn:stowage:libvirt:volumes:1";

/**
 * A CPU set as libvirt's cpuset attributes take it, checked and normalised ("3,0-2" -> "0-3"). Exclusions
 * ("^2"), which libvirt also reads, are refused: a placement's CPU set is a plain list.
 */
export function checkCpuset(cpuset: string): string {
  const cpus = parseCpuList(checkText("cpuset", cpuset));
  if (cpus.length === 0) throw invalidArgument("cpuset is empty", { field: "cpuset" });
  return formatCpuList(cpus);
}

/** Appends `<iothreadpin iothread='N' cpuset='...'/>` to `parent` (a `<cputune>` element) and returns it. */
export function iothreadPinElement(parent: XMLBuilder, iothread: number, cpuset: string): XMLBuilder {
  const id = checkIothreadId("iothread", iothread);
  const set = checkCpuset(cpuset);
  return parent.ele("iothreadpin", { iothread: String(id), cpuset: set });
}

/** `<iothreadpin iothread='N' cpuset='...'/>` as a string, for a domain's `<cputune>`. */
export function iothreadPinXml(iothread: number, cpuset: string): string {
  return iothreadPinElement(fragment(), iothread, cpuset).end({ headless: true, wellFormed: true });
}

/**
 * Appends Stowage's metadata entry to `parent` (a domain's `<metadata>`): one `<stowage:volume>` per disk
 * with its target, serial, the user's name and labels as attributes, escaped by the builder. This is where
 * a name goes that libvirt's `<alias>` cannot carry; libvirt keeps a domain's metadata as it is given.
 * Returns undefined (and appends nothing) when no disk has a name, a serial or labels.
 */
export function volumeMetadataElement(
  parent: XMLBuilder,
  disks: readonly DiskSpec[],
): XMLBuilder | undefined {
  const described = disks.filter(
    (d) => d.alias !== undefined || d.serial !== undefined || d.labels !== undefined,
  );
  if (described.length === 0) return undefined;
  const volumes = parent.ele(STOWAGE_XMLNS, "stowage:volumes");
  for (const d of described) {
    const attrs: Record<string, string> = { target: checkTargetDev("target.dev", d.target?.dev) };
    if (d.serial !== undefined) attrs.serial = checkSerial("serial", d.serial);
    if (d.alias !== undefined) attrs.name = checkText("alias", d.alias);
    const volume = volumes.ele(STOWAGE_XMLNS, "stowage:volume", attrs);
    for (const [key, value] of Object.entries(d.labels ?? {})) {
      volume.ele(STOWAGE_XMLNS, "stowage:label", {
        key: checkText("label key", key),
        value: checkText("label value", value),
      });
    }
  }
  return volumes;
}

export interface ValidationDomainOptions {
  /** How many iothreads the domain defines; defaults to the highest one a disk names (or none). */
  iothreads?: number;
  /** Pins every iothread to this CPU set (the placement's), with `<cputune><iothreadpin>`. */
  cpuset?: string;
  /** The domain's name; "stowage-validation" when omitted. */
  name?: string;
}

/**
 * A minimal whole `<domain>` with `disks` in its `<devices>`, for `virt-xml-validate FILE domain` (which
 * wants a whole domain) and for `stowctl volume xml --domain`. Refuses two disks on one target, two with one
 * alias, and a disk on an iothread the domain does not define.
 */
export function validationDomain(disks: readonly DiskSpec[], options: ValidationDomainOptions = {}): string {
  const highest = Math.max(0, ...disks.map((d) => d.iothread ?? 0));
  const iothreads = options.iothreads ?? highest;
  if (!Number.isInteger(iothreads) || iothreads < 0) {
    throw invalidArgument(`iothreads ${JSON.stringify(iothreads)} must be an integer >= 0`, {
      field: "iothreads",
    });
  }
  if (highest > iothreads) {
    throw invalidArgument(`a disk uses iothread ${highest} but the domain defines ${iothreads}`, {
      field: "iothreads",
    });
  }
  if (options.cpuset !== undefined && iothreads === 0) {
    throw invalidArgument("cpuset pins iothreads, and the domain has none", { field: "cpuset" });
  }
  // Each disk is checked on its own first (a detached fragment), so the checks below see valid specs.
  const checked = fragment();
  for (const d of disks) diskElement(checked, d);
  const targets = new Set<string>();
  const aliases = new Set<string>();
  for (const d of disks) {
    if (targets.has(d.target.dev)) {
      throw invalidArgument(`two disks on target ${d.target.dev}`, { field: "target.dev" });
    }
    targets.add(d.target.dev);
    if (d.alias !== undefined) {
      if (aliases.has(d.alias))
        throw invalidArgument(`two disks named ${JSON.stringify(d.alias)}`, { field: "alias" });
      aliases.add(d.alias);
    }
  }
  const name = checkText("name", options.name ?? "stowage-validation");
  if (!/^[A-Za-z0-9_.+-]+$/.test(name)) {
    throw invalidArgument(
      `domain name ${JSON.stringify(name)} is not valid: use A-Z, a-z, 0-9, '_', '.', '+', '-'`,
      {
        field: "name",
      },
    );
  }

  const domain = create().ele("domain", { type: "kvm" });
  domain.ele("name").txt(name);
  const metadata = fragment().ele("metadata");
  if (volumeMetadataElement(metadata, disks) !== undefined) domain.import(metadata);
  domain.ele("memory", { unit: "MiB" }).txt("256");
  domain.ele("vcpu").txt("1");
  if (iothreads > 0) domain.ele("iothreads").txt(String(iothreads));
  if (options.cpuset !== undefined) {
    const cputune = domain.ele("cputune");
    for (let id = 1; id <= iothreads; id++) iothreadPinElement(cputune, id, options.cpuset);
  }
  domain.ele("os").ele("type", { arch: "x86_64", machine: "q35" }).txt("hvm");
  const devices = domain.ele("devices");
  if (disks.some((d) => d.target.dev.startsWith("sd") && d.target.bus !== "sata")) {
    devices.ele("controller", { type: "scsi", index: "0", model: "virtio-scsi" });
  }
  for (const d of disks) diskElement(devices, d);
  return domain.end({ prettyPrint: true, wellFormed: true });
}
