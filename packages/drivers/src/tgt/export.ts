import { isIP } from "node:net";
import { invalidArgument, isId } from "@stowage/core";

/**
 * What an iSCSI export is (desired state), the IQN Stowage derives from a volume id, and the checks every
 * export passes before anything is written.
 */

export interface IscsiInitiator {
  /** The initiator's iSCSI name, e.g. `iqn.2026-12.io.stowage:host-h2`. */
  initiatorIqn: string;
  /** Its IP address as the target sees it (IPv4 or IPv6). */
  address: string;
}

export interface IscsiExport {
  volumeId: string;
  backing: {
    /** file: a dir volume; block: a block device (an LVM LV); rbd: an RBD image through tgt-rbd. */
    type: "file" | "block" | "rbd";
    /** An absolute path for file and block; `pool/image` (or `pool/namespace/image`) for rbd. */
    path: string;
  };
  allowed: IscsiInitiator[];
  /** One CHAP account per export: the initiator must log in with it. */
  chap?: { username: string; secret: string };
}

/**
 * Every Stowage target is named `iqn.2026-12.io.stowage:<volume id>`: `iqn.` + the year and month the naming
 * authority was chosen + the reversed domain, then `:` and a string unique under it (RFC 3720 §3.2.6.3.1).
 * Volume ids are `vol-` + 32 lowercase hex digits, which is already in the allowed set (lowercase letters,
 * digits, `-`, `.`, `:`), so the IQN needs no escaping, and at 59 characters it is far below the 223-byte limit.
 * The exporter owns every target under this prefix and never touches any other.
 */
export const STOWAGE_IQN_PREFIX = "iqn.2026-12.io.stowage:";

export function iqnForVolume(volumeId: string): string {
  if (!isId(volumeId, "vol")) {
    throw invalidArgument(
      `volume id ${JSON.stringify(volumeId.slice(0, 80))} is not valid: expected vol- followed by 32 hex digits`,
      { field: "volumeId" },
    );
  }
  return `${STOWAGE_IQN_PREFIX}${volumeId}`;
}

export function isStowageIqn(iqn: string): boolean {
  return iqn.startsWith(STOWAGE_IQN_PREFIX);
}

/** The volume id of a Stowage target, or undefined for any other name (or a malformed one under the prefix). */
export function volumeIdFromIqn(iqn: string): string | undefined {
  if (!isStowageIqn(iqn)) return undefined;
  const id = iqn.slice(STOWAGE_IQN_PREFIX.length);
  return isId(id, "vol") ? id : undefined;
}

/** iqn.YYYY-MM.reversed.domain[:unique], lowercase (tgt compares names byte for byte), ≤ 223 bytes. */
const IQN =
  /^iqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[a-z0-9.:-]+)?$/;
const EUI = /^eui\.[0-9A-F]{16}$/;
const NAA = /^naa\.[0-9A-F]{16}([0-9A-F]{16})?$/;

export function isInitiatorName(name: string): boolean {
  return name.length <= 223 && (IQN.test(name) || EUI.test(name) || NAA.test(name));
}

/** CHAP user names: printable and without spaces (tgtadm prints them one a line). */
const CHAP_USER = /^[A-Za-z0-9._@:-]{1,64}$/;
/**
 * CHAP secrets: 12 characters at least (RFC 3720 §8.2.1 asks for 96 bits of randomness; some initiators refuse
 * fewer) and printable ASCII without spaces, so a secret survives any initiator's config syntax.
 */
const CHAP_SECRET = /^[\x21-\x7e]{12,255}$/;
const RBD_PATH = /^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+){1,2}$/;

function checkPath(e: IscsiExport): void {
  const { type, path } = e.backing;
  const where = { field: "backing.path", volumeId: e.volumeId };
  if (type === "file" || type === "block") {
    // tgtadm's show output is one fact per line: a control character would forge a line.
    // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused
    if (!path.startsWith("/") || /[\x00-\x1f\x7f]/.test(path) || path.length > 4096) {
      throw invalidArgument(
        `backing path ${JSON.stringify(path.slice(0, 200))} of ${e.volumeId} must be an absolute path without control characters`,
        where,
      );
    }
  } else if (type === "rbd") {
    if (!RBD_PATH.test(path)) {
      throw invalidArgument(
        `rbd backing ${JSON.stringify(path.slice(0, 200))} of ${e.volumeId} must be pool/image or pool/namespace/image`,
        where,
      );
    }
  } else {
    throw invalidArgument(
      `backing type ${JSON.stringify(type)} of ${e.volumeId} must be file, block or rbd`,
      {
        field: "backing.type",
        volumeId: e.volumeId,
      },
    );
  }
}

/**
 * Checks a whole desired state before anything is written: valid ids, paths, initiator names, addresses and
 * CHAP accounts; no volume twice; no CHAP user name shared by two exports (accounts are global in tgtd, so a
 * shared one would give each export the other's secret).
 */
export function validateExports(desired: readonly IscsiExport[]): void {
  const volumes = new Set<string>();
  const users = new Map<string, string>();
  for (const e of desired) {
    iqnForVolume(e.volumeId);
    if (volumes.has(e.volumeId)) {
      throw invalidArgument(`volume ${e.volumeId} is exported twice`, { volumeId: e.volumeId });
    }
    volumes.add(e.volumeId);
    checkPath(e);
    for (const a of e.allowed) {
      if (!isInitiatorName(a.initiatorIqn)) {
        throw invalidArgument(
          `initiator name ${JSON.stringify(a.initiatorIqn.slice(0, 240))} is not a valid lowercase iqn., eui. or naa. name`,
          { field: "allowed.initiatorIqn", volumeId: e.volumeId },
        );
      }
      if (isIP(a.address) === 0) {
        throw invalidArgument(
          `initiator address ${JSON.stringify(a.address.slice(0, 80))} is not an IP address`,
          {
            field: "allowed.address",
            volumeId: e.volumeId,
          },
        );
      }
    }
    if (e.chap) {
      if (!CHAP_USER.test(e.chap.username)) {
        throw invalidArgument(
          `CHAP user ${JSON.stringify(e.chap.username.slice(0, 80))} must be 1-64 of letters, digits and . _ @ : -`,
          { field: "chap.username", volumeId: e.volumeId },
        );
      }
      // Never echo the secret, not even in part.
      if (!CHAP_SECRET.test(e.chap.secret)) {
        throw invalidArgument(
          `the CHAP secret of ${e.volumeId} must be 12-255 printable ASCII characters, no spaces`,
          {
            field: "chap.secret",
            volumeId: e.volumeId,
          },
        );
      }
      const other = users.get(e.chap.username);
      if (other !== undefined) {
        throw invalidArgument(`CHAP user ${e.chap.username} is used by both ${other} and ${e.volumeId}`, {
          field: "chap.username",
          volumeId: e.volumeId,
        });
      }
      users.set(e.chap.username, e.volumeId);
    }
  }
}
