import { spawn } from "node:child_process";
import { stat } from "node:fs/promises";
import { newId } from "@stowage/core";
import {
  createLvmDriver,
  createToolRunner,
  LVM_NO_UDEV_CONFIG,
  LVM_TAG,
  lvmToolEnv,
  lvName,
  lvOldName,
  lvsArgv,
  lvTempName,
  type PoolDriver,
  parseLvs,
  readPattern,
  type ToolInvocationEvent,
  tagValue,
  type VolumeArtifact,
  writePattern,
} from "@stowage/drivers/testing";
import { createLoopVg, inKernelVm, KERNEL_VM_SKIP_REASON, type LoopVg } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// The LVM driver with real device-mapper: activation, thin pool numbers, snapshots, reverts, clones and wipes,
// with data written and read back through qemu-io. Only in the kernel VM (scripts/vm-test.sh); skipped here.

const MiB = 1024n * 1024n;
const SIZE = 64n * MiB;
const TIMEOUT = 300_000;
const describeVm = inKernelVm() ? describe : describe.skip;
const suffix = inKernelVm() ? "" : ` [skipped: ${KERNEL_VM_SKIP_REASON}]`;

interface Pool {
  vg: LoopVg;
  driver: PoolDriver;
  events: ToolInvocationEvent[];
}

async function makePool(thin: boolean): Promise<Pool> {
  const vg = await createLoopVg({
    activation: true,
    sizeBytes: 1024n * MiB,
    ...(thin ? { thinPool: { name: "pool0", sizeBytes: 512n * MiB } } : {}),
  });
  const events: ToolInvocationEvent[] = [];
  const runner = createToolRunner({
    env: lvmToolEnv({ lvmSystemDir: vg.lvmSystemDir }),
    onInvocation: (e) => events.push(e),
  });
  const driver = createLvmDriver({
    poolName: thin ? "vm-thin" : "vm-thick",
    vg: vg.vg,
    runner,
    lvmConfig: LVM_NO_UDEV_CONFIG,
    ...(thin ? { thinPool: "pool0" } : {}),
  });
  return { vg, driver, events };
}

const io = (a: VolumeArtifact) => ["-f", "raw", a.path];
const op = () => ({ operationId: newId("op") });
const at40 = (pattern: number) => ({ pattern, offset: 40n * MiB, length: MiB });

async function create(d: PoolDriver, sizeBytes = SIZE): Promise<VolumeArtifact> {
  return (await d.createVolume({ volumeId: newId("vol"), sizeBytes, format: "raw", ...op() })).artifact;
}

async function lvsOf(p: Pool) {
  return parseLvs((await p.vg.lvm("lvs", lvsArgv(p.vg.vg))).stdout);
}

/** Keeps the device open (as a running VM would) until the returned function is called. */
function holdOpen(path: string): () => Promise<void> {
  const child = spawn("bash", ["-c", 'exec 3<"$1"; read -r _', "hold", path], {
    stdio: ["pipe", "ignore", "ignore"],
  });
  return async () => {
    child.stdin?.end();
    await new Promise((r) => child.once("exit", r));
  };
}

describeVm(`lvm driver in the kernel VM: thick${suffix}`, () => {
  let p: Pool;
  beforeAll(async () => {
    p = await makePool(false);
  }, TIMEOUT);
  afterAll(async () => {
    await p?.vg.teardown();
  }, TIMEOUT);

  it(
    "a created volume is active: its path is a block device of the volume's size, holding what is written",
    async () => {
      const a = await create(p.driver);
      expect((await stat(a.path)).isBlockDevice()).toBe(true);
      await writePattern(io(a), undefined, at40(0xa1));
      expect(await readPattern(io(a), undefined, at40(0xa1))).toBe(true);
      expect(await readPattern(io(a), undefined, { pattern: 0xa1, offset: SIZE - MiB, length: MiB })).toBe(
        false,
      );
      const [lv] = (await lvsOf(p)).filter((l) => l.name === lvName(a.volumeId));
      expect(lv).toMatchObject({ active: true, sizeBytes: SIZE, attr: expect.stringMatching(/^-wi-a/) });
      await p.driver.deleteVolume(a.volumeId);
    },
    TIMEOUT,
  );

  it(
    "a wipe zero really zeroes: without it a new LV on the same extents reads the old data, with it zeros",
    async () => {
      for (const wipe of ["none", "zero"] as const) {
        const a = await create(p.driver);
        await writePattern(io(a), undefined, at40(0xa1));
        await p.driver.deleteVolume(a.volumeId, { wipe });
        // LVM allocates the first free extents: the next LV of the same size lands where the old one was.
        const b = await create(p.driver);
        expect([wipe, await readPattern(io(b), undefined, at40(0xa1))]).toEqual([wipe, wipe === "none"]);
        if (wipe === "zero") expect(await readPattern(io(b), undefined, at40(0))).toBe(true);
        await p.driver.deleteVolume(b.volumeId, { wipe: "zero" });
      }
    },
    TIMEOUT,
  );

  it(
    "a throttled wipe runs in one-second chunks and takes as long as the throttle says",
    async () => {
      const a = await create(p.driver);
      p.events.length = 0;
      const t0 = performance.now();
      await p.driver.deleteVolume(a.volumeId, { wipe: "zero", wipeBytesPerSecond: Number(32n * MiB) });
      const chunks = p.events.filter((e) => e.tool === "blkdiscard");
      expect(chunks.map((e) => e.argv.slice(0, 6))).toEqual([
        ["-f", "-z", "-o", "0", "-l", String(32n * MiB)],
        ["-f", "-z", "-o", String(32n * MiB), "-l", String(32n * MiB)],
      ]);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(1000);
    },
    TIMEOUT,
  );

  it(
    "a classic snapshot keeps its data; revert merges it and re-creates it with the same id, time and operation",
    async () => {
      const a = await create(p.driver);
      await writePattern(io(a), undefined, at40(0xa1));
      const snapshotId = newId("snap");
      const { snapshot } = await p.driver.createSnapshot(a.volumeId, snapshotId, op());
      const snapLv = (await lvsOf(p)).find((l) => l.name === lvName(snapshotId))!;
      expect(snapLv).toMatchObject({ origin: lvName(a.volumeId), isSnapshot: true, originSizeBytes: SIZE });
      expect(snapLv.sizeBytes).toBeGreaterThanOrEqual(SIZE); // 100%ORIGIN: it can never overflow
      await writePattern(io(a), undefined, at40(0xb2));
      const revertOp = newId("op");
      await p.driver.revertSnapshot(a.volumeId, snapshotId, { operationId: revertOp });
      expect(await readPattern(io(a), undefined, at40(0xa1))).toBe(true);
      expect(await p.driver.listSnapshots(a.volumeId)).toEqual([snapshot]);
      // A redelivery of the same revert does not merge again: what was written since stays.
      await writePattern(io(a), undefined, at40(0xc3));
      p.events.length = 0;
      await p.driver.revertSnapshot(a.volumeId, snapshotId, { operationId: revertOp });
      expect(p.events.map((e) => e.tool)).not.toContain("lvconvert");
      expect(await readPattern(io(a), undefined, at40(0xc3))).toBe(true);
      const vol = (await lvsOf(p)).find((l) => l.name === lvName(a.volumeId))!;
      expect(tagValue(vol.tags, LVM_TAG.reverted)).toBe(revertOp);
      expect(tagValue(vol.tags, LVM_TAG.revertSnapshot)).toBeUndefined();
      // LVM cannot resize the origin of a classic snapshot: refused with the reason, before lvextend.
      const e = await p.driver
        .resizeVolume(a.volumeId, 2n * SIZE, { allowShrink: false, ...op() })
        .catch((x: unknown) => x as { code: string; message: string });
      expect(e).toMatchObject({
        code: "failed_precondition",
        message: expect.stringMatching(/has snapshots/),
      });
      // Deleting the volume deletes its snapshots.
      expect(await p.driver.deleteVolume(a.volumeId)).toEqual({ existed: true });
      expect((await lvsOf(p)).map((l) => l.name)).toEqual([]);
    },
    TIMEOUT,
  );

  it(
    "a revert that crashed after the merge is finished by the retry: the snapshot comes back",
    async () => {
      const a = await create(p.driver);
      await writePattern(io(a), undefined, at40(0xa1));
      const s = newId("snap");
      const { snapshot } = await p.driver.createSnapshot(a.volumeId, s, op());
      await writePattern(io(a), undefined, at40(0xb2));
      // What the driver does before the crash: record the revert on the volume, merge (consuming the snapshot).
      const cfg = ["--config", LVM_NO_UDEV_CONFIG];
      await p.vg.lvm("lvchange", [
        ...cfg,
        "--addtag",
        `${LVM_TAG.revertSnapshot}=${s}`,
        "--addtag",
        `${LVM_TAG.revertSnapshotOp}=${snapshot.operationId}`,
        "--addtag",
        `${LVM_TAG.revertSnapshotTime}=${Date.parse(snapshot.createdAt)}`,
        `${p.vg.vg}/${lvName(a.volumeId)}`,
      ]);
      await p.vg.lvm("lvconvert", [...cfg, "-y", "-i", "1", "--merge", `${p.vg.vg}/${lvName(s)}`]);
      expect((await lvsOf(p)).some((l) => l.name === lvName(s))).toBe(false);
      await p.driver.revertSnapshot(a.volumeId, s, op());
      expect(await readPattern(io(a), undefined, at40(0xa1))).toBe(true);
      expect(await p.driver.listSnapshots(a.volumeId)).toEqual([snapshot]);
      const vol = (await lvsOf(p)).find((l) => l.name === lvName(a.volumeId))!;
      expect(vol.tags.filter((t) => t.startsWith("stowage.rs"))).toEqual([]);
      await p.driver.deleteVolume(a.volumeId);
    },
    TIMEOUT,
  );

  it(
    "a volume in use (open) is not reverted: LVM would defer the merge",
    async () => {
      const a = await create(p.driver);
      const snapshotId = newId("snap");
      await p.driver.createSnapshot(a.volumeId, snapshotId, op());
      const release = holdOpen(a.path);
      try {
        await expect
          .poll(async () => (await lvsOf(p)).find((l) => l.name === lvName(a.volumeId))?.open, {
            timeout: 20_000,
          })
          .toBe(true);
        const e = await p.driver
          .revertSnapshot(a.volumeId, snapshotId, op())
          .catch((x: unknown) => x as { code: string; message: string });
        expect(e).toMatchObject({ code: "failed_precondition", message: expect.stringMatching(/is open/) });
      } finally {
        await release();
      }
      expect(await p.driver.listSnapshots(a.volumeId)).toHaveLength(1);
      await p.driver.deleteVolume(a.volumeId);
    },
    TIMEOUT,
  );

  it(
    "a clone is a copy: same data, independent, and a larger clone's tail reads as zeros",
    async () => {
      // Leave old data where the clone's tail will land, to prove it is zeroed and not merely new.
      const junk = await create(p.driver, 256n * MiB);
      await writePattern(io(junk), undefined, { pattern: 0xee, offset: 0, length: 200n * MiB });
      await p.driver.deleteVolume(junk.volumeId);
      const a = await create(p.driver);
      await writePattern(io(a), undefined, at40(0xa1));
      const { artifact: c } = await p.driver.cloneVolume({
        volumeId: newId("vol"),
        sourceVolumeId: a.volumeId,
        sizeBytes: 2n * SIZE,
        format: "raw",
        ...op(),
      });
      expect(c.sizeBytes).toBe(2n * SIZE);
      expect(await readPattern(io(c), undefined, at40(0xa1))).toBe(true);
      expect(await readPattern(io(c), undefined, { pattern: 0, offset: SIZE, length: SIZE })).toBe(true);
      await writePattern(io(a), undefined, at40(0xb2));
      expect(await readPattern(io(c), undefined, at40(0xa1))).toBe(true);
      await p.driver.deleteVolume(a.volumeId);
      await p.driver.deleteVolume(c.volumeId);
    },
    TIMEOUT,
  );
});

describeVm(`lvm driver in the kernel VM: thin${suffix}`, () => {
  let p: Pool;
  beforeAll(async () => {
    p = await makePool(true);
  }, TIMEOUT);
  afterAll(async () => {
    await p?.vg.teardown();
  }, TIMEOUT);

  it(
    "thin pool numbers: data% follows what is written, metadata% is reported, used = size x data%",
    async () => {
      const empty = await p.driver.capacity();
      expect(empty.totalBytes).toBe(512n * MiB);
      expect(empty.metadataPercent).toBeGreaterThan(0);
      const a = await create(p.driver);
      expect((await p.driver.info(a.volumeId))!.allocatedBytes).toBe(0n);
      await writePattern(io(a), undefined, { pattern: 0xa1, offset: 0, length: 16n * MiB });
      const info = (await p.driver.info(a.volumeId))!;
      expect(info.allocatedBytes).toBe(16n * MiB); // 25.00% of 64 MiB
      const cap = await p.driver.capacity();
      expect(cap.provisionedBytes).toBe(SIZE);
      expect(cap.dataPercent).toBeGreaterThanOrEqual(3.12); // 16 of 512 MiB, plus what the pool had
      expect(cap.usedBytes).toBe((cap.totalBytes * BigInt(Math.round(cap.dataPercent! * 100))) / 10_000n);
      expect(cap.freeBytes).toBe(cap.totalBytes - cap.usedBytes);
      // Overcommit is the point of thin pools: a volume larger than the pool is fine.
      const big = await create(p.driver, 1024n * MiB);
      expect((await p.driver.capacity()).provisionedBytes).toBe(SIZE + 1024n * MiB);
      // A wipe unmaps: the pool gets the blocks back.
      await p.driver.deleteVolume(a.volumeId, { wipe: "zero" });
      expect(p.events.filter((e) => e.tool === "blkdiscard").at(-1)?.argv).not.toContain("-z");
      expect((await p.driver.capacity()).dataPercent).toBeLessThan(cap.dataPercent!);
      await p.driver.deleteVolume(big.volumeId);
    },
    TIMEOUT,
  );

  it(
    "thin snapshots: never activated, tagged, independent of later writes; revert restores and keeps them",
    async () => {
      const a = await create(p.driver);
      await writePattern(io(a), undefined, at40(0xa1));
      const s1 = newId("snap");
      const s1op = newId("op");
      const { snapshot } = await p.driver.createSnapshot(a.volumeId, s1, { operationId: s1op });
      expect(snapshot).toMatchObject({
        snapshotId: s1,
        volumeId: a.volumeId,
        sizeBytes: SIZE,
        operationId: s1op,
      });
      const lv = (await lvsOf(p)).find((l) => l.name === lvName(s1))!;
      expect(lv).toMatchObject({
        active: false,
        skipActivation: true,
        origin: lvName(a.volumeId),
        poolLv: "pool0",
      });
      expect([...lv.tags].sort()).toEqual(
        [
          `stowage.snap=${s1}`,
          `stowage.of=${a.volumeId}`,
          `stowage.op=${s1op}`,
          `stowage.time=${Date.parse(snapshot.createdAt)}`,
        ].sort(),
      );
      await writePattern(io(a), undefined, at40(0xb2));
      const s2 = newId("snap");
      await p.driver.createSnapshot(a.volumeId, s2, op());
      await writePattern(io(a), undefined, at40(0xc3));
      await p.driver.revertSnapshot(a.volumeId, s1, op());
      expect(await readPattern(io(a), undefined, at40(0xa1))).toBe(true);
      await p.driver.revertSnapshot(a.volumeId, s2, op());
      expect(await readPattern(io(a), undefined, at40(0xb2))).toBe(true);
      const listed = await p.driver.listSnapshots(a.volumeId);
      expect(listed.map((s) => s.snapshotId).sort()).toEqual([s1, s2].sort());
      // Re-created after the merge, but the same snapshot as far as anyone can tell.
      expect(listed.find((s) => s.snapshotId === s1)).toEqual(snapshot);
      await p.driver.deleteVolume(a.volumeId);
      expect((await lvsOf(p)).map((l) => l.name)).toEqual(["pool0"]);
    },
    TIMEOUT,
  );

  it(
    "a revert that crashed between its two renames is finished by the retry, and the snapshot stays",
    async () => {
      const a = await create(p.driver);
      await writePattern(io(a), undefined, at40(0xa1));
      const s = newId("snap");
      const { snapshot } = await p.driver.createSnapshot(a.volumeId, s, op());
      await writePattern(io(a), undefined, at40(0xb2));
      // What the driver does before the crash: the reverted copy under the temp name, the volume moved aside.
      const revertOp = newId("op");
      const cfg = ["--config", LVM_NO_UDEV_CONFIG];
      await p.vg.lvm("lvcreate", [
        ...cfg,
        "-q",
        "-y",
        "-s",
        "-kn",
        "-n",
        lvTempName(a.volumeId),
        "--addtag",
        `${LVM_TAG.volume}=${a.volumeId}`,
        "--addtag",
        `${LVM_TAG.operation}=${a.operationId}`,
        "--addtag",
        `${LVM_TAG.reverted}=${revertOp}`,
        `${p.vg.vg}/${lvName(s)}`,
      ]);
      await p.vg.lvm("lvrename", [...cfg, p.vg.vg, lvName(a.volumeId), lvOldName(a.volumeId)]);
      expect(await p.driver.info(a.volumeId)).toBeUndefined();
      expect(await p.driver.list()).toEqual({ volumes: [], foreign: [] });
      p.events.length = 0;
      const r = await p.driver.revertSnapshot(a.volumeId, s, { operationId: revertOp });
      // Rolled forward: the copy takes the name, the old LV goes, and the retry sees its revert done.
      expect(p.events.map((e) => e.tool)).toEqual(["lvs", "lvrename", "lvremove", "lvs"]);
      expect(r).toMatchObject({ volumeId: a.volumeId, operationId: a.operationId, sizeBytes: SIZE });
      expect(await readPattern(io(r), undefined, at40(0xa1))).toBe(true);
      expect(await p.driver.listSnapshots(a.volumeId)).toEqual([snapshot]);
      expect((await lvsOf(p)).map((l) => l.name).sort()).toEqual(
        ["pool0", lvName(a.volumeId), lvName(s)].sort(),
      );
      await p.driver.deleteVolume(a.volumeId);
    },
    TIMEOUT,
  );

  it(
    "clones are thin snapshots made into volumes: active, their own tags, independent; flatten is a no-op",
    async () => {
      const a = await create(p.driver);
      await writePattern(io(a), undefined, at40(0xa1));
      const s = newId("snap");
      await p.driver.createSnapshot(a.volumeId, s, op());
      const spec = {
        volumeId: newId("vol"),
        sourceVolumeId: a.volumeId,
        sourceSnapshotId: s,
        format: "raw" as const,
        ...op(),
      };
      const { artifact: c } = await p.driver.cloneVolume(spec);
      const lv = (await lvsOf(p)).find((l) => l.name === lvName(c.volumeId))!;
      expect(lv).toMatchObject({ active: true, skipActivation: false, origin: lvName(s) });
      expect([...lv.tags].sort()).toEqual([`stowage.op=${spec.operationId}`, `stowage.vol=${c.volumeId}`]);
      expect(await readPattern(io(c), undefined, at40(0xa1))).toBe(true);
      // A thin LV's data% counts the blocks it maps, shared ones included.
      expect(c.allocatedBytes).toBeGreaterThan(0n);
      expect(c.allocatedBytes).toBeLessThanOrEqual(c.sizeBytes);
      p.events.length = 0;
      expect(await p.driver.flattenVolume(c.volumeId, op())).toEqual(await p.driver.info(c.volumeId));
      expect(p.events.map((e) => e.tool)).toEqual(["lvs", "lvs"]);
      // The source and its snapshot can go; the clone stays whole.
      await p.driver.deleteVolume(a.volumeId);
      expect(await readPattern(io(c), undefined, at40(0xa1))).toBe(true);
      await p.driver.deleteVolume(c.volumeId);
    },
    TIMEOUT,
  );
});
