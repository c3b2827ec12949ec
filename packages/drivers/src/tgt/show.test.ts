import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ToolOutputError } from "../runner.js";
import { parseTgtAccounts, parseTgtTargets } from "./show.js";

const golden = (name: string) => readFileSync(join(import.meta.dirname, "..", "testdata", name), "utf8");

describe("parseTgtTargets (tgt 1.0.85 output)", () => {
  it("reads targets, LUNs, sessions, accounts and both kinds of ACL entry", () => {
    const targets = parseTgtTargets(golden("tgtadm-show-two-targets.txt"));
    expect(targets).toEqual([
      {
        tid: 1,
        iqn: "iqn.2026-12.io.stowage:vol-a",
        luns: [
          { lun: 0, type: "controller", backingStoreType: "null", backingStorePath: "None" },
          { lun: 1, type: "disk", backingStoreType: "rdwr", backingStorePath: "/tmp/tgtexp/a.img" },
        ],
        accounts: ["vol-a"],
        aclAddresses: ["127.0.0.1"],
        aclNames: ["iqn.2026-12.io.stowage:host-b"],
        sessions: [{ nexus: 11, initiator: "iqn.2026-12.io.stowage:host-b", addresses: ["127.0.0.1"] }],
      },
      {
        tid: 4,
        iqn: "iqn.2024-01.local.test:foreign",
        luns: [
          { lun: 0, type: "controller", backingStoreType: "null", backingStorePath: "None" },
          { lun: 1, type: "disk", backingStoreType: "rdwr", backingStorePath: "/tmp/tgtexp/b.img" },
        ],
        accounts: ["someone-else"],
        aclAddresses: ["ALL"],
        aclNames: [],
        sessions: [],
      },
    ]);
  });

  it("reads no targets from an empty output", () => {
    expect(parseTgtTargets("")).toEqual([]);
  });

  it("reads an rbd backing store and IPv6 and CIDR addresses (hand-written in tgt's layout)", () => {
    const text = [
      "Target 2: iqn.2026-12.io.stowage:vol-0123456789abcdef0123456789abcdef",
      "    System information:",
      "        Driver: iscsi",
      "        State: ready",
      "    I_T nexus information:",
      "    LUN information:",
      "        LUN: 1",
      "            Type: disk",
      "            Backing store type: rbd",
      "            Backing store path: rbd/vol-x",
      "            Backing store flags: ",
      "    Account information:",
      "    ACL information:",
      "        fd00::12",
      "        10.0.0.0/8",
      "        eui.0123456789ABCDEF",
      "",
    ].join("\n");
    const [t] = parseTgtTargets(text);
    expect(t!.luns).toEqual([
      { lun: 1, type: "disk", backingStoreType: "rbd", backingStorePath: "rbd/vol-x" },
    ]);
    expect(t!.aclAddresses).toEqual(["fd00::12", "10.0.0.0/8"]);
    expect(t!.aclNames).toEqual(["eui.0123456789ABCDEF"]);
  });

  it("refuses output it does not understand instead of guessing", () => {
    expect(() => parseTgtTargets("hello\n")).toThrow(ToolOutputError);
    expect(() => parseTgtTargets("Target 1: iqn.x:y\n    Something new:\n")).toThrow(/unknown section/);
  });
});

describe("parseTgtAccounts", () => {
  it("reads the account list", () => {
    expect(parseTgtAccounts(golden("tgtadm-account-show.txt"))).toEqual(["someone-else", "vol-a"]);
    expect(parseTgtAccounts("Account list:\n")).toEqual([]);
    expect(parseTgtAccounts("")).toEqual([]);
  });

  it("refuses anything else", () => {
    expect(() => parseTgtAccounts("Accounts:\n  x\n")).toThrow(ToolOutputError);
  });
});
