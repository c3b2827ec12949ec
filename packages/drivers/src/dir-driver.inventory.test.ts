import { copyFile, mkdtemp, readFile, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { newId, type VolumeFormat } from "@stowage/core";
import {
  createDirDriver,
  createToolRunner,
  DIR_META,
  type PoolDriver,
  type ToolInvocationEvent,
  type ToolRunner,
} from "@stowage/drivers/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

// What a dir pool's hot paths cost in tool runs, counted through the runner's onInvocation hook, with the real
// qemu-img. The agent calls capacity() after every operation and list() on a timer: neither may run a
// process per volume (docs/architecture.md, "Drivers").

const MiB = 1024n * 1024n;
let root: string;
let events: ToolInvocationEvent[];
let runner: ToolRunner;
let driver: PoolDriver;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "stowage-dir-inventory-"));
  events = [];
  runner = createToolRunner({ onInvocation: (e) => events.push(e) });
  driver = createDirDriver({ poolName: "local", root, runner });
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const ran = () => events.map((e) => `${e.tool} ${e.argv[0]}`);
const spec = (sizeBytes = 64n * MiB, format: VolumeFormat = "qcow2") => ({
  volumeId: newId("vol"),
  operationId: newId("op"),
  sizeBytes,
  format,
});

/** `n` volumes, eight at a time; their sizes 1, 2, ... MiB so that a sum that misses one is wrong. */
async function createMany(d: PoolDriver, n: number): Promise<bigint> {
  let total = 0n;
  for (let i = 0; i < n; i += 8) {
    const batch = Array.from({ length: Math.min(8, n - i) }, (_, j) => spec(BigInt(i + j + 1) * MiB));
    for (const s of batch) total += s.sizeBytes;
    await Promise.all(batch.map((s) => d.createVolume(s)));
  }
  return total;
}

describe("dir driver: tool runs per call", () => {
  it("create runs exactly one qemu-img, and its artifact is what qemu-img info says", async () => {
    for (const format of ["qcow2", "raw"] as const) {
      events = [];
      const { artifact, adopted } = await driver.createVolume(spec(64n * MiB, format));
      expect(adopted).toBe(false);
      expect(ran()).toEqual(["qemu-img create"]);
      expect(await driver.info(artifact.volumeId)).toEqual(artifact);
    }
  });

  it("capacity() and list() run no qemu-img, before and after the index is loaded", async () => {
    const a = await driver.createVolume(spec(64n * MiB));
    const b = await driver.createVolume(spec(128n * MiB, "raw"));
    // A fresh driver on the same directory loads its index from the records alone.
    const fresh = createDirDriver({ poolName: "local", root, runner });
    events = [];
    expect((await fresh.capacity()).provisionedBytes).toBe(192n * MiB);
    expect((await fresh.capacity()).provisionedBytes).toBe(192n * MiB);
    const listed = await fresh.list();
    expect(listed.volumes).toEqual(
      [a.artifact, b.artifact].sort((x, y) => (x.volumeId < y.volumeId ? -1 : 1)),
    );
    expect(events).toEqual([]);
  });

  it("with 200 volumes, capacity() and list() still run no qemu-img process", async () => {
    const total = await createMany(driver, 200);
    events = [];
    const cap = await driver.capacity();
    const { volumes, foreign } = await driver.list();
    expect(cap.provisionedBytes).toBe(total);
    expect(volumes).toHaveLength(200);
    expect(foreign).toEqual([]);
    expect(volumes.reduce((s, v) => s + v.sizeBytes, 0n)).toBe(total);
    for (const v of volumes) expect(v.allocatedBytes).toBeGreaterThan(0n);
    expect(events).toEqual([]);
  });

  it("check() asks qemu-img --version once", async () => {
    for (let i = 0; i < 3; i++) {
      expect(await driver.check()).toEqual({
        healthy: true,
        message: expect.stringMatching(/^dir pool local at .* is usable \(qemu-img version /),
      });
    }
    expect(ran()).toEqual(["qemu-img --version"]);
  });

  it("resize runs qemu-img info (the guard's look at the real size) and qemu-img resize, nothing more, and records the new size", async () => {
    const { artifact } = await driver.createVolume(spec(64n * MiB));
    await driver.capacity();
    events = [];
    const resized = await driver.resizeVolume(artifact.volumeId, 96n * MiB, {
      allowShrink: false,
      operationId: newId("op"),
    });
    expect(ran()).toEqual(["qemu-img info", "qemu-img resize"]);
    expect(resized).toEqual({ ...artifact, sizeBytes: 96n * MiB, allocatedBytes: resized.allocatedBytes });
    expect(await driver.info(artifact.volumeId)).toEqual(resized);
    expect((await driver.capacity()).provisionedBytes).toBe(96n * MiB);
    // The size is in the record: a driver started afresh reports it without asking qemu-img.
    const fresh = createDirDriver({ poolName: "local", root, runner });
    events = [];
    expect((await fresh.list()).volumes).toEqual([resized]);
    expect((await fresh.capacity()).provisionedBytes).toBe(96n * MiB);
    expect(events).toEqual([]);
    // The size it was made with stays in the record, so a redelivered create is still recognised.
    const rec = JSON.parse(await readFile(join(root, DIR_META, `${artifact.volumeId}.json`), "utf8"));
    expect(rec).toMatchObject({ sizeBytes: String(64n * MiB), virtualSizeBytes: String(96n * MiB) });
  });
});

describe("dir driver: the index follows the directory", () => {
  it("a volume deleted behind the driver's back leaves list() and, after that list, the provisioned bytes", async () => {
    const a = await driver.createVolume(spec(64n * MiB));
    const b = await driver.createVolume(spec(32n * MiB, "raw"));
    expect((await driver.capacity()).provisionedBytes).toBe(96n * MiB);
    await unlink(a.artifact.path);
    expect((await driver.list()).volumes).toEqual([b.artifact]);
    expect((await driver.capacity()).provisionedBytes).toBe(32n * MiB);
    expect(events.filter((e) => e.argv[0] !== "create")).toEqual([]);
  });

  it("a volume put in place behind the driver's back (image and record) is found by the next list()", async () => {
    const a = await driver.createVolume(spec(64n * MiB));
    expect((await driver.capacity()).provisionedBytes).toBe(64n * MiB);
    const id = newId("vol");
    const rec = JSON.parse(await readFile(join(root, DIR_META, `${a.artifact.volumeId}.json`), "utf8"));
    await writeFile(join(root, DIR_META, `${id}.json`), JSON.stringify({ ...rec, volumeId: id }));
    await copyFile(a.artifact.path, join(root, `${id}.qcow2`));
    const { volumes } = await driver.list();
    expect(volumes.map((v) => v.volumeId).sort()).toEqual([a.artifact.volumeId, id].sort());
    expect((await driver.capacity()).provisionedBytes).toBe(128n * MiB);
  });

  it("deletes through the driver leave the provisioned bytes at once", async () => {
    const a = await driver.createVolume(spec(64n * MiB));
    await driver.createVolume(spec(32n * MiB));
    expect((await driver.capacity()).provisionedBytes).toBe(96n * MiB);
    expect(await driver.deleteVolume(a.artifact.volumeId)).toEqual({ existed: true });
    expect((await driver.capacity()).provisionedBytes).toBe(32n * MiB);
    expect(await driver.deleteVolume(a.artifact.volumeId)).toEqual({ existed: false });
    expect((await driver.capacity()).provisionedBytes).toBe(32n * MiB);
  });

  it("a create that finishes while a full list reads the directory is kept in the index", async () => {
    // Many records make the scan long; they are copies of one real volume's image and record.
    const model = await driver.createVolume(spec(1n * MiB));
    const rec = JSON.parse(await readFile(join(root, DIR_META, `${model.artifact.volumeId}.json`), "utf8"));
    await Promise.all(
      Array.from({ length: 400 }, async () => {
        const id = newId("vol");
        await writeFile(join(root, DIR_META, `${id}.json`), JSON.stringify({ ...rec, volumeId: id }));
        await copyFile(model.artifact.path, join(root, `${id}.qcow2`));
      }),
    );
    // qemu-img create waits at a gate, opened once the list has started.
    let open: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const gated: ToolRunner = {
      async run(tool, argv, opts) {
        if (argv[0] === "create") await gate;
        return runner.run(tool, argv, opts);
      },
    };
    const fresh = createDirDriver({ poolName: "local", root, runner: gated });
    expect((await fresh.capacity()).provisionedBytes).toBe(401n * MiB);
    const late = spec(64n * MiB);
    const creating = fresh.createVolume(late);
    const listing = fresh.list();
    setTimeout(open, 5);
    await Promise.all([creating, listing]);
    expect((await fresh.capacity()).provisionedBytes).toBe(465n * MiB);
    expect((await fresh.list()).volumes).toHaveLength(402);
  });
});
