import { mkdir, mkdtemp, readdir, readFile, rm, stat, statfs, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { newId, StowageError } from "@stowage/core";
import {
  createDirDriver,
  createToolRunner,
  DIR_META,
  type PoolDriver,
  type ToolInvocationEvent,
  type ToolRunner,
} from "@stowage/drivers/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

// These tests run the real qemu-img: nothing about it is mocked.

const MiB = 1024n * 1024n;
let root: string;
let events: ToolInvocationEvent[];
let runner: ToolRunner;
let driver: PoolDriver;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "stowage-dir-"));
  events = [];
  runner = createToolRunner({ onInvocation: (e) => events.push(e) });
  driver = createDirDriver({ poolName: "local", root, runner });
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A second, independent look at an image: raw qemu-img JSON, not our parser. */
// biome-ignore lint/suspicious/noExplicitAny: qemu's JSON as is, indexed freely by the assertions
async function qemuInfo(path: string, format: string): Promise<Record<string, any>> {
  const { stdout } = await createToolRunner().run("qemu-img", ["info", "--output=json", "-f", format, path]);
  return JSON.parse(stdout);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

const sidecar = (id: string) => join(root, DIR_META, `${id}.json`);

async function rejection(p: Promise<unknown>): Promise<StowageError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(StowageError);
  return e as StowageError;
}

describe("dir driver: create", () => {
  it("creates a raw volume", async () => {
    const volumeId = newId("vol");
    const operationId = newId("op");
    const { artifact, adopted } = await driver.createVolume({
      volumeId,
      operationId,
      sizeBytes: 64n * MiB,
      format: "raw",
    });
    expect(adopted).toBe(false);
    const path = join(root, `${volumeId}.raw`);
    expect(artifact).toEqual({
      volumeId,
      poolName: "local",
      sizeBytes: 64n * MiB,
      format: "raw",
      allocatedBytes: expect.any(BigInt),
      path,
      operationId,
    });
    const info = await qemuInfo(path, "raw");
    expect(info["virtual-size"]).toBe(64 * 1024 * 1024);
    expect(info.format).toBe("raw");
    const rec = JSON.parse(await readFile(sidecar(volumeId), "utf8"));
    expect(rec).toEqual({
      volumeId,
      operationId,
      format: "raw",
      sizeBytes: String(64n * MiB),
      createdAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
    });
    expect(await readdir(join(root, DIR_META))).toEqual([`${volumeId}.json`]);
  });

  it("creates a qcow2 volume with every option set", async () => {
    const volumeId = newId("vol");
    await driver.createVolume({
      volumeId,
      operationId: newId("op"),
      sizeBytes: 256n * MiB,
      format: "qcow2",
      qcow2: {
        clusterSize: 128 * 1024,
        preallocation: "metadata",
        lazyRefcounts: true,
        compressionType: "zstd",
        extendedL2: true,
      },
    });
    const info = await qemuInfo(join(root, `${volumeId}.qcow2`), "qcow2");
    expect(info["virtual-size"]).toBe(256 * 1024 * 1024);
    expect(info.format).toBe("qcow2");
    expect(info["cluster-size"]).toBe(128 * 1024);
    expect(info["format-specific"].data).toMatchObject({
      "lazy-refcounts": true,
      "compression-type": "zstd",
      "extended-l2": true,
    });
    // Metadata preallocation writes the L2 tables up front: far more than an empty qcow2's few hundred KiB.
    const plainId = newId("vol");
    await driver.createVolume({
      volumeId: plainId,
      operationId: newId("op"),
      sizeBytes: 256n * MiB,
      format: "qcow2",
    });
    const plain = await qemuInfo(join(root, `${plainId}.qcow2`), "qcow2");
    expect(info["actual-size"]).toBeGreaterThan(plain["actual-size"]);
    expect(plain["format-specific"].data).toMatchObject({
      "lazy-refcounts": false,
      "compression-type": "zlib",
    });
  });

  it("applies pool qcow2 defaults under the request's options", async () => {
    const d = createDirDriver({
      poolName: "local",
      root,
      runner,
      qcow2Defaults: { lazyRefcounts: true, clusterSize: 256 * 1024 },
    });
    const a = newId("vol");
    await d.createVolume({ volumeId: a, operationId: newId("op"), sizeBytes: 64n * MiB, format: "qcow2" });
    const b = newId("vol");
    await d.createVolume({
      volumeId: b,
      operationId: newId("op"),
      sizeBytes: 64n * MiB,
      format: "qcow2",
      qcow2: { clusterSize: 65536 },
    });
    const r = newId("vol");
    // Defaults are qcow2 options: a raw volume must not inherit them (and fail on cluster size).
    await d.createVolume({ volumeId: r, operationId: newId("op"), sizeBytes: 64n * MiB, format: "raw" });
    const ia = await qemuInfo(join(root, `${a}.qcow2`), "qcow2");
    const ib = await qemuInfo(join(root, `${b}.qcow2`), "qcow2");
    expect([ia["cluster-size"], ia["format-specific"].data["lazy-refcounts"]]).toEqual([256 * 1024, true]);
    expect([ib["cluster-size"], ib["format-specific"].data["lazy-refcounts"]]).toEqual([65536, true]);
  });

  it("makes one file for the same create repeated 10 times, later calls adopt it", async () => {
    const spec = {
      volumeId: newId("vol"),
      operationId: newId("op"),
      sizeBytes: 64n * MiB,
      format: "qcow2" as const,
    };
    const results = [];
    for (let i = 0; i < 10; i++) results.push(await driver.createVolume(spec));
    expect(results.map((r) => r.adopted)).toEqual([false, ...Array(9).fill(true)]);
    expect(new Set(results.map((r) => r.artifact.path)).size).toBe(1);
    expect(events.filter((e) => e.argv[0] === "create")).toHaveLength(1);
    expect(await readdir(root)).toEqual([`${spec.volumeId}.qcow2`, DIR_META].sort());
    expect(await readdir(join(root, DIR_META))).toEqual([`${spec.volumeId}.json`]);
  });

  it("makes one file when the same create arrives 10 times at once", async () => {
    const spec = {
      volumeId: newId("vol"),
      operationId: newId("op"),
      sizeBytes: 64n * MiB,
      format: "raw" as const,
    };
    const results = await Promise.all(Array.from({ length: 10 }, () => driver.createVolume(spec)));
    expect(results.filter((r) => !r.adopted)).toHaveLength(1);
    expect(events.filter((e) => e.argv[0] === "create")).toHaveLength(1);
    expect((await driver.list()).volumes).toHaveLength(1);
  });

  it("finishes a create that crashed after the intent and a partial temp image", async () => {
    const volumeId = newId("vol");
    const operationId = newId("op");
    // The state a crash mid-`qemu-img create` leaves: the record, a half-written temp image, no final file.
    await mkdir(join(root, DIR_META));
    await writeFile(
      sidecar(volumeId),
      JSON.stringify({
        volumeId,
        operationId,
        format: "qcow2",
        sizeBytes: String(64n * MiB),
        createdAt: "2026-01-01T00:00:00.000Z",
      }),
    );
    const tmp = join(root, DIR_META, `tmp-${volumeId}.qcow2`);
    await writeFile(tmp, "QFI\xfbhalf an image");
    expect(await driver.info(volumeId)).toBeUndefined();
    expect((await driver.list()).volumes).toEqual([]);

    const { artifact, adopted } = await driver.createVolume({
      volumeId,
      operationId,
      sizeBytes: 64n * MiB,
      format: "qcow2",
    });
    expect(adopted).toBe(false);
    expect(await exists(tmp)).toBe(false);
    expect((await qemuInfo(artifact.path, "qcow2"))["virtual-size"]).toBe(64 * 1024 * 1024);
    expect(await readdir(join(root, DIR_META))).toEqual([`${volumeId}.json`]);
  });

  it("adopts an image that was made but whose result was never sent", async () => {
    const spec = {
      volumeId: newId("vol"),
      operationId: newId("op"),
      sizeBytes: 64n * MiB,
      format: "qcow2" as const,
    };
    const first = await driver.createVolume(spec);
    const before = await stat(first.artifact.path);
    // A new agent process (the old one died before publishing the result) gets the redelivered operation.
    const again = createDirDriver({ poolName: "local", root, runner });
    const second = await again.createVolume(spec);
    expect(second.adopted).toBe(true);
    expect(second.artifact).toEqual(first.artifact);
    const after = await stat(first.artifact.path);
    expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);
  });

  it("refuses a create that conflicts with what exists", async () => {
    const volumeId = newId("vol");
    const operationId = newId("op");
    await driver.createVolume({ volumeId, operationId, sizeBytes: 64n * MiB, format: "qcow2" });

    const fmt = await rejection(
      driver.createVolume({ volumeId, operationId: newId("op"), sizeBytes: 64n * MiB, format: "raw" }),
    );
    expect(fmt.code).toBe("already_exists");
    expect(fmt.message).toMatch(
      new RegExp(
        `volume ${volumeId} already exists in pool local as qcow2 64 MiB \\(operation op-[0-9a-f]+\\); this request asks for raw 64 MiB`,
      ),
    );
    const size = await rejection(
      driver.createVolume({ volumeId, operationId: newId("op"), sizeBytes: 128n * MiB, format: "qcow2" }),
    );
    expect(size.code).toBe("already_exists");
    // The same operation redelivered after a resize still converges instead of failing.
    await driver.resizeVolume(volumeId, 128n * MiB, { allowShrink: false, operationId: newId("op") });
    const redelivered = await driver.createVolume({
      volumeId,
      operationId,
      sizeBytes: 64n * MiB,
      format: "qcow2",
    });
    expect(redelivered).toMatchObject({ adopted: true, artifact: { sizeBytes: 128n * MiB } });
    expect(await readdir(root)).toEqual([`${volumeId}.qcow2`, DIR_META].sort());
  });

  it("never takes over a file that has no ownership record", async () => {
    const volumeId = newId("vol");
    const path = join(root, `${volumeId}.raw`);
    await writeFile(path, "someone else's data");
    const e = await rejection(
      driver.createVolume({ volumeId, operationId: newId("op"), sizeBytes: 64n * MiB, format: "raw" }),
    );
    expect(e.code).toBe("already_exists");
    expect(e.message).toMatch(/without a matching Stowage ownership record; refusing to take it over/);
    expect(await readFile(path, "utf8")).toBe("someone else's data");
    expect(await exists(sidecar(volumeId))).toBe(false);
    const d = await rejection(driver.deleteVolume(volumeId));
    expect(d.code).toBe("failed_precondition");
    expect(await readFile(path, "utf8")).toBe("someone else's data");
  });

  it("refuses bad options and sizes before touching the disk", async () => {
    const volumeId = newId("vol");
    const base = { volumeId, operationId: newId("op"), format: "qcow2" as const };
    for (const bad of [
      { ...base, sizeBytes: 1000n },
      { ...base, sizeBytes: 0n },
      { ...base, sizeBytes: 64n * MiB, qcow2: { clusterSize: 3000 } },
      { ...base, sizeBytes: 64n * MiB, qcow2: { extendedL2: true, clusterSize: 4096 } },
      {
        ...base,
        format: "raw" as const,
        sizeBytes: 64n * MiB,
        qcow2: { preallocation: "metadata" as const },
      },
      { ...base, format: "vmdk" as never, sizeBytes: 64n * MiB },
      { ...base, operationId: "op-1; rm -rf /", sizeBytes: 64n * MiB },
    ]) {
      expect((await rejection(driver.createVolume(bad))).code).toBe("invalid_argument");
    }
    expect(events).toEqual([]);
    expect(await readdir(root)).toEqual([]);
  });

  it("fails cleanly when the pool root is gone", async () => {
    const d = createDirDriver({ poolName: "gone", root: join(root, "missing"), runner });
    const e = await rejection(
      d.createVolume({
        volumeId: newId("vol"),
        operationId: newId("op"),
        sizeBytes: 64n * MiB,
        format: "raw",
      }),
    );
    expect(e.code).toBe("failed_precondition");
    expect(e.message).toMatch(/root .*missing does not exist/);
    expect(await readdir(root)).toEqual([]);
  });
});

describe("dir driver: ids", () => {
  const hex = "0123456789abcdef0123456789abcdef";
  it.each([
    "../etc/passwd",
    "/etc/passwd",
    `vol-${hex}/../../x`,
    `vol-../${hex.slice(3)}`,
    `vol-${hex}.qcow2`,
    `vol-${hex.toUpperCase()}`,
    `vol-${hex.slice(1)}`,
    `op-${hex}`,
    `vol-${hex}; rm -rf /`,
    "$(touch /tmp/x)",
    "",
  ])("refuses %j before touching the disk", async (id) => {
    const op = newId("op");
    const calls = [
      () => driver.createVolume({ volumeId: id, operationId: op, sizeBytes: 64n * MiB, format: "raw" }),
      () => driver.deleteVolume(id),
      () => driver.resizeVolume(id, 128n * MiB, { allowShrink: true, operationId: op }),
      () => driver.info(id),
    ];
    for (const call of calls) {
      const e = await rejection(call());
      expect(e.code).toBe("invalid_argument");
      expect(e.message).toMatch(/volume id .* is not valid: expected vol- followed by 32 hex digits/);
    }
    expect(events).toEqual([]);
    expect(await readdir(root)).toEqual([]);
  });
});

describe("dir driver: delete", () => {
  it("removes the image and its record, and repeated deletes succeed", async () => {
    const volumeId = newId("vol");
    const { artifact } = await driver.createVolume({
      volumeId,
      operationId: newId("op"),
      sizeBytes: 64n * MiB,
      format: "qcow2",
    });
    expect(await driver.deleteVolume(volumeId, { operationId: newId("op") })).toEqual({ existed: true });
    expect(await exists(artifact.path)).toBe(false);
    expect(await exists(sidecar(volumeId))).toBe(false);
    expect(await driver.deleteVolume(volumeId)).toEqual({ existed: false });
    expect(await driver.deleteVolume(volumeId)).toEqual({ existed: false });
    expect(await driver.info(volumeId)).toBeUndefined();
  });

  it("succeeds for a volume that never existed, and cleans up an unfinished create", async () => {
    expect(await driver.deleteVolume(newId("vol"))).toEqual({ existed: false });
    const volumeId = newId("vol");
    await mkdir(join(root, DIR_META));
    await writeFile(
      sidecar(volumeId),
      JSON.stringify({ volumeId, operationId: newId("op"), format: "raw", sizeBytes: "512", createdAt: "x" }),
    );
    await writeFile(join(root, DIR_META, `tmp-${volumeId}.raw`), "partial");
    expect(await driver.deleteVolume(volumeId)).toEqual({ existed: false });
    expect(await readdir(join(root, DIR_META))).toEqual([]);
  });
});

describe("dir driver: resize", () => {
  it.each(["qcow2", "raw"] as const)(
    "grows a %s volume, converges on repeats, shrinks only when allowed",
    async (format) => {
      const volumeId = newId("vol");
      const { artifact } = await driver.createVolume({
        volumeId,
        operationId: newId("op"),
        sizeBytes: 64n * MiB,
        format,
      });
      const op = newId("op");
      const grown = await driver.resizeVolume(volumeId, 128n * MiB, { allowShrink: false, operationId: op });
      expect(grown.sizeBytes).toBe(128n * MiB);
      expect((await qemuInfo(artifact.path, format))["virtual-size"]).toBe(128 * 1024 * 1024);

      const resizes = () => events.filter((e) => e.argv[0] === "resize").length;
      expect(resizes()).toBe(1);
      const again = await driver.resizeVolume(volumeId, 128n * MiB, { allowShrink: false, operationId: op });
      expect(again).toEqual(grown);
      expect(resizes()).toBe(1);

      const e = await rejection(
        driver.resizeVolume(volumeId, 32n * MiB, { allowShrink: false, operationId: newId("op") }),
      );
      expect(e.code).toBe("failed_precondition");
      expect(e.message).toMatch(/shrinking volume .* from 128 MiB to 32 MiB would discard the data/);
      expect((await qemuInfo(artifact.path, format))["virtual-size"]).toBe(128 * 1024 * 1024);

      const shrunk = await driver.resizeVolume(volumeId, 32n * MiB, {
        allowShrink: true,
        operationId: newId("op"),
      });
      expect(shrunk.sizeBytes).toBe(32n * MiB);
      expect((await qemuInfo(artifact.path, format))["virtual-size"]).toBe(32 * 1024 * 1024);
    },
  );

  it("reports a missing volume as not found", async () => {
    const e = await rejection(
      driver.resizeVolume(newId("vol"), 128n * MiB, { allowShrink: false, operationId: newId("op") }),
    );
    expect(e.code).toBe("not_found");
  });
});

describe("dir driver: inventory", () => {
  it("lists owned volumes and names foreign files", async () => {
    const a = newId("vol");
    const b = newId("vol");
    await driver.createVolume({
      volumeId: a,
      operationId: newId("op"),
      sizeBytes: 64n * MiB,
      format: "qcow2",
    });
    await driver.createVolume({
      volumeId: b,
      operationId: newId("op"),
      sizeBytes: 128n * MiB,
      format: "raw",
    });
    const stray = newId("vol");
    await writeFile(join(root, `${stray}.qcow2`), "not ours"); // our naming, no record
    await writeFile(join(root, `${a}.raw`), "record says qcow2"); // our id, wrong format
    await writeFile(join(root, "notes.txt"), "hi");
    await mkdir(join(root, "lost+found"));
    // An unfinished create is neither a volume nor foreign.
    const pending = newId("vol");
    await writeFile(
      sidecar(pending),
      JSON.stringify({
        volumeId: pending,
        operationId: newId("op"),
        format: "raw",
        sizeBytes: "512",
        createdAt: "x",
      }),
    );

    const { volumes, foreign } = await driver.list();
    expect(volumes.map((v) => [v.volumeId, v.format, v.sizeBytes])).toEqual(
      [
        [a, "qcow2", 64n * MiB],
        [b, "raw", 128n * MiB],
      ].sort((x, y) => String(x[0]).localeCompare(String(y[0]))),
    );
    expect(foreign).toEqual([`${a}.raw`, `${stray}.qcow2`, "notes.txt"].sort());
  });

  it("reports sane capacity with provisioned = sum of virtual sizes", async () => {
    const empty = await driver.capacity();
    expect(empty.provisionedBytes).toBe(0n);
    await driver.createVolume({
      volumeId: newId("vol"),
      operationId: newId("op"),
      sizeBytes: 64n * MiB,
      format: "qcow2",
    });
    await driver.createVolume({
      volumeId: newId("vol"),
      operationId: newId("op"),
      sizeBytes: 128n * MiB,
      format: "raw",
    });
    const c = await driver.capacity();
    expect(c.provisionedBytes).toBe(192n * MiB);
    expect(c.totalBytes).toBeGreaterThan(0n);
    expect(c.totalBytes).toBeGreaterThanOrEqual(c.freeBytes);
    expect(c.totalBytes).toBeGreaterThanOrEqual(c.usedBytes);
    expect(c.usedBytes).toBeGreaterThanOrEqual(0n);
    expect(c.usedBytes + c.freeBytes).toBeLessThanOrEqual(c.totalBytes);
    const s = await statfs(root, { bigint: true });
    expect(c.totalBytes).toBe(s.blocks * s.bsize);
  });

  it("info returns the artefact, or undefined for an unknown volume", async () => {
    const volumeId = newId("vol");
    const { artifact } = await driver.createVolume({
      volumeId,
      operationId: newId("op"),
      sizeBytes: 64n * MiB,
      format: "qcow2",
    });
    expect(await driver.info(volumeId)).toEqual(artifact);
    expect(await driver.info(newId("vol"))).toBeUndefined();
  });

  it("checks the root and the tool", async () => {
    expect(await driver.check()).toEqual({
      healthy: true,
      message: expect.stringMatching(/is usable \(qemu-img version 7\./),
    });
    const missing = await createDirDriver({ poolName: "x", root: join(root, "nope"), runner }).check();
    expect(missing).toEqual({ healthy: false, message: expect.stringMatching(/does not exist/) });
    await writeFile(join(root, "file"), "");
    const notDir = await createDirDriver({ poolName: "x", root: join(root, "file"), runner }).check();
    expect(notDir).toEqual({ healthy: false, message: expect.stringMatching(/is not a directory/) });
    expect(() => createDirDriver({ poolName: "x", root: "relative/dir", runner })).toThrow(
      /must be an absolute path/,
    );
    expect(() => createDirDriver({ poolName: "../x", root, runner })).toThrow(/pool name/);
  });
});
