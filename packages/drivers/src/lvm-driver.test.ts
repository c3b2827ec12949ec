import { newId, StowageError } from "@stowage/core";
import {
  createLvmDriver,
  createToolRunner,
  LVM_NO_UDEV_CONFIG,
  lvmToolEnv,
  lvName,
  lvOldName,
  lvTempName,
  type PoolDriver,
  parseLvs,
  type ToolInvocationEvent,
} from "@stowage/drivers/testing";
import { createLoopVg, type LoopVg } from "@stowage/testkit";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";

// The LVM driver against real LVM on a loop device, metadata only: this host's kernel has no device-mapper, so
// nothing is activated, but every lvcreate/lvrename/lvremove/lvchange/lvextend/lvreduce and every report is
// real. Data, snapshots, thin pools and wipes are covered in the kernel VM (lvm-driver.vm.test.ts and the
// conformance suites).

const MiB = 1024n * 1024n;
let vg: LoopVg;
let events: ToolInvocationEvent[];
let driver: PoolDriver;

beforeAll(async () => {
  vg = await createLoopVg({ activation: false, sizeBytes: 512n * MiB });
});
afterAll(async () => {
  await vg?.teardown();
});
beforeEach(async () => {
  // Each test starts from an empty VG.
  const lvs = parseLvs(
    (
      await vg.lvm("lvs", [
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "lv_name,vg_name,lv_uuid,lv_path,lv_size,lv_attr,lv_tags,lv_time,segtype,pool_lv,origin,origin_size,data_percent,metadata_percent,lv_active,lv_device_open,lv_skip_activation",
        vg.vg,
      ])
    ).stdout,
  );
  for (const lv of lvs) await vg.lvm("lvremove", ["-q", "-y", `${vg.vg}/${lv.name}`]);
  events = [];
  driver = makeDriver();
});

function makeDriver(extra: { thinPool?: string } = {}): PoolDriver {
  const runner = createToolRunner({
    env: lvmToolEnv({ lvmSystemDir: vg.lvmSystemDir }),
    onInvocation: (e) => events.push(e),
  });
  return createLvmDriver({
    poolName: "local-lvm",
    vg: vg.vg,
    runner,
    lvmConfig: LVM_NO_UDEV_CONFIG,
    ...extra,
  });
}

/** The VG as LVM reports it: name → tags. */
async function lvTags(): Promise<Record<string, string[]>> {
  const { stdout } = await vg.lvm("lvs", ["--reportformat", "json", "-o", "lv_name,lv_tags", vg.vg]);
  const rows = (JSON.parse(stdout) as { report: { lv: { lv_name: string; lv_tags: string }[] }[] }).report[0]!
    .lv;
  return Object.fromEntries(rows.map((r) => [r.lv_name, r.lv_tags === "" ? [] : r.lv_tags.split(",")]));
}

async function rejection(p: Promise<unknown>): Promise<StowageError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(StowageError);
  return e as StowageError;
}

const tools = () => events.map((e) => e.tool);
const spec = (sizeBytes = 64n * MiB) => ({
  volumeId: newId("vol"),
  operationId: newId("op"),
  sizeBytes,
  format: "raw" as const,
});

describe("lvm driver (metadata only): create", () => {
  it("creates the LV under a temp name with its ownership tags, then renames it into place", async () => {
    const s = spec();
    const { artifact, adopted } = await driver.createVolume(s);
    expect(adopted).toBe(false);
    expect(artifact).toEqual({
      volumeId: s.volumeId,
      poolName: "local-lvm",
      sizeBytes: 64n * MiB,
      format: "raw",
      allocatedBytes: 64n * MiB,
      path: `/dev/${vg.vg}/stowage-${s.volumeId}`,
      operationId: s.operationId,
    });
    expect(await lvTags()).toEqual({
      [lvName(s.volumeId)]: [`stowage.op=${s.operationId}`, `stowage.vol=${s.volumeId}`],
    });
    expect(tools()).toEqual(["lvs", "lvcreate", "lvrename", "lvs"]);
    const create = events.find((e) => e.tool === "lvcreate")!;
    expect(create.argv).toEqual([
      "--config",
      LVM_NO_UDEV_CONFIG,
      "-q",
      "-y",
      "-n",
      lvTempName(s.volumeId),
      "--addtag",
      `stowage.vol=${s.volumeId}`,
      "--addtag",
      `stowage.op=${s.operationId}`,
      "-L",
      `${64n * MiB}b`,
      vg.vg,
    ]);
    expect(events.find((e) => e.tool === "lvrename")!.argv.slice(-3)).toEqual([
      vg.vg,
      lvTempName(s.volumeId),
      lvName(s.volumeId),
    ]);
  });

  it("a repeated create adopts the LV and runs no lvcreate; a different operation of the same size too", async () => {
    const s = spec();
    await driver.createVolume(s);
    events = [];
    const again = await driver.createVolume(s);
    const other = await driver.createVolume({ ...s, operationId: newId("op") });
    expect([again.adopted, other.adopted]).toEqual([true, true]);
    expect(other.artifact.operationId).toBe(s.operationId);
    expect(tools()).not.toContain("lvcreate");
  });

  it("the same create arriving five times at once makes one LV", async () => {
    const s = spec();
    const results = await Promise.all(Array.from({ length: 5 }, () => driver.createVolume(s)));
    expect(results.filter((r) => !r.adopted)).toHaveLength(1);
    expect(tools().filter((t) => t === "lvcreate")).toHaveLength(1);
    expect(Object.keys(await lvTags())).toEqual([lvName(s.volumeId)]);
  });

  it("a size that is not a whole number of extents is rounded up, and a repeat converges", async () => {
    const s = spec(65n * MiB);
    const first = await driver.createVolume(s);
    expect(first.artifact.sizeBytes).toBe(68n * MiB);
    expect((await driver.createVolume({ ...s, operationId: newId("op") })).adopted).toBe(true);
  });

  it("a conflicting create (another operation, another size) is already_exists and changes nothing", async () => {
    const s = spec();
    await driver.createVolume(s);
    const before = await lvTags();
    const e = await rejection(driver.createVolume({ ...s, operationId: newId("op"), sizeBytes: 128n * MiB }));
    expect(e.code).toBe("already_exists");
    expect(e.message).toMatch(/already exists .* with 64 MiB .*asks for 128 MiB/);
    expect(await lvTags()).toEqual(before);
  });

  it("never adopts an LV under our name without our tag, and reports it as foreign", async () => {
    const id = newId("vol");
    await vg.lvm("lvcreate", ["-q", "-y", "-n", lvName(id), "-L", "8m", vg.vg]);
    const e = await rejection(driver.createVolume({ ...spec(), volumeId: id }));
    expect(e.code).toBe("already_exists");
    expect(e.message).toMatch(/without the Stowage tag stowage.vol=/);
    expect(await driver.info(id)).toBeUndefined();
    expect((await rejection(driver.deleteVolume(id))).code).toBe("failed_precondition");
    expect(await driver.list()).toEqual({ volumes: [], foreign: [lvName(id)] });
    expect(await lvTags()).toEqual({ [lvName(id)]: [] });
  });

  it("an LV tagged for another volume id under our name is not ours either", async () => {
    const id = newId("vol");
    await vg.lvm("lvcreate", [
      "-q",
      "-y",
      "-n",
      lvName(id),
      "--addtag",
      `stowage.vol=${newId("vol")}`,
      "-L",
      "8m",
      vg.vg,
    ]);
    expect(await driver.info(id)).toBeUndefined();
    expect((await rejection(driver.createVolume({ ...spec(), volumeId: id }))).code).toBe("already_exists");
  });

  it("a stale temp LV of ours (a crashed attempt) is removed, and the create completes", async () => {
    const s = spec();
    await vg.lvm("lvcreate", [
      "-q",
      "-y",
      "-n",
      lvTempName(s.volumeId),
      "--addtag",
      `stowage.vol=${s.volumeId}`,
      "-L",
      "4m",
      vg.vg,
    ]);
    const { adopted, artifact } = await driver.createVolume(s);
    expect(adopted).toBe(false);
    expect(artifact.sizeBytes).toBe(64n * MiB);
    expect(Object.keys(await lvTags())).toEqual([lvName(s.volumeId)]);
  });

  it("an untagged LV squatting the temp name stops the create without touching it", async () => {
    const s = spec();
    await vg.lvm("lvcreate", ["-q", "-y", "-n", lvTempName(s.volumeId), "-L", "4m", vg.vg]);
    const e = await rejection(driver.createVolume(s));
    expect(e.code).toBe("failed_precondition");
    expect(e.message).toMatch(/is in the way and has no Stowage tag/);
    expect(await lvTags()).toEqual({ [lvTempName(s.volumeId)]: [] });
  });

  it("a VG without enough free extents gives resource_exhausted and leaves nothing", async () => {
    const e = await rejection(driver.createVolume(spec(4096n * MiB)));
    expect(e.code).toBe("resource_exhausted");
    expect(e.message).toMatch(/has not enough free space: .*insufficient free space/);
    expect(await lvTags()).toEqual({});
  });

  it("refuses qcow2 and bad ids before running anything", async () => {
    const bad = [
      driver.createVolume({ ...spec(), format: "qcow2" }),
      driver.createVolume({ ...spec(), volumeId: "vol-../../x" }),
      driver.createVolume({ ...spec(), operationId: "op-x" }),
      driver.deleteVolume("../x"),
      driver.resizeVolume("x", MiB, { allowShrink: false, operationId: newId("op") }),
      driver.info("vol-;rm"),
      driver.createSnapshot(newId("vol"), "snap-x", { operationId: newId("op") }),
      driver.cloneVolume({ ...spec(), sourceVolumeId: "vol-x" }),
      driver.deleteVolume(newId("vol"), { wipe: "shred" as never }),
    ];
    for (const p of bad) expect((await rejection(p)).code).toBe("invalid_argument");
    expect(events).toEqual([]);
  });
});

describe("lvm driver (metadata only): delete, resize, list, capacity, check", () => {
  it("delete reports existed once, then converges; a leftover temp LV goes too", async () => {
    const s = spec();
    await driver.createVolume(s);
    await vg.lvm("lvcreate", [
      "-q",
      "-y",
      "-n",
      lvTempName(s.volumeId),
      "--addtag",
      `stowage.vol=${s.volumeId}`,
      "-L",
      "4m",
      vg.vg,
    ]);
    expect(await driver.deleteVolume(s.volumeId, { operationId: newId("op") })).toEqual({ existed: true });
    expect(await driver.deleteVolume(s.volumeId)).toEqual({ existed: false });
    expect(await lvTags()).toEqual({});
    expect(await driver.info(s.volumeId)).toBeUndefined();
  });

  it("resize grows, converges, refuses to shrink without allowShrink, shrinks with it", async () => {
    const s = spec();
    await driver.createVolume(s);
    const op = () => ({ operationId: newId("op") });
    expect(
      (await driver.resizeVolume(s.volumeId, 96n * MiB, { allowShrink: false, ...op() })).sizeBytes,
    ).toBe(96n * MiB);
    events = [];
    // 95 MiB rounds up to the 96 MiB it already has: nothing to do.
    expect(
      (await driver.resizeVolume(s.volumeId, 95n * MiB, { allowShrink: false, ...op() })).sizeBytes,
    ).toBe(96n * MiB);
    expect(tools()).toEqual(["lvs"]);
    const e = await rejection(driver.resizeVolume(s.volumeId, 32n * MiB, { allowShrink: false, ...op() }));
    expect(e.code).toBe("failed_precondition");
    expect(e.message).toMatch(/shrinking volume .* from 96 MiB to 32 MiB would discard/);
    const shrunk = await driver.resizeVolume(s.volumeId, 32n * MiB, { allowShrink: true, ...op() });
    expect(shrunk.sizeBytes).toBe(32n * MiB);
    expect(events.find((x) => x.tool === "lvreduce")?.argv).toContain("-f");
    const missing = await rejection(
      driver.resizeVolume(newId("vol"), 32n * MiB, { allowShrink: true, ...op() }),
    );
    expect(missing.code).toBe("not_found");
  });

  it("list reports our volumes sorted, skips temp LVs, and names foreign LVs", async () => {
    const a = spec();
    const b = spec(32n * MiB);
    await driver.createVolume(a);
    await driver.createVolume(b);
    const tmp = newId("vol");
    await vg.lvm("lvcreate", [
      "-q",
      "-y",
      "-n",
      lvTempName(tmp),
      "--addtag",
      `stowage.vol=${tmp}`,
      "-L",
      "4m",
      vg.vg,
    ]);
    await vg.lvm("lvcreate", ["-q", "-y", "-n", "root", "-L", "4m", vg.vg]);
    const { volumes, foreign } = await driver.list();
    expect(volumes.map((v) => [v.volumeId, v.sizeBytes])).toEqual(
      [
        [a.volumeId, 64n * MiB],
        [b.volumeId, 32n * MiB],
      ].sort(),
    );
    expect(foreign).toEqual(["root"]);
  });

  it("capacity of a thick pool: the VG's size and free extents, provisioned from our volumes only", async () => {
    const empty = await driver.capacity();
    expect(empty).toEqual({
      totalBytes: empty.totalBytes,
      usedBytes: 0n,
      freeBytes: empty.totalBytes,
      provisionedBytes: 0n,
    });
    await driver.createVolume(spec());
    await vg.lvm("lvcreate", ["-q", "-y", "-n", "root", "-L", "8m", vg.vg]);
    const cap = await driver.capacity();
    expect(cap).toEqual({
      totalBytes: empty.totalBytes,
      usedBytes: 72n * MiB,
      freeBytes: empty.totalBytes - 72n * MiB,
      provisionedBytes: 64n * MiB,
    });
  });

  it("capacity() and list() run the same few reports whatever the number of volumes", async () => {
    const runs = async () => {
      events = [];
      await driver.capacity();
      const capacity = tools();
      events = [];
      await driver.list();
      return { capacity, list: tools() };
    };
    await driver.createVolume(spec(4n * MiB));
    const one = await runs();
    for (let i = 0; i < 5; i++) await driver.createVolume(spec(4n * MiB));
    expect((await driver.list()).volumes).toHaveLength(6);
    // One lvs for every LV with its tags, one vgs for the VG's size: never a run per LV.
    expect(one).toEqual({ capacity: ["lvs", "vgs"], list: ["lvs"] });
    expect(await runs()).toEqual(one);
  });

  it("check: healthy on the VG, unhealthy with a reason for a missing VG or a missing thin pool", async () => {
    expect(await driver.check()).toEqual({
      healthy: true,
      message: expect.stringMatching(/^lvm pool local-lvm \(VG .*\) is usable: 508 MiB, 508 MiB free$/),
    });
    const thin = await makeDriver({ thinPool: "pool0" }).check();
    expect(thin).toEqual({
      healthy: false,
      message: expect.stringMatching(/lvmthin pool .*\/pool0 is not a thin pool/),
    });
    const runner = createToolRunner({ env: lvmToolEnv({ lvmSystemDir: vg.lvmSystemDir }) });
    const gone = await createLvmDriver({ poolName: "gone", vg: "no_such_vg", runner }).check();
    expect(gone.healthy).toBe(false);
    expect(gone.message).toMatch(/vgs .* exited with code 5: [\s\S]*Volume group "no_such_vg" not found/);
  });

  it("the options are checked when the driver is made", () => {
    const runner = createToolRunner();
    expect(() => createLvmDriver({ poolName: "Bad Name", vg: "vg0", runner })).toThrow(/pool name/);
    expect(() => createLvmDriver({ poolName: "p", vg: "-vg", runner })).toThrow(/volume group "-vg"/);
    expect(() => createLvmDriver({ poolName: "p", vg: "vg0", thinPool: "a/b", runner })).toThrow(
      /thin pool "a\/b"/,
    );
    expect(createLvmDriver({ poolName: "p", vg: "vg0", thinPool: "pool0", runner }).kind).toBe("lvmthin");
  });
});

describe("lvm driver (metadata only): a thin revert's swap, interrupted", () => {
  // A thin revert swaps LVs by two renames: volume -> stowage-old-<id>, reverted copy (temp) -> volume. The
  // LVs here are linear (metadata only), which is all the renames and tags care about.
  async function interruptedSwap(withCopy: boolean) {
    const s = spec();
    await driver.createVolume(s);
    if (withCopy) {
      await vg.lvm("lvcreate", [
        "-q",
        "-y",
        "-n",
        lvTempName(s.volumeId),
        "--addtag",
        `stowage.vol=${s.volumeId}`,
        "--addtag",
        `stowage.op=${s.operationId}`,
        "-L",
        "64m",
        vg.vg,
      ]);
    }
    await vg.lvm("lvrename", ["-q", vg.vg, lvName(s.volumeId), lvOldName(s.volumeId)]);
    return s;
  }

  it("while the volume's name is free, info says it is missing and list shows nothing foreign", async () => {
    const s = await interruptedSwap(true);
    expect(await driver.info(s.volumeId)).toBeUndefined();
    expect(await driver.list()).toEqual({ volumes: [], foreign: [] });
  });

  it("the next operation on the volume rolls the swap forward when the reverted copy is there", async () => {
    const s = await interruptedSwap(true);
    events = [];
    const r = await driver.resizeVolume(s.volumeId, 64n * MiB, {
      allowShrink: false,
      operationId: newId("op"),
    });
    expect(r).toMatchObject({ volumeId: s.volumeId, operationId: s.operationId, sizeBytes: 64n * MiB });
    expect(tools()).toEqual(["lvs", "lvrename", "lvremove", "lvs", "vgs"]);
    expect(events[1]!.argv.slice(-2)).toEqual([lvTempName(s.volumeId), lvName(s.volumeId)]);
    expect(Object.keys(await lvTags())).toEqual([lvName(s.volumeId)]);
  });

  it("and back when it is not", async () => {
    const s = await interruptedSwap(false);
    expect((await driver.deleteVolume(s.volumeId)).existed).toBe(true);
    expect(await lvTags()).toEqual({});
    const t = await interruptedSwap(false);
    events = [];
    await driver.createVolume(t);
    expect(tools()).toEqual(["lvs", "lvrename", "lvs"]);
    expect(Object.keys(await lvTags())).toEqual([lvName(t.volumeId)]);
  });
});
