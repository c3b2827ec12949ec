import { link, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { newId, StowageError } from "@stowage/core";
import {
  createDirDriver,
  createToolRunner,
  DIR_META,
  type DirDriverOptions,
  type PoolDriver,
  readPattern,
  type ToolInvocationEvent,
  type ToolRunner,
  type VolumeArtifact,
  writePattern,
} from "@stowage/drivers/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

// What the conformance suite cannot see from outside: the files a dir pool makes for snapshots, clones,
// flatten and wipes, and how they fail. Real qemu-img and qemu-io throughout.

const MiB = 1024n * 1024n;
let root: string;
let events: ToolInvocationEvent[];
let runner: ToolRunner;
let driver: PoolDriver;

function make(extra: Partial<DirDriverOptions> = {}): PoolDriver {
  return createDirDriver({ poolName: "local", root, runner, ...extra });
}

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "stowage-dir-snap-"));
  events = [];
  runner = createToolRunner({ onInvocation: (e) => events.push(e) });
  driver = make();
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const meta = (name: string) => join(root, DIR_META, name);
const op = () => ({ operationId: newId("op") });

// biome-ignore lint/suspicious/noExplicitAny: qemu's JSON as is, indexed freely by the assertions
async function qemuInfo(path: string, format = "qcow2"): Promise<Record<string, any>> {
  const { stdout } = await createToolRunner().run("qemu-img", [
    "info",
    "--output=json",
    "-U",
    "-f",
    format,
    path,
  ]);
  return JSON.parse(stdout);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function rejection(p: Promise<unknown>): Promise<StowageError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(StowageError);
  return e as StowageError;
}

async function volume(format: "qcow2" | "raw" = "qcow2", sizeBytes = 64n * MiB): Promise<VolumeArtifact> {
  const { artifact } = await driver.createVolume({ volumeId: newId("vol"), ...op(), sizeBytes, format });
  return artifact;
}

const fill = (a: VolumeArtifact, pattern: number, offset = 0n) =>
  writePattern(["-f", a.format, a.path], undefined, { pattern, offset, length: MiB });
const holds = (a: VolumeArtifact, pattern: number, offset = 0n) =>
  readPattern(["-f", a.format, a.path], undefined, { pattern, offset, length: MiB });

describe("dir driver: snapshots", () => {
  it("refuses to snapshot a raw volume, and says to use qcow2", async () => {
    const a = await volume("raw");
    const snap = newId("snap");
    const e = await rejection(driver.createSnapshot(a.volumeId, snap, op()));
    expect(e.code).toBe("failed_precondition");
    expect(e.message).toBe(`volume ${a.volumeId}: raw volumes in dir pools cannot be snapshotted; use qcow2`);
    expect((await rejection(driver.revertSnapshot(a.volumeId, snap, op()))).code).toBe("failed_precondition");
    expect(await driver.listSnapshots(a.volumeId)).toEqual([]);
    expect(await driver.deleteSnapshot(a.volumeId, snap, op())).toEqual({ existed: false });
  });

  it("makes an internal snapshot tagged with the snapshot id, recorded in the volume's sidecar", async () => {
    const a = await volume();
    const snap = newId("snap");
    const operationId = newId("op");
    const { snapshot, adopted } = await driver.createSnapshot(a.volumeId, snap, { operationId });
    expect(adopted).toBe(false);
    expect(snapshot).toEqual({
      snapshotId: snap,
      volumeId: a.volumeId,
      sizeBytes: 64n * MiB,
      createdAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      operationId,
    });
    expect((await qemuInfo(a.path)).snapshots.map((s: { name: string }) => s.name)).toEqual([snap]);
    const rec = JSON.parse(await readFile(meta(`${a.volumeId}.json`), "utf8"));
    expect(rec.snapshots).toEqual([
      { snapshotId: snap, operationId, sizeBytes: String(64n * MiB), createdAt: snapshot.createdAt },
    ]);
    expect(await driver.listSnapshots(a.volumeId)).toEqual([snapshot]);

    expect(await driver.deleteSnapshot(a.volumeId, snap, op())).toEqual({ existed: true });
    expect((await qemuInfo(a.path)).snapshots).toBeUndefined();
    // Back to the short record of a volume without snapshots.
    expect(Object.keys(JSON.parse(await readFile(meta(`${a.volumeId}.json`), "utf8"))).sort()).toEqual([
      "createdAt",
      "format",
      "operationId",
      "sizeBytes",
      "volumeId",
    ]);
  });

  it("finishes a snapshot that crashed after its record, and adopts a tag whose record was lost", async () => {
    const a = await volume();
    const recPath = meta(`${a.volumeId}.json`);
    const plain = JSON.parse(await readFile(recPath, "utf8"));
    // Crash after the intent, before qemu-img snapshot -c: a record without a tag, which list ignores.
    const s1 = newId("snap");
    await writeFile(
      recPath,
      JSON.stringify({
        ...plain,
        snapshots: [
          { snapshotId: s1, operationId: newId("op"), sizeBytes: "1", createdAt: "2026-01-01T00:00:00Z" },
        ],
      }),
    );
    expect(await driver.listSnapshots(a.volumeId)).toEqual([]);
    const r1 = await driver.createSnapshot(a.volumeId, s1, op());
    expect(r1.adopted).toBe(false);
    expect(r1.snapshot.sizeBytes).toBe(64n * MiB);
    // A tag with one of our ids but no record (a record write lost): adopted, and recorded now.
    const s2 = newId("snap");
    await runner.run("qemu-img", ["snapshot", "-c", s2, a.path]);
    const r2 = await driver.createSnapshot(a.volumeId, s2, op());
    expect(r2.adopted).toBe(true);
    expect((await driver.listSnapshots(a.volumeId)).map((s) => s.snapshotId).sort()).toEqual([s1, s2].sort());
  });

  it("reports missing volumes and snapshots as not found", async () => {
    const a = await volume();
    expect((await rejection(driver.createSnapshot(newId("vol"), newId("snap"), op()))).code).toBe(
      "not_found",
    );
    expect((await rejection(driver.listSnapshots(newId("vol")))).code).toBe("not_found");
    expect((await rejection(driver.revertSnapshot(a.volumeId, newId("snap"), op()))).code).toBe("not_found");
    expect(await driver.deleteSnapshot(newId("vol"), newId("snap"), op())).toEqual({ existed: false });
  });
});

describe("dir driver: clones", () => {
  it("exports a snapshot once into a read-only base image and puts every clone of it on top", async () => {
    const a = await volume();
    await fill(a, 0xa1);
    const snap = newId("snap");
    await driver.createSnapshot(a.volumeId, snap, op());
    await fill(a, 0xb2);
    const c1 = (
      await driver.cloneVolume({
        volumeId: newId("vol"),
        ...op(),
        sourceVolumeId: a.volumeId,
        sourceSnapshotId: snap,
        format: "qcow2",
      })
    ).artifact;
    const c2 = (
      await driver.cloneVolume({
        volumeId: newId("vol"),
        ...op(),
        sourceVolumeId: a.volumeId,
        sourceSnapshotId: snap,
        format: "qcow2",
      })
    ).artifact;
    const base = meta(`base-${snap}.qcow2`);
    expect((await stat(base)).mode & 0o777).toBe(0o444);
    expect(JSON.parse(await readFile(meta(`base-${snap}.json`), "utf8"))).toEqual({
      snapshotId: snap,
      sourceVolumeId: a.volumeId,
      operationId: expect.stringMatching(/^op-/),
      createdAt: expect.any(String),
    });
    for (const c of [c1, c2]) {
      const i = await qemuInfo(c.path);
      expect([i["backing-filename"], i["backing-filename-format"]]).toEqual([base, "qcow2"]);
      expect(await holds(c, 0xa1)).toBe(true);
    }
    expect(events.filter((e) => e.argv[0] === "convert")).toHaveLength(1);
    expect(JSON.parse(await readFile(meta(`${c1.volumeId}.json`), "utf8")).clone).toEqual({
      sourceVolumeId: a.volumeId,
      sourceSnapshotId: snap,
    });
    // Bases are not volumes: neither listed nor foreign, nor provisioned.
    const { volumes, foreign } = await driver.list();
    expect(volumes.map((v) => v.volumeId).sort()).toEqual([a.volumeId, c1.volumeId, c2.volumeId].sort());
    expect(foreign).toEqual([]);
    expect((await driver.capacity()).provisionedBytes).toBe(3n * 64n * MiB);
  });

  it("refuses to delete a snapshot, or its volume, while clones stand on its base; then removes the base", async () => {
    const a = await volume();
    const snap = newId("snap");
    await driver.createSnapshot(a.volumeId, snap, op());
    const c = (
      await driver.cloneVolume({
        volumeId: newId("vol"),
        ...op(),
        sourceVolumeId: a.volumeId,
        sourceSnapshotId: snap,
        format: "qcow2",
      })
    ).artifact;

    const e = await rejection(driver.deleteSnapshot(a.volumeId, snap, op()));
    expect(e.code).toBe("failed_precondition");
    expect(e.message).toBe(
      `snapshot ${snap} of volume ${a.volumeId} has clones that depend on it (clone ${c.volumeId}); flatten or delete them first`,
    );
    const v = await rejection(driver.deleteVolume(a.volumeId));
    expect(v.code).toBe("failed_precondition");
    expect(v.message).toMatch(new RegExp(`clone ${c.volumeId} depend on; flatten or delete them first`));
    expect(await exists(a.path)).toBe(true);
    expect((await driver.listSnapshots(a.volumeId)).map((s) => s.snapshotId)).toEqual([snap]);

    await driver.deleteVolume(c.volumeId);
    expect(await driver.deleteSnapshot(a.volumeId, snap, op())).toEqual({ existed: true });
    expect(await exists(meta(`base-${snap}.qcow2`))).toBe(false);
    expect(await exists(meta(`base-${snap}.json`))).toBe(false);
  });

  it("removes the bases of a deleted volume's snapshots when nothing uses them", async () => {
    const a = await volume();
    const snap = newId("snap");
    await driver.createSnapshot(a.volumeId, snap, op());
    const c = (
      await driver.cloneVolume({
        volumeId: newId("vol"),
        ...op(),
        sourceVolumeId: a.volumeId,
        sourceSnapshotId: snap,
        format: "qcow2",
      })
    ).artifact;
    await driver.flattenVolume(c.volumeId, op());
    expect(await driver.deleteVolume(a.volumeId)).toEqual({ existed: true });
    expect(await readdir(join(root, DIR_META))).toEqual([`${c.volumeId}.json`]);
  });

  it("clones a volume's current data as a full copy, also into the other format", async () => {
    const a = await volume();
    await fill(a, 0xa1);
    for (const format of ["qcow2", "raw"] as const) {
      const { artifact } = await driver.cloneVolume({
        volumeId: newId("vol"),
        ...op(),
        sourceVolumeId: a.volumeId,
        format,
      });
      expect(artifact.format).toBe(format);
      expect((await qemuInfo(artifact.path, format))["backing-filename"]).toBeUndefined();
      expect(await holds(artifact, 0xa1)).toBe(true);
    }
  });

  it("makes a clone asked for with flatten, or into raw, a full copy of the snapshot at the snapshot's size", async () => {
    const a = await volume();
    await fill(a, 0xa1);
    const snap = newId("snap");
    await driver.createSnapshot(a.volumeId, snap, op());
    await driver.resizeVolume(a.volumeId, 128n * MiB, { allowShrink: false, ...op() });
    await fill(a, 0xb2);
    for (const spec of [{ format: "qcow2" as const, flatten: true }, { format: "raw" as const }]) {
      const { artifact } = await driver.cloneVolume({
        volumeId: newId("vol"),
        ...op(),
        sourceVolumeId: a.volumeId,
        sourceSnapshotId: snap,
        ...spec,
      });
      expect(artifact.sizeBytes).toBe(64n * MiB);
      expect((await qemuInfo(artifact.path, spec.format))["backing-filename"]).toBeUndefined();
      expect(await holds(artifact, 0xa1)).toBe(true);
    }
    expect(await exists(meta(`base-${snap}.qcow2`))).toBe(false);
  });

  it("shares data along chains of clones, up to maxChainDepth, then copies", async () => {
    const d = make({ maxChainDepth: 2 });
    let source = (
      await d.createVolume({ volumeId: newId("vol"), ...op(), sizeBytes: 64n * MiB, format: "qcow2" })
    ).artifact;
    await fill(source, 0xa1);
    const depths: number[] = [];
    for (let level = 1; level <= 3; level++) {
      const snap = newId("snap");
      await d.createSnapshot(source.volumeId, snap, op());
      const c = (
        await d.cloneVolume({
          volumeId: newId("vol"),
          ...op(),
          sourceVolumeId: source.volumeId,
          sourceSnapshotId: snap,
          format: "qcow2",
        })
      ).artifact;
      const { stdout } = await runner.run("qemu-img", [
        "info",
        "--backing-chain",
        "--output=json",
        "-f",
        "qcow2",
        c.path,
      ]);
      depths.push(JSON.parse(stdout).length - 1);
      expect(await holds(c, 0xa1)).toBe(true);
      expect(await holds(c, 0, 8n * MiB * BigInt(level))).toBe(true);
      await fill(c, 0xc0 + level, 8n * MiB * BigInt(level));
      source = c;
    }
    // Level 2's base holds only what level 1 changed, on top of level 1's base; level 3 would be 3 deep.
    expect(depths).toEqual([1, 2, 0]);
    expect(await holds(source, 0xc1, 8n * MiB)).toBe(true);
    expect(await holds(source, 0xc2, 16n * MiB)).toBe(true);
  });

  it("makes every clone a full copy with maxChainDepth 0", async () => {
    const d = make({ maxChainDepth: 0 });
    const a = (
      await d.createVolume({ volumeId: newId("vol"), ...op(), sizeBytes: 64n * MiB, format: "qcow2" })
    ).artifact;
    const snap = newId("snap");
    await d.createSnapshot(a.volumeId, snap, op());
    const c = (
      await d.cloneVolume({
        volumeId: newId("vol"),
        ...op(),
        sourceVolumeId: a.volumeId,
        sourceSnapshotId: snap,
        format: "qcow2",
      })
    ).artifact;
    expect((await qemuInfo(c.path))["backing-filename"]).toBeUndefined();
    expect(() => make({ maxChainDepth: -1 })).toThrow(/maxChainDepth/);
  });

  it("finishes a clone that crashed after its intent, and refuses an id that is taken", async () => {
    const a = await volume();
    await fill(a, 0xa1);
    const volumeId = newId("vol");
    const operationId = newId("op");
    const spec = { volumeId, operationId, sourceVolumeId: a.volumeId, format: "qcow2" as const };
    await writeFile(
      meta(`${volumeId}.json`),
      JSON.stringify({
        volumeId,
        operationId,
        format: "qcow2",
        sizeBytes: String(64n * MiB),
        createdAt: "x",
        clone: { sourceVolumeId: a.volumeId },
      }),
    );
    await writeFile(meta(`tmp-${volumeId}.qcow2`), "half a copy");
    const { artifact, adopted } = await driver.cloneVolume(spec);
    expect(adopted).toBe(false);
    expect(await holds(artifact, 0xa1)).toBe(true);
    expect(await exists(meta(`tmp-${volumeId}.qcow2`))).toBe(false);
    expect((await driver.cloneVolume(spec)).adopted).toBe(true);

    const other = await volume();
    const e = await rejection(driver.cloneVolume({ ...spec, sourceVolumeId: other.volumeId }));
    expect(e.code).toBe("already_exists");
    expect((await rejection(driver.cloneVolume({ ...spec, volumeId: other.volumeId }))).code).toBe(
      "already_exists",
    );
    expect(
      (await rejection(driver.createVolume({ volumeId, operationId, sizeBytes: 64n * MiB, format: "qcow2" })))
        .code,
    ).toBe("already_exists");
    expect((await rejection(driver.cloneVolume({ ...spec, volumeId: a.volumeId }))).code).toBe(
      "invalid_argument",
    );
  });
});

describe("dir driver: flatten", () => {
  it("copies the backing data into the clone in place and converges", async () => {
    const a = await volume();
    await fill(a, 0xa1);
    const snap = newId("snap");
    await driver.createSnapshot(a.volumeId, snap, op());
    const c = (
      await driver.cloneVolume({
        volumeId: newId("vol"),
        ...op(),
        sourceVolumeId: a.volumeId,
        sourceSnapshotId: snap,
        format: "qcow2",
      })
    ).artifact;
    const inode = (await stat(c.path)).ino;
    await driver.flattenVolume(c.volumeId, op());
    expect((await qemuInfo(c.path))["backing-filename"]).toBeUndefined();
    expect((await stat(c.path)).ino).toBe(inode);
    expect(await holds(c, 0xa1)).toBe(true);
    const rebases = events.filter((e) => e.argv[0] === "rebase").length;
    await driver.flattenVolume(c.volumeId, op());
    expect(events.filter((e) => e.argv[0] === "rebase").length).toBe(rebases);
    // The base stays with its snapshot, for later clones; it goes when the snapshot does.
    expect(await exists(meta(`base-${snap}.qcow2`))).toBe(true);
    await driver.deleteSnapshot(a.volumeId, snap, op());
    expect(await exists(meta(`base-${snap}.qcow2`))).toBe(false);
  });

  it("refuses to flatten a clone with internal snapshots, whose data would change", async () => {
    const a = await volume();
    const snap = newId("snap");
    await driver.createSnapshot(a.volumeId, snap, op());
    const c = (
      await driver.cloneVolume({
        volumeId: newId("vol"),
        ...op(),
        sourceVolumeId: a.volumeId,
        sourceSnapshotId: snap,
        format: "qcow2",
      })
    ).artifact;
    const cs = newId("snap");
    await driver.createSnapshot(c.volumeId, cs, op());
    const e = await rejection(driver.flattenVolume(c.volumeId, op()));
    expect(e.code).toBe("failed_precondition");
    expect(e.message).toMatch(
      new RegExp(`internal snapshots \\(${cs}\\) that read through its backing file`),
    );
    expect((await qemuInfo(c.path))["backing-filename"]).toBe(meta(`base-${snap}.qcow2`));
  });
});

describe("dir driver: wipe on delete", () => {
  // A hard link keeps the inode alive after the unlink, so the test can look at what the wipe left in it.
  async function deletedContent(a: VolumeArtifact, wipe: "none" | "zero" | "discard", rate?: number) {
    const keep = join(root, "keep");
    await link(a.path, keep);
    const started = performance.now();
    expect(
      await driver.deleteVolume(a.volumeId, { wipe, ...(rate ? { wipeBytesPerSecond: rate } : {}) }),
    ).toEqual({
      existed: true,
    });
    const ms = performance.now() - started;
    expect(await exists(a.path)).toBe(false);
    const st = await stat(keep);
    return { ms, bytes: await readFile(keep), blocks: st.blocks, size: st.size };
  }

  it("zero overwrites the data the file holds, and only that (a sparse image stays sparse)", async () => {
    const a = await volume("raw", 256n * MiB);
    await fill(a, 0xa1, 0n);
    await fill(a, 0xa1, 200n * MiB);
    const { bytes, blocks, size } = await deletedContent(a, "zero");
    expect(size).toBe(256 * 1024 * 1024);
    expect(bytes.equals(Buffer.alloc(bytes.length))).toBe(true);
    // 2 MiB of data was written; zeroing the holes too would have allocated all 256 MiB.
    expect(blocks * 512).toBeLessThan(8 * 1024 * 1024);
  });

  it("zero is throttled to wipeBytesPerSecond", async () => {
    const a = await volume("raw");
    for (let i = 0n; i < 4n; i++) await fill(a, 0xa1, i * MiB);
    const { ms, bytes } = await deletedContent(a, "zero", 8 * 1024 * 1024);
    // 4 MiB at 8 MiB/s: half a second at least.
    expect(ms).toBeGreaterThanOrEqual(450);
    expect(bytes.equals(Buffer.alloc(bytes.length))).toBe(true);
  });

  it("discard releases every block; none leaves the data to the filesystem", async () => {
    const a = await volume("qcow2");
    await fill(a, 0xa1);
    expect((await deletedContent(a, "discard")).size).toBe(0);
    await rm(join(root, "keep"));
    const b = await volume("raw");
    await fill(b, 0xa1);
    const kept = await deletedContent(b, "none");
    expect(kept.bytes.subarray(0, 4).every((x) => x === 0xa1)).toBe(true);
  });

  it("finishes a wipe that crashed after the image left its name", async () => {
    const a = await volume("raw");
    await fill(a, 0xa1);
    // The state after the rename to trash, before the wipe and unlink.
    await mkdir(join(root, DIR_META), { recursive: true });
    await rename(a.path, meta(`trash-${a.volumeId}.raw`));
    expect(await driver.info(a.volumeId)).toBeUndefined();
    expect(await driver.deleteVolume(a.volumeId, { wipe: "zero" })).toEqual({ existed: true });
    expect(await readdir(join(root, DIR_META))).toEqual([]);
  });

  it("refuses an unknown wipe mode before touching anything", async () => {
    const a = await volume("raw");
    const e = await rejection(driver.deleteVolume(a.volumeId, { wipe: "shred" as never }));
    expect(e.code).toBe("invalid_argument");
    expect(await exists(a.path)).toBe(true);
  });
});
