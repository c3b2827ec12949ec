import { ToolOutputError } from "../runner.js";

/**
 * Parsers for `tgtadm --lld iscsi --mode target --op show` and `--mode account --op show` (tgt 1.0.85, checked
 * against captured output in testdata/tgtadm-*.txt). The output is an indented text tree, one fact per line:
 *
 *   Target 1: iqn.2026-12.io.stowage:vol-…
 *       I_T nexus information:            (one "I_T nexus: N" per session: Initiator, Connection, IP Address)
 *       LUN information:                  (LUN 0 is tgt's own controller; "Backing store type/path" per LUN)
 *       Account information:              (the account names bound to the target, one a line)
 *       ACL information:                  (initiator addresses AND initiator names, mixed, one a line)
 *
 * tgt prints both kinds of ACL under one heading; an entry is a name when it has the form of an iSCSI name
 * (`iqn.`, `eui.`, `naa.`), otherwise an address (IPv4, IPv6, a CIDR or `ALL`).
 */

export interface TgtLun {
  lun: number;
  /** "controller" for LUN 0, "disk" for a backing store. */
  type: string;
  /** "rdwr", "aio", "rbd", "null" (LUN 0), ... */
  backingStoreType: string;
  /** "None" for LUN 0; a file or device path, or `pool/image` for rbd. */
  backingStorePath: string;
}

export interface TgtSession {
  nexus: number;
  initiator: string;
  addresses: string[];
}

export interface TgtTarget {
  tid: number;
  iqn: string;
  luns: TgtLun[];
  accounts: string[];
  aclAddresses: string[];
  aclNames: string[];
  sessions: TgtSession[];
}

const ISCSI_NAME = /^(iqn|eui|naa)\./i;

type Section = "system" | "nexus" | "lun" | "account" | "acl" | undefined;

const SECTIONS: Record<string, Section> = {
  "System information:": "system",
  "I_T nexus information:": "nexus",
  "LUN information:": "lun",
  "Account information:": "account",
  "ACL information:": "acl",
};

const ARGV = ["--lld", "iscsi", "--mode", "target", "--op", "show"];

function bad(reason: string, text: string): never {
  throw new ToolOutputError("tgtadm", ARGV, reason, text);
}

/** Parses `tgtadm --mode target --op show`. An empty output is no targets. */
export function parseTgtTargets(text: string): TgtTarget[] {
  const targets: TgtTarget[] = [];
  let target: TgtTarget | undefined;
  let section: Section;
  let lun: Partial<TgtLun> | undefined;
  let session: TgtSession | undefined;

  const flushLun = () => {
    if (!target || !lun) return;
    if (lun.lun === undefined) bad("a LUN without a number", text);
    target.luns.push({
      lun: lun.lun,
      type: lun.type ?? "",
      backingStoreType: lun.backingStoreType ?? "",
      backingStorePath: lun.backingStorePath ?? "",
    });
    lun = undefined;
  };

  for (const raw of text.split("\n")) {
    const line = raw.trimEnd();
    if (line.trim() === "") continue;
    const indent = line.length - line.trimStart().length;
    const body = line.trim();

    const head = /^Target (\d+): (.+)$/.exec(line);
    if (head) {
      flushLun();
      target = {
        tid: Number(head[1]),
        iqn: head[2]!,
        luns: [],
        accounts: [],
        aclAddresses: [],
        aclNames: [],
        sessions: [],
      };
      targets.push(target);
      section = undefined;
      session = undefined;
      continue;
    }
    if (!target) bad(`a line before the first "Target N:" line: ${JSON.stringify(body)}`, text);
    if (indent === 4) {
      flushLun();
      section = SECTIONS[body];
      if (section === undefined) bad(`an unknown section ${JSON.stringify(body)}`, text);
      session = undefined;
      continue;
    }
    switch (section) {
      case "system":
        break;
      case "nexus": {
        const n = /^I_T nexus: (\d+)$/.exec(body);
        if (n) {
          session = { nexus: Number(n[1]), initiator: "", addresses: [] };
          target.sessions.push(session);
          break;
        }
        const init = /^Initiator: (\S+)/.exec(body);
        if (init && session) session.initiator = init[1]!;
        const ip = /^IP Address: (\S+)$/.exec(body);
        if (ip && session) session.addresses.push(ip[1]!);
        break;
      }
      case "lun": {
        const n = /^LUN: (\d+)$/.exec(body);
        if (n) {
          flushLun();
          lun = { lun: Number(n[1]) };
          break;
        }
        if (!lun) bad(`a LUN field before "LUN: N": ${JSON.stringify(body)}`, text);
        const kv = /^([^:]+):\s?(.*)$/.exec(body);
        if (!kv) break;
        const [, key, value] = kv;
        if (key === "Type") lun.type = value!;
        else if (key === "Backing store type") lun.backingStoreType = value!;
        else if (key === "Backing store path") lun.backingStorePath = value!;
        break;
      }
      case "account":
        target.accounts.push(body);
        break;
      case "acl":
        if (ISCSI_NAME.test(body)) target.aclNames.push(body);
        else target.aclAddresses.push(body);
        break;
      default:
        bad(`a line outside any section: ${JSON.stringify(body)}`, text);
    }
  }
  flushLun();
  return targets;
}

/** Parses `tgtadm --mode account --op show`: "Account list:" then one name a line. */
export function parseTgtAccounts(text: string): string[] {
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  if (lines.length === 0) return [];
  if (lines[0]!.trim() !== "Account list:") {
    throw new ToolOutputError(
      "tgtadm",
      ["--lld", "iscsi", "--mode", "account", "--op", "show"],
      'expected "Account list:"',
      text,
    );
  }
  return lines.slice(1).map((l) => l.trim());
}
