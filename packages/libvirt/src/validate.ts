import { isIP } from "node:net";
import { invalidArgument } from "@stowage/core";

// Checks on what goes into a <disk> element. Each refuses early, with the field in the message, what libvirt
// (domaincommon.rng in libvirt-clients 9.0) or qemu would refuse later with a less helpful one, or would
// accept and then do something else than asked (an XML attribute's newline comes back as a space).

// C0 controls and DEL: XML 1.0 cannot carry most of them, and attribute-value normalisation turns tab, CR and
// LF into spaces on the way back, so a value with one would not re-parse to itself.
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it looks for
const CONTROL = /[\u0000-\u001f\u007f]/;
// Lone surrogates and the two non-characters XML 1.0 excludes.
const NOT_XML = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]|[\uFFFE\uFFFF]/;

/** Refuses control characters, lone UTF-16 surrogates and U+FFFE/U+FFFF (not representable in XML). */
export function checkText(what: string, value: string): string {
  if (typeof value !== "string") throw invalidArgument(`${what} must be a string`, { field: what });
  if (CONTROL.test(value)) {
    throw invalidArgument(
      `${what} ${JSON.stringify(value)} contains a control character (tab, newline, ...)`,
      {
        field: what,
      },
    );
  }
  if (NOT_XML.test(value)) {
    throw invalidArgument(`${what} ${JSON.stringify(value)} has a character XML cannot carry`, {
      field: what,
    });
  }
  return value;
}

/** An absolute path (libvirt's absFilePath: "/" and at least one more character). */
export function checkAbsolutePath(what: string, value: string): string {
  checkText(what, value);
  if (!value.startsWith("/") || value.length < 2) {
    throw invalidArgument(`${what} ${JSON.stringify(value)} must be an absolute path`, { field: what });
  }
  if (value.length > 4095) throw invalidArgument(`${what} is longer than 4095 characters`, { field: what });
  return value;
}

/** A path relative to a directory: not empty, not absolute, no "." or ".." component. */
export function checkRelativePath(what: string, value: string): string {
  checkText(what, value);
  if (value === "" || value.startsWith("/")) {
    throw invalidArgument(`${what} ${JSON.stringify(value)} must be a non-empty relative path`, {
      field: what,
    });
  }
  if (value.split("/").some((c) => c === "" || c === "." || c === "..")) {
    throw invalidArgument(`${what} ${JSON.stringify(value)} must not contain "", "." or ".." components`, {
      field: what,
    });
  }
  return value;
}

/** A TCP port: an integer in 1-65535. */
export function checkPort(what: string, value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > 65535) {
    throw invalidArgument(
      `${what} ${JSON.stringify(value)} is out of range: a port is an integer in 1-65535`,
      {
        field: what,
      },
    );
  }
  return value;
}

const DNS_LABEL = /^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/;

/** A host name (RFC 1123 labels) or an IPv4/IPv6 address, as libvirt's `<host name>` takes it. */
export function checkHost(what: string, value: string): string {
  checkText(what, value);
  // An IPv6 zone ("fe80::1%eth0") is refused: libvirt's ipAddr pattern has no place for it.
  if (isIP(value) !== 0 && !value.includes("%")) return value;
  const name = value.endsWith(".") ? value.slice(0, -1) : value;
  if (name === "" || name.length > 253 || !name.split(".").every((l) => DNS_LABEL.test(l))) {
    throw invalidArgument(`${what} ${JSON.stringify(value)} is not a host name or an IP address`, {
      field: what,
    });
  }
  return value;
}

// RFC 3720 §3.2.6.3.1: "iqn." + year-month (yyyy-mm) + "." + a reversed domain name + optionally ":" and a
// string of the naming authority's choice. RFC 3722's stringprep leaves names lowercase; the characters kept
// here are those RFC 3720 recommends (letters, digits, '-', '.', ':'). At most 223 bytes.
const IQN =
  /^iqn\.[0-9]{4}-(?:0[1-9]|1[0-2])\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[a-z0-9.:-]+)?$/;

/** An iSCSI qualified name, `iqn.YYYY-MM.reverse.domain[:identifier]` (RFC 3720). */
export function checkIqn(what: string, value: string): string {
  checkText(what, value);
  if (value.length > 223 || !IQN.test(value)) {
    throw invalidArgument(
      `${what} ${JSON.stringify(value)} is not an iSCSI qualified name: use iqn.YYYY-MM.reverse.domain[:identifier] (RFC 3720), in lowercase, at most 223 characters`,
      { field: what },
    );
  }
  return value;
}

/** A LUN in SAM's flat addressing space, 0-16383. */
export function checkLun(what: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 16383) {
    throw invalidArgument(
      `${what} ${JSON.stringify(value)} is out of range: a LUN is an integer in 0-16383`,
      {
        field: what,
      },
    );
  }
  return value;
}

const CEPH_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

/**
 * A Ceph pool or image name. libvirt joins them as `pool/image` and reads `@` as a snapshot, so neither may
 * appear; the kept set is also what `rbd` itself prints without quoting.
 */
export function checkCephName(what: string, value: string): string {
  checkText(what, value);
  if (value === "") throw invalidArgument(`${what} is empty`, { field: what });
  if (value.length > 255 || !CEPH_NAME.test(value)) {
    throw invalidArgument(
      `${what} ${JSON.stringify(value)} is not valid: use up to 255 characters of A-Z, a-z, 0-9, '.', '_' and '-' (no '/' or '@')`,
      { field: what },
    );
  }
  return value;
}

// libvirt's genericName, which `<auth username>` and `<identity user|group>` must match.
const GENERIC_NAME = /^[a-zA-Z0-9_+-]+$/;

/** A user name as libvirt's `genericName` allows: A-Z, a-z, 0-9, '_', '+' and '-'. */
export function checkGenericName(what: string, value: string): string {
  checkText(what, value);
  if (!GENERIC_NAME.test(value)) {
    const hint = value.startsWith("client.") ? " (a Ceph user goes in without its 'client.' prefix)" : "";
    throw invalidArgument(
      `${what} ${JSON.stringify(value)} is not valid: use A-Z, a-z, 0-9, '_', '+' and '-'${hint}`,
      { field: what },
    );
  }
  return value;
}

/** A libvirt secret usage name (objectName: anything but '/' and newline; not empty). */
export function checkSecretUsage(what: string, value: string): string {
  checkText(what, value);
  if (value === "" || value.includes("/")) {
    throw invalidArgument(
      `${what} ${JSON.stringify(value)} must be a non-empty secret usage name without '/'`,
      {
        field: what,
      },
    );
  }
  return value;
}

/** A disk serial as libvirt's diskSerial allows: A-Z, a-z, 0-9, '_', '.', '+', '-' and space. */
export function checkSerial(what: string, value: string): string {
  checkText(what, value);
  if (!/^[A-Za-z0-9_.+\- ]+$/.test(value)) {
    throw invalidArgument(
      `${what} ${JSON.stringify(value)} is not valid: use A-Z, a-z, 0-9, '_', '.', '+', '-' and space`,
      { field: what },
    );
  }
  return value;
}

/** A target device name, `vd[a-z]+` (virtio-blk) or `sd[a-z]+` (SCSI or SATA). */
export function checkTargetDev(what: string, value: string): string {
  checkText(what, value);
  if (!/^(?:vd|sd)[a-z]+$/.test(value)) {
    throw invalidArgument(
      `${what} ${JSON.stringify(value)} is not valid: use vd[a-z]+ or sd[a-z]+ (like vdb)`,
      {
        field: what,
      },
    );
  }
  return value;
}

/** An iothread id: libvirt numbers them from 1. */
export function checkIothreadId(what: string, value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > 0xffffffff) {
    throw invalidArgument(
      `${what} ${JSON.stringify(value)} is not valid: an iothread id is an integer >= 1`,
      {
        field: what,
      },
    );
  }
  return value;
}
