import { describe, expect, it } from "vitest";
import { type IscsiExport, iqnForVolume, validateExports, volumeIdFromIqn } from "./export.js";
import { describeStep, planTgt, type TgtState, type TgtStep, tgtadmArgv } from "./plan.js";
import type { TgtTarget } from "./show.js";

const V1 = "vol-00000000000000000000000000000001";
const V2 = "vol-00000000000000000000000000000002";
const H2 = { initiatorIqn: "iqn.2026-12.io.stowage:host-h2", address: "203.0.113.12" };
const H3 = { initiatorIqn: "iqn.2026-12.io.stowage:host-h3", address: "203.0.113.13" };

const exp = (volumeId: string, over: Partial<IscsiExport> = {}): IscsiExport => ({
  volumeId,
  backing: { type: "file", path: `/pool/${volumeId}.raw` },
  allowed: [H2],
  ...over,
});

/** The target tgtd would show after the exporter made `e` at `tid`. */
const shown = (tid: number, e: IscsiExport): TgtTarget => ({
  tid,
  iqn: iqnForVolume(e.volumeId),
  luns: [
    { lun: 0, type: "controller", backingStoreType: "null", backingStorePath: "None" },
    {
      lun: 1,
      type: "disk",
      backingStoreType: e.backing.type === "rbd" ? "rbd" : "rdwr",
      backingStorePath: e.backing.path,
    },
  ],
  accounts: e.chap ? [e.chap.username] : [],
  aclAddresses: e.allowed.map((a) => a.address),
  aclNames: e.allowed.map((a) => a.initiatorIqn),
  sessions: [],
});

const foreign: TgtTarget = {
  tid: 1,
  iqn: "iqn.2024-01.local.test:other",
  luns: [],
  accounts: ["theirs"],
  aclAddresses: ["ALL"],
  aclNames: [],
  sessions: [],
};

const empty: TgtState = { targets: [], accounts: [] };
const ops = (s: { steps: TgtStep[] }) => s.steps.map(describeStep);

describe("the Stowage IQN", () => {
  it("is derived from the volume id and read back", () => {
    expect(iqnForVolume(V1)).toBe(`iqn.2026-12.io.stowage:${V1}`);
    expect(volumeIdFromIqn(iqnForVolume(V1))).toBe(V1);
    expect(volumeIdFromIqn("iqn.2024-01.local.test:vol1")).toBeUndefined();
    expect(volumeIdFromIqn("iqn.2026-12.io.stowage:vol-a")).toBeUndefined();
  });

  it("refuses anything that is not a volume id", () => {
    expect(() => iqnForVolume("vol-A")).toThrow(/not valid/);
    expect(() => iqnForVolume("../x")).toThrow(/not valid/);
  });
});

describe("validateExports", () => {
  it("accepts a good desired state", () => {
    expect(() =>
      validateExports([exp(V1), exp(V2, { chap: { username: "u2", secret: "0123456789abcdef" } })]),
    ).not.toThrow();
  });

  it.each([
    ["a volume twice", [exp(V1), exp(V1)], /exported twice/],
    ["a relative path", [exp(V1, { backing: { type: "file", path: "x.raw" } })], /absolute/],
    ["a newline in a path", [exp(V1, { backing: { type: "file", path: "/a\nTarget 9: x" } })], /control/],
    ["a bad rbd path", [exp(V1, { backing: { type: "rbd", path: "/dev/x" } })], /pool\/image/],
    [
      "an uppercase initiator",
      [exp(V1, { allowed: [{ ...H2, initiatorIqn: "iqn.2026-12.IO.x:h" }] })],
      /initiator/,
    ],
    ["a host name as address", [exp(V1, { allowed: [{ ...H2, address: "h2.example" }] })], /IP address/],
    ["a short secret", [exp(V1, { chap: { username: "u", secret: "short" } })], /12-255/],
    [
      "a shared CHAP user",
      [
        exp(V1, { chap: { username: "u", secret: "0123456789abcdef" } }),
        exp(V2, { chap: { username: "u", secret: "0123456789abcdeg" } }),
      ],
      /used by both/,
    ],
  ])("refuses %s", (_what, desired, message) => {
    expect(() => validateExports(desired)).toThrow(message);
  });

  it("never puts the secret in its error", () => {
    const secret = "with space 0123456789";
    expect(() => validateExports([exp(V1, { chap: { username: "u", secret } })])).toThrow(
      expect.objectContaining({ message: expect.not.stringContaining(secret) }),
    );
  });
});

describe("planTgt", () => {
  it("creates target, LUN 1, account binding, then the ACL (by address and by name) on an empty tgtd", () => {
    const e = exp(V1, { chap: { username: "u1", secret: "0123456789abcdef" } });
    const plan = planTgt(empty, [e]);
    expect(ops(plan)).toEqual([
      "new-account u1",
      `new-target tid 1 ${iqnForVolume(V1)}`,
      `new-lun tid 1 lun 1 rdwr /pool/${V1}.raw`,
      "bind-account tid 1 u1",
      "bind-address tid 1 203.0.113.12",
      "bind-name tid 1 iqn.2026-12.io.stowage:host-h2",
    ]);
    expect(plan.exports).toEqual([{ volumeId: V1, iqn: iqnForVolume(V1), tid: 1 }]);
  });

  it("plans nothing when tgtd already has the desired state", () => {
    const e1 = exp(V1, { chap: { username: "u1", secret: "0123456789abcdef" } });
    const e2 = exp(V2, { backing: { type: "rbd", path: "rbd/img" }, allowed: [H2, H3] });
    const state: TgtState = { targets: [foreign, shown(2, e1), shown(3, e2)], accounts: ["theirs", "u1"] };
    const plan = planTgt(state, [e2, e1], { accountIsCurrent: () => true });
    expect(plan.steps).toEqual([]);
    expect(plan.exports.map((x) => x.tid)).toEqual([2, 3]);
  });

  it("gives new targets the lowest free tids, in volume id order, keeping existing tids", () => {
    const e1 = exp(V1);
    const state: TgtState = { targets: [foreign, shown(3, e1)], accounts: ["theirs"] };
    const V0 = "vol-00000000000000000000000000000000";
    const plan = planTgt(state, [exp(V2), e1, exp(V0)]);
    expect(plan.exports).toEqual([
      { volumeId: V0, iqn: iqnForVolume(V0), tid: 2 },
      { volumeId: V1, iqn: iqnForVolume(V1), tid: 3 },
      { volumeId: V2, iqn: iqnForVolume(V2), tid: 4 },
    ]);
  });

  it("deletes Stowage targets nobody wants (even malformed ones), never foreign ones, and reuses their tid", () => {
    const stray: TgtTarget = { ...shown(2, exp(V1)), iqn: "iqn.2026-12.io.stowage:vol-a" };
    const state: TgtState = { targets: [foreign, stray, shown(3, exp(V2))], accounts: ["theirs"] };
    const plan = planTgt(state, [exp(V1)]);
    expect(ops(plan)).toEqual([
      "delete-target tid 2 iqn.2026-12.io.stowage:vol-a",
      `delete-target tid 3 ${iqnForVolume(V2)}`,
      `new-target tid 2 ${iqnForVolume(V1)}`,
      `new-lun tid 2 lun 1 rdwr /pool/${V1}.raw`,
      "bind-address tid 2 203.0.113.12",
      "bind-name tid 2 iqn.2026-12.io.stowage:host-h2",
    ]);
    expect(planTgt(state, []).steps.every((s) => s.op === "delete-target" && s.tid !== 1)).toBe(true);
  });

  it("diffs the ACL: removals first, then additions", () => {
    const state: TgtState = { targets: [shown(1, exp(V1, { allowed: [H2] }))], accounts: [] };
    expect(ops(planTgt(state, [exp(V1, { allowed: [H3] })]))).toEqual([
      "unbind-address tid 1 203.0.113.12",
      "unbind-name tid 1 iqn.2026-12.io.stowage:host-h2",
      "bind-address tid 1 203.0.113.13",
      "bind-name tid 1 iqn.2026-12.io.stowage:host-h3",
    ]);
  });

  it("replaces a LUN 1 on another backing store and drops extra LUNs", () => {
    const t = shown(1, exp(V1));
    t.luns.push({ lun: 2, type: "disk", backingStoreType: "rdwr", backingStorePath: "/x" });
    const plan = planTgt({ targets: [t], accounts: [] }, [
      exp(V1, { backing: { type: "block", path: "/dev/loop3" } }),
    ]);
    expect(ops(plan)).toEqual([
      "delete-lun tid 1 lun 2",
      "delete-lun tid 1 lun 1",
      "new-lun tid 1 lun 1 rdwr /dev/loop3",
    ]);
  });

  it("re-creates an account whose secret is not known inside a closed ACL, so the target is never open without CHAP", () => {
    const e = exp(V1, { chap: { username: "u1", secret: "0123456789abcdef" } });
    const plan = planTgt({ targets: [shown(1, e)], accounts: ["u1"] }, [e]);
    expect(ops(plan)).toEqual([
      "unbind-address tid 1 203.0.113.12",
      "unbind-name tid 1 iqn.2026-12.io.stowage:host-h2",
      "delete-account u1",
      "new-account u1",
      "bind-account tid 1 u1",
      "bind-address tid 1 203.0.113.12",
      "bind-name tid 1 iqn.2026-12.io.stowage:host-h2",
    ]);
  });

  it("removes CHAP no longer wanted: unbinds and deletes the account it owned", () => {
    const withChap = exp(V1, { chap: { username: "u1", secret: "0123456789abcdef" } });
    const state: TgtState = { targets: [shown(1, withChap)], accounts: ["u1"] };
    expect(ops(planTgt(state, [exp(V1)]))).toEqual(["delete-account u1"]);
    // An account this exporter made and nothing is bound to any more goes too; one it does not know stays.
    const loose: TgtState = { targets: [], accounts: ["u9", "someone"] };
    expect(ops(planTgt(loose, [], { ownedAccounts: new Set(["u9"]) }))).toEqual(["delete-account u9"]);
  });

  it("keeps an account a foreign target uses, only unbinding it from ours, and refuses to take it over", () => {
    const ours = { ...shown(2, exp(V1)), accounts: ["theirs"] };
    const state: TgtState = { targets: [foreign, ours], accounts: ["theirs"] };
    expect(ops(planTgt(state, [exp(V1)]))).toEqual(["unbind-account tid 2 theirs"]);
    expect(() =>
      planTgt(state, [exp(V1, { chap: { username: "theirs", secret: "0123456789abcdef" } })]),
    ).toThrow(/does not manage/);
  });
});

describe("tgtadmArgv", () => {
  it("builds argv on the control port and marks the password as a secret", () => {
    expect(tgtadmArgv(7, { op: "new-account", user: "u1", secret: "0123456789abcdef" })).toEqual({
      argv: [
        "-C",
        "7",
        "--lld",
        "iscsi",
        "--mode",
        "account",
        "--op",
        "new",
        "--user",
        "u1",
        "--password",
        "0123456789abcdef",
      ],
      secretArgs: ["0123456789abcdef"],
    });
    expect(tgtadmArgv(7, { op: "delete-target", tid: 3, iqn: "x" }).argv).toEqual([
      "-C",
      "7",
      "--lld",
      "iscsi",
      "--mode",
      "target",
      "--op",
      "delete",
      "--force",
      "--tid",
      "3",
    ]);
    expect(
      tgtadmArgv(7, { op: "new-lun", tid: 3, lun: 1, bstype: "rbd", path: "rbd/img" }, "conf=/c;id=stowage")
        .argv,
    ).toEqual([
      "-C",
      "7",
      "--lld",
      "iscsi",
      "--mode",
      "logicalunit",
      "--op",
      "new",
      "--tid",
      "3",
      "--lun",
      "1",
      "--backing-store",
      "rbd/img",
      "--bstype",
      "rbd",
      "--bsopts",
      "conf=/c;id=stowage",
    ]);
  });

  it("never shows the secret when describing a step", () => {
    expect(describeStep({ op: "new-account", user: "u1", secret: "0123456789abcdef" })).toBe(
      "new-account u1",
    );
  });
});
