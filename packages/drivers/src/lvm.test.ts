import { readFileSync } from "node:fs";
import { join } from "node:path";
import { StowageError } from "@stowage/core";
import { createLoopVg, type LoopVg } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  assertLvmTag,
  LVS_FIELDS,
  lvchangeActivateArgv,
  lvchangeTagsArgv,
  lvconvertMergeArgv,
  lvcreateArgv,
  lvcreateSnapshotArgv,
  lvremoveArgv,
  lvrenameArgv,
  lvresizeArgv,
  lvsArgv,
  PVS_FIELDS,
  parseLvmTime,
  parseLvs,
  parsePvs,
  parseVgs,
  pvsArgv,
  tagValue,
  usedFromPercent,
  VGS_FIELDS,
  vgsArgv,
} from "./lvm.js";
import { ToolOutputError } from "./runner.js";

// Goldens: lvm-lvs-metadata-only.json from this host (no device-mapper, activation off); the others from
// packages/testkit/vm/capture-lvm-goldens.sh in the kernel VM (thin pool, thin and classic snapshots). Their
// values are LVM's; the layout is the repo formatter's (LVM indents oddly, one row a line). LVM's own layout
// is parsed by the tests against real LVM at the end of this file.
const golden = (name: string) => readFileSync(join(import.meta.dirname, "testdata", name), "utf8");
const CFG = "activation{udev_sync=0 udev_rules=0} devices{obtain_device_list_from_udev=0}";
const V1 = "vol-0190d2c4a3b87c3e9e2a41f7c05d6b11";
const V2 = "vol-0190d2c4a3b87c3e9e2a41f7c05d6b22";
const V3 = "vol-0190d2c4a3b87c3e9e2a41f7c05d6b33";
const S1 = "snap-0190d2c4a3b87c3e9e2a41f7c05d6b44";
const OP = "op-0190d2c4a3b87c3e9e2a41f7c05d6b55";
const MiB = 1024n * 1024n;

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return e instanceof StowageError ? e.code : `not a StowageError: ${String(e)}`;
  }
  return "no error";
}

describe("lvm argv builders", () => {
  it("lvcreate of a thick LV: name, tags, size in bytes, VG last", () => {
    expect(
      lvcreateArgv({
        vg: "vg0",
        name: "stowage-tmp-x",
        sizeBytes: 64n * MiB,
        tags: ["stowage.vol=x", "stowage.op=y"],
      }),
    ).toEqual([
      "-q",
      "-y",
      "-n",
      "stowage-tmp-x",
      "--addtag",
      "stowage.vol=x",
      "--addtag",
      "stowage.op=y",
      "-L",
      "67108864b",
      "vg0",
    ]);
  });

  it("lvcreate of a thin LV puts its virtual size in the thin pool, with the pool's --config first", () => {
    expect(
      lvcreateArgv({ config: CFG, vg: "vg0", thinPool: "pool0", name: "lv1", sizeBytes: 4n * MiB, tags: [] }),
    ).toEqual(["--config", CFG, "-q", "-y", "-n", "lv1", "-V", "4194304b", "--thinpool", "vg0/pool0"]);
  });

  it("snapshots: thin ones skip activation unless they are clones, classic ones get 100%ORIGIN", () => {
    const base = { vg: "vg0", origin: "stowage-a", name: "stowage-b", tags: ["stowage.snap=b"] };
    expect(lvcreateSnapshotArgv({ ...base, type: "thin" })).toEqual([
      "-q",
      "-y",
      "-s",
      "-ky",
      "-n",
      "stowage-b",
      "--addtag",
      "stowage.snap=b",
      "vg0/stowage-a",
    ]);
    expect(lvcreateSnapshotArgv({ ...base, type: "thin", skipActivation: false })).toContain("-kn");
    expect(lvcreateSnapshotArgv({ ...base, type: "cow" })).toEqual([
      "-q",
      "-y",
      "-s",
      "-l",
      "100%ORIGIN",
      "-n",
      "stowage-b",
      "--addtag",
      "stowage.snap=b",
      "vg0/stowage-a",
    ]);
  });

  it("rename, remove, tags, activation, resize and merge", () => {
    expect(lvrenameArgv("vg0", "a", "b")).toEqual(["-q", "vg0", "a", "b"]);
    expect(lvremoveArgv("vg0", "a", { config: CFG })).toEqual(["--config", CFG, "-q", "-y", "vg0/a"]);
    expect(lvchangeTagsArgv("vg0", "a", { add: ["k=2"], del: ["k=1"] })).toEqual([
      "-q",
      "--deltag",
      "k=1",
      "--addtag",
      "k=2",
      "vg0/a",
    ]);
    expect(lvchangeActivateArgv("vg0", "a", true)).toEqual(["-q", "-ay", "-K", "vg0/a"]);
    expect(lvchangeActivateArgv("vg0", "a", false)).toEqual(["-q", "-an", "vg0/a"]);
    expect(lvresizeArgv("vg0", "a", 96n * MiB, false)).toEqual({
      tool: "lvextend",
      argv: ["-q", "-y", "-L", "100663296b", "vg0/a"],
    });
    expect(lvresizeArgv("vg0", "a", 48n * MiB, true)).toEqual({
      tool: "lvreduce",
      argv: ["-q", "-y", "-f", "-L", "50331648b", "vg0/a"],
    });
    expect(lvconvertMergeArgv("vg0", "s")).toEqual(["-q", "-y", "-i", "1", "--merge", "vg0/s"]);
  });

  it("reports ask for JSON in bytes without suffixes, with the fields the parsers check", () => {
    expect(lvsArgv("vg0")).toEqual([
      "--reportformat",
      "json",
      "--units",
      "b",
      "--nosuffix",
      "-o",
      LVS_FIELDS.join(","),
      "vg0",
    ]);
    expect(vgsArgv("vg0", { config: CFG }).slice(0, 2)).toEqual(["--config", CFG]);
    expect(vgsArgv("vg0").at(-2)).toBe(VGS_FIELDS.join(","));
    expect(pvsArgv({ vg: "vg0" }).slice(-3)).toEqual([PVS_FIELDS.join(","), "--select", "vg_name=vg0"]);
  });

  it("refuses names and tags LVM would misread, before any command exists", () => {
    for (const vg of ["", "-vg", "a b", "vg/x", "..", "vg;rm", "x".repeat(128)]) {
      expect([vg, codeOf(() => lvsArgv(vg))]).toEqual([vg, "invalid_argument"]);
    }
    for (const name of ["-n", "a/b", "snapshot1", "pvmove0", "a$b"]) {
      expect([name, codeOf(() => lvremoveArgv("vg0", name))]).toEqual([name, "invalid_argument"]);
    }
    for (const tag of ["a@b", "", "-x", "a b", "a,b"]) {
      expect([tag, codeOf(() => assertLvmTag(tag))]).toEqual([tag, "invalid_argument"]);
    }
    expect(codeOf(() => lvcreateArgv({ vg: "vg0", name: "a", sizeBytes: 0n, tags: [] }))).toBe(
      "invalid_argument",
    );
    expect(assertLvmTag(`stowage.vol=${V1}`)).toBe(`stowage.vol=${V1}`);
  });
});

describe("lvm report parsers (goldens from real LVM)", () => {
  it("every golden carries exactly the fields the argv builders ask for", () => {
    const keys = (text: string, key: string) =>
      Object.keys(
        (JSON.parse(text) as { report: Record<string, Record<string, string>[]>[] }).report[0]![key]![0]!,
      );
    for (const f of ["lvm-lvs-metadata-only.json", "lvm-lvs-thin.json", "lvm-lvs-cow.json"]) {
      expect([f, keys(golden(f), "lv")]).toEqual([f, [...LVS_FIELDS]]);
    }
    expect(keys(golden("lvm-vgs.json"), "vg")).toEqual([...VGS_FIELDS]);
    expect(keys(golden("lvm-pvs.json"), "pv")).toEqual([...PVS_FIELDS]);
  });

  it("metadata-only LVs (activation off): sizes, tags, paths, and activity unknown", () => {
    const lvs = parseLvs(golden("lvm-lvs-metadata-only.json"));
    expect(lvs.map((l) => l.name)).toEqual([`stowage-tmp-${V2}`, `stowage-${V1}`, `stowage-${V3}`]);
    const v1 = lvs[1]!;
    expect(v1).toMatchObject({
      vg: "xvg",
      path: `/dev/xvg/stowage-${V1}`,
      sizeBytes: 64n * MiB,
      attr: "-wi-XX----",
      tags: [`stowage.op=${OP}`, `stowage.vol=${V1}`],
      segtype: "linear",
      poolLv: "",
      origin: "",
      active: undefined,
      open: false,
      skipActivation: false,
      isSnapshot: false,
    });
    expect(v1.dataPercent).toBeUndefined();
    expect(v1.createdAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z$/);
    expect(lvs[2]!.tags).toEqual([]);
  });

  it("a thin pool, a thin volume, its thin snapshot and a clone, active", () => {
    const lvs = parseLvs(golden("lvm-lvs-thin.json"));
    const by = (n: string) => lvs.find((l) => l.name === n)!;
    const pool = by("pool0");
    expect(pool).toMatchObject({ segtype: "thin-pool", sizeBytes: 512n * MiB, active: true, path: "" });
    expect(pool.dataPercent).toBeGreaterThan(0);
    expect(pool.metadataPercent).toBeGreaterThan(0);
    expect(pool.attr[7]).toBe("z"); // zeroes new blocks: LVM's default
    const vol = by(`stowage-${V1}`);
    expect(vol).toMatchObject({
      segtype: "thin",
      poolLv: "pool0",
      origin: "",
      active: true,
      sizeBytes: 64n * MiB,
    });
    // 8 MiB of random data in a 64 MiB thin LV.
    expect(vol.dataPercent).toBe(12.5);
    expect(usedFromPercent(vol.sizeBytes, vol.dataPercent)).toBe(8n * MiB);
    const snap = by(`stowage-${S1}`);
    expect(snap).toMatchObject({
      segtype: "thin",
      origin: `stowage-${V1}`,
      active: false,
      skipActivation: true,
      isSnapshot: true,
      sizeBytes: 64n * MiB,
    });
    expect(tagValue(snap.tags, "stowage.of")).toBe(V1);
    expect(tagValue(snap.tags, "stowage.time")).toBe("1732291200000");
    const clone = by(`stowage-tmp-${V2}`);
    // A thin snapshot does not inherit its origin's tags: the clone has only the ones it was made with.
    expect(clone.tags).toEqual([`stowage.op=${OP}`, `stowage.vol=${V2}`]);
    expect(clone).toMatchObject({ origin: `stowage-${S1}`, active: true, skipActivation: false });
    expect(by("foreign1").tags).toEqual([]);
  });

  it("a classic snapshot: its LV is the COW store, its virtual size the origin's", () => {
    const lvs = parseLvs(golden("lvm-lvs-cow.json"));
    const origin = lvs.find((l) => l.name === `stowage-${V3}`)!;
    const snap = lvs.find((l) => l.name === `stowage-${S1}`)!;
    expect(origin.attr[0]).toBe("o");
    expect(origin.originSizeBytes).toBe(64n * MiB); // LVM reports it on the origin too
    expect(snap).toMatchObject({
      origin: `stowage-${V3}`,
      isSnapshot: true,
      active: true,
      originSizeBytes: 64n * MiB,
    });
    expect(snap.sizeBytes).toBeGreaterThan(64n * MiB); // 100%ORIGIN plus the exception store's own metadata
    expect(snap.dataPercent).toBe(0);
  });

  it("an empty VG, vgs and pvs", () => {
    expect(parseLvs(golden("lvm-lvs-empty.json"))).toEqual([]);
    const [vg] = parseVgs(golden("lvm-vgs.json"));
    expect(vg).toMatchObject({ name: "vgthin", extentSizeBytes: 4n * MiB });
    expect(vg!.sizeBytes).toBe(BigInt(vg!.extentCount) * vg!.extentSizeBytes);
    expect(vg!.freeBytes).toBe(BigInt(vg!.freeExtentCount) * vg!.extentSizeBytes);
    const pvs = parsePvs(golden("lvm-pvs.json"));
    expect(pvs).toHaveLength(1);
    expect(pvs[0]).toMatchObject({ vg: "vgthin", name: expect.stringMatching(/^\/dev\/loop\d+$/) });
  });

  it("broken or unexpected output is a ToolOutputError that says what and where", () => {
    const argv = lvsArgv("vg0");
    const broken = () => parseLvs('  {\n      "report": [\n          {\n              "lv": [\n', argv);
    expect(broken).toThrow(ToolOutputError);
    expect(broken).toThrow(/^lvs printed output that is not the expected JSON: .*argv: --reportformat json/);
    const withSuffix = golden("lvm-lvs-metadata-only.json").replace(
      '"lv_size": "67108864"',
      '"lv_size": "67108864B"',
    );
    expect(() => parseLvs(withSuffix, argv)).toThrow(
      /report\.0\.lv\.1\.lv_size: expected a decimal byte count/,
    );
    expect(() => parseVgs('{"report":[]}', vgsArgv("vg0"))).toThrow(ToolOutputError);
  });

  it("times, tag values and percentages", () => {
    expect(parseLvmTime("2026-11-22 15:54:56 +0100")).toBe("2026-11-22T14:54:56.000Z");
    expect(parseLvmTime("")).toBeUndefined();
    expect(tagValue(["a=1", "ab=2", "b=x=y"], "b")).toBe("x=y");
    expect(tagValue(["a=1"], "ab")).toBeUndefined();
    expect(usedFromPercent(1000n, 33.33)).toBe(333n);
    expect(usedFromPercent(1000n, undefined)).toBe(0n);
    expect(usedFromPercent(1000n, 100.01)).toBe(1000n);
  });
});

// The builders against the real tools: LVM itself accepts what they build (metadata only, on a loop device).
describe("lvm argv builders against real LVM (metadata only)", () => {
  let vg: LoopVg;
  beforeAll(async () => {
    vg = await createLoopVg({ activation: false, sizeBytes: 256n * MiB });
  });
  afterAll(async () => {
    await vg?.teardown();
  });

  it("create with our tags, rename, retag, grow, shrink, remove: each step visible in the report", async () => {
    const tags = [`stowage.vol=${V1}`, `stowage.op=${OP}`];
    const report = async () => parseLvs((await vg.lvm("lvs", lvsArgv(vg.vg))).stdout);
    await vg.lvm("lvcreate", lvcreateArgv({ vg: vg.vg, name: "stowage-tmp-x", sizeBytes: 5n * MiB, tags }));
    // 5 MiB rounds up to two 4 MiB extents.
    expect((await report()).map((l) => [l.name, l.sizeBytes, l.tags])).toEqual([
      ["stowage-tmp-x", 8n * MiB, [...tags].sort()],
    ]);
    await vg.lvm("lvrename", lvrenameArgv(vg.vg, "stowage-tmp-x", "stowage-x"));
    await vg.lvm(
      "lvchange",
      lvchangeTagsArgv(vg.vg, "stowage-x", { del: [tags[1]!], add: ["stowage.op=op-2"] }),
    );
    await vg.lvm("lvextend", lvresizeArgv(vg.vg, "stowage-x", 16n * MiB, false).argv);
    expect((await report()).map((l) => [l.name, l.sizeBytes, l.tags])).toEqual([
      ["stowage-x", 16n * MiB, ["stowage.op=op-2", `stowage.vol=${V1}`]],
    ]);
    await vg.lvm("lvreduce", lvresizeArgv(vg.vg, "stowage-x", 4n * MiB, true).argv);
    expect((await report())[0]!.sizeBytes).toBe(4n * MiB);
    await vg.lvm("lvremove", lvremoveArgv(vg.vg, "stowage-x"));
    expect(await report()).toEqual([]);
    const [info] = parseVgs((await vg.lvm("vgs", vgsArgv(vg.vg))).stdout);
    expect(info).toMatchObject({ name: vg.vg, freeBytes: info!.sizeBytes, lvCount: 0 });
    const pvs = parsePvs((await vg.lvm("pvs", pvsArgv({ vg: vg.vg }))).stdout);
    expect(pvs.map((p) => p.name)).toEqual([vg.loopDevice]);
  });

  it("LVM refuses the tag characters assertLvmTag refuses", async () => {
    await expect(
      vg.lvm("lvcreate", ["-q", "-y", "-n", "t1", "--addtag", "a@b", "-L", "4m", vg.vg]),
    ).rejects.toThrow(/Invalid argument for --addtag/);
    await vg.lvm(
      "lvcreate",
      lvcreateArgv({ vg: vg.vg, name: "t2", sizeBytes: 4n * MiB, tags: ["a/b:c#d&e!f=g+h_i.j-k"] }),
    );
    expect(parseLvs((await vg.lvm("lvs", lvsArgv(vg.vg))).stdout)[0]!.tags).toEqual([
      "a/b:c#d&e!f=g+h_i.j-k",
    ]);
    await vg.lvm("lvremove", lvremoveArgv(vg.vg, "t2"));
  });
});
