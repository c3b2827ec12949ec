import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { newId, StowageError } from "@stowage/core";
import {
  createRbdDriver,
  createToolRunner,
  type PoolDriver,
  RBD_META,
  type RbdDriverOptions,
  ToolError,
  type ToolInvocationEvent,
  ToolOutputError,
} from "@stowage/drivers/testing";
import { type CephCluster, cephAvailable, cephToolPath, sleep, startCeph } from "@stowage/testkit";
import { execa } from "execa";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";

// These tests run the real rbd against a real one-node Ceph (one per file, started once): nothing is mocked,
// except in the fault-injection block, where a fake `rbd` first on PATH misbehaves for one subcommand.

const MiB = 1024n * 1024n;
let ceph: CephCluster;
let events: ToolInvocationEvent[];
let driver: PoolDriver;
let options: Omit<RbdDriverOptions, "runner">;

beforeAll(async () => {
  if (!cephAvailable()) return;
  ceph = await startCeph();
  options = {
    poolName: "ceph",
    cephPool: ceph.pool,
    cephConf: ceph.conf,
    cephUser: ceph.id,
    keyring: ceph.keyring,
  };
});
afterAll(async () => {
  await ceph?.stop({ fast: true });
});
beforeEach(() => {
  events = [];
  if (ceph)
    driver = createRbdDriver({
      ...options,
      runner: createToolRunner({ onInvocation: (e) => events.push(e) }),
    });
});

/** rbd run by the test itself, for setting up and looking behind the driver's back. */
async function rbd(...args: string[]): Promise<string> {
  const r = await execa("rbd", ["--conf", ceph.conf, "--id", ceph.id, "--keyring", ceph.keyring, ...args], {
    stdin: "ignore",
  });
  return r.stdout;
}
const images = async (): Promise<string[]> =>
  JSON.parse(await rbd("ls", "--format", "json", ceph.pool)).sort();
const meta = async (image: string): Promise<Record<string, string>> => {
  const out = await rbd("image-meta", "list", "--format", "json", `${ceph.pool}/${image}`);
  return out.trim() === "" ? {} : JSON.parse(out);
};
const snapNames = async (image: string): Promise<{ name: string; protected: string }[]> =>
  JSON.parse(await rbd("snap", "ls", "--format", "json", `${ceph.pool}/${image}`)).map(
    (s: { name: string; protected: string }) => ({ name: s.name, protected: s.protected }),
  );

async function rejection(p: Promise<unknown>): Promise<StowageError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(StowageError);
  return e as StowageError;
}

async function newVolume(sizeBytes = 64n * MiB) {
  const volumeId = newId("vol");
  const operationId = newId("op");
  const { artifact } = await driver.createVolume({ volumeId, operationId, sizeBytes, format: "raw" });
  return { volumeId, operationId, artifact };
}

/** Removes everything the test left, whatever state it is in (the test pool is shared by the whole file). */
async function wipePool(): Promise<void> {
  const all = JSON.parse(await rbd("ls", "-l", "--format", "json", ceph.pool)) as {
    image: string;
    snapshot?: string;
    protected?: string;
    parent?: unknown;
  }[];
  // Clones first, then their parents' snapshots, then the images.
  const heads = all.filter((e) => e.snapshot === undefined);
  for (const e of [...heads.filter((h) => h.parent), ...heads.filter((h) => !h.parent)]) {
    for (const s of all.filter((x) => x.image === e.image && x.snapshot && x.protected === "true")) {
      await rbd("snap", "unprotect", `${ceph.pool}/${e.image}@${s.snapshot}`).catch(() => undefined);
    }
    await rbd("snap", "purge", "--no-progress", `${ceph.pool}/${e.image}`).catch(() => undefined);
    await rbd("rm", "--no-progress", `${ceph.pool}/${e.image}`).catch(() => undefined);
  }
}

/** librbd calls take 0.1-0.7 s each, and a clone test makes dozens of them on a shared 2-core machine. */
const CEPH_TEST = { timeout: 180_000 };

describe.skipIf(!cephAvailable())("rbd driver", CEPH_TEST, () => {
  beforeEach(async () => {
    await wipePool();
  });

  describe("create", () => {
    it("makes a marked raw image under stowage-<id> and leaves no temp image", async () => {
      const { volumeId, operationId, artifact } = await newVolume();
      const image = `stowage-${volumeId}`;
      expect(artifact).toEqual({
        volumeId,
        poolName: "ceph",
        sizeBytes: 64n * MiB,
        format: "raw",
        allocatedBytes: 0n,
        path: `rbd:rbd/${image}`,
        operationId,
      });
      expect(await images()).toEqual([image]);
      expect(await meta(image)).toEqual({
        [RBD_META.volumeId]: volumeId,
        [RBD_META.operationId]: operationId,
      });
      // Made under the temp name, marked, then renamed: the final name only ever holds a complete image.
      const mutations = events.filter((e) => ["create", "rename", "image-meta"].includes(e.argv[0]!));
      expect(mutations.map((e) => [e.argv[0], e.argv[1]])).toEqual([
        ["image-meta", "list"],
        ["create", "--size"],
        ["image-meta", "set"],
        ["image-meta", "set"],
        ["rename", "--conf"],
      ]);
      expect(events.find((e) => e.argv[0] === "create")?.argv.at(-1)).toBe(`rbd/stowage-tmp-${volumeId}`);
    });

    it("never takes over an image that has no ownership metadata, nor deletes it", async () => {
      const volumeId = newId("vol");
      await rbd("create", "--size", "32M", `rbd/stowage-${volumeId}`);
      const e = await rejection(
        driver.createVolume({ volumeId, operationId: newId("op"), sizeBytes: 64n * MiB, format: "raw" }),
      );
      expect(e.code).toBe("already_exists");
      expect(e.message).toMatch(
        /without Stowage ownership metadata \(stowage\.volume-id\); refusing to take it over/,
      );
      expect((await rejection(driver.deleteVolume(volumeId))).code).toBe("failed_precondition");
      expect(await driver.info(volumeId)).toBeUndefined();
      expect(await meta(`stowage-${volumeId}`)).toEqual({});
      expect(await driver.list()).toEqual({ volumes: [], foreign: [`stowage-${volumeId}`] });
    });

    it("removes the temp image a crashed attempt left, marked or not, and finishes the create", async () => {
      const volumeId = newId("vol");
      const operationId = newId("op");
      await rbd("create", "--size", "16M", `rbd/stowage-tmp-${volumeId}`);
      await rbd("image-meta", "set", `rbd/stowage-tmp-${volumeId}`, RBD_META.volumeId, volumeId);
      // An unfinished create is neither a volume nor foreign.
      expect(await driver.list()).toEqual({ volumes: [], foreign: [] });
      expect(await driver.info(volumeId)).toBeUndefined();
      const { artifact, adopted } = await driver.createVolume({
        volumeId,
        operationId,
        sizeBytes: 64n * MiB,
        format: "raw",
      });
      expect(adopted).toBe(false);
      expect(artifact.sizeBytes).toBe(64n * MiB);
      expect(await images()).toEqual([`stowage-${volumeId}`]);
    });

    it("refuses qcow2, qcow2 options and bad sizes before touching the cluster", async () => {
      const base = { volumeId: newId("vol"), operationId: newId("op"), sizeBytes: 64n * MiB };
      for (const bad of [
        { ...base, format: "qcow2" as const },
        { ...base, format: "raw" as const, qcow2: { preallocation: "metadata" as const } },
        { ...base, format: "raw" as const, sizeBytes: 1000n },
        { ...base, format: "raw" as const, sizeBytes: 0n },
      ]) {
        expect((await rejection(driver.createVolume(bad))).code).toBe("invalid_argument");
      }
      expect(events).toEqual([]);
    });
  });

  describe("delete", () => {
    it("removes the image with its snapshots; again it reports existed: false", async () => {
      const { volumeId } = await newVolume();
      await driver.createSnapshot(volumeId, newId("snap"), { operationId: newId("op") });
      await driver.createSnapshot(volumeId, newId("snap"), { operationId: newId("op") });
      expect(await driver.deleteVolume(volumeId, { operationId: newId("op"), wipe: "discard" })).toEqual({
        existed: true,
      });
      expect(await images()).toEqual([]);
      expect(await driver.deleteVolume(volumeId)).toEqual({ existed: false });
    });

    it("refuses wipe zero before touching anything, and says why", async () => {
      const { volumeId } = await newVolume();
      events = [];
      const e = await rejection(driver.deleteVolume(volumeId, { wipe: "zero" }));
      expect(e.code).toBe("invalid_argument");
      expect(e.message).toMatch(/cannot wipe by writing zeros: .* use wipe "discard"/);
      expect(events).toEqual([]);
      expect(await images()).toEqual([`stowage-${volumeId}`]);
    });

    it("refuses to delete a volume that clones depend on, naming them", async () => {
      const { volumeId } = await newVolume();
      const cloneId = newId("vol");
      await driver.cloneVolume({
        volumeId: cloneId,
        operationId: newId("op"),
        sourceVolumeId: volumeId,
        format: "raw",
      });
      const e = await rejection(driver.deleteVolume(volumeId));
      expect(e.code).toBe("failed_precondition");
      expect(e.message).toContain(`clones depend on its snapshot stowage-clone-${cloneId}: ${cloneId}`);
      expect(await images()).toEqual([`stowage-${volumeId}`, `stowage-${cloneId}`].sort());
    });
  });

  describe("inventory", () => {
    it("lists owned volumes with their allocation and names foreign images", async () => {
      const a = await newVolume();
      const b = await newVolume(128n * MiB);
      await execa("qemu-io", [
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 0 8M",
        `${a.artifact.path}:conf=${ceph.conf}`,
      ]);
      await rbd("create", "--size", "1G", "rbd/someone-elses");
      // Our naming, but the marker names another volume (e.g. copied by hand): not ours.
      const stray = newId("vol");
      await rbd("create", "--size", "4M", `rbd/stowage-${stray}`);
      await rbd("image-meta", "set", `rbd/stowage-${stray}`, RBD_META.volumeId, a.volumeId);
      const { volumes, foreign } = await driver.list();
      expect(volumes.map((v) => [v.volumeId, v.sizeBytes, v.allocatedBytes]).sort()).toEqual(
        [
          [a.volumeId, 64n * MiB, 8n * MiB],
          [b.volumeId, 128n * MiB, 0n],
        ].sort(),
      );
      expect(foreign).toEqual(["someone-elses", `stowage-${stray}`].sort());
      expect(await driver.info(a.volumeId)).toEqual(volumes.find((v) => v.volumeId === a.volumeId));
    });

    it("estimates capacity from the OSDs without a mgr, provisioned from owned volumes only", async () => {
      await newVolume();
      await newVolume(128n * MiB);
      await rbd("create", "--size", "1G", "rbd/someone-elses");
      const c = await driver.capacity();
      // 10 GiB OSD × full_ratio 0.95 ÷ 1 replica.
      expect(c.totalBytes).toBe((10n * 1024n * MiB * 950_000n) / 1_000_000n);
      expect(c.provisionedBytes).toBe(192n * MiB);
      expect(c.usedBytes + c.freeBytes).toBe(c.totalBytes);
      const ran = events.map((e) => `${e.tool} ${e.argv[0]}`);
      expect(ran).toContain("ceph df");
      expect(ran).toContain("ceph osd");
    });

    it("checks the pool and reports an unusable one", async () => {
      expect(await driver.check()).toEqual({
        healthy: true,
        message: expect.stringMatching(/^rbd pool ceph \(ceph pool rbd\) is usable \(ceph version 16\./),
      });
      const runner = createToolRunner();
      const noPool = await createRbdDriver({ ...options, cephPool: "nopool", runner }).check();
      expect(noPool).toEqual({
        healthy: false,
        message: expect.stringMatching(/error opening pool 'nopool'/),
      });
      const noNs = await createRbdDriver({ ...options, namespace: "tenant1", runner }).check();
      expect(noNs).toEqual({
        healthy: false,
        message: expect.stringMatching(/namespace 'tenant1' does not exist/),
      });
      expect(() => createRbdDriver({ ...options, cephPool: "rbd/x", runner })).toThrow(/ceph pool/);
      expect(() => createRbdDriver({ ...options, cephConf: "ceph.conf", runner })).toThrow(/absolute path/);
    });

    it("works inside a RADOS namespace", async () => {
      await rbd("namespace", "create", "rbd/tenant1");
      try {
        const ns = createRbdDriver({ ...options, namespace: "tenant1", runner: createToolRunner() });
        const volumeId = newId("vol");
        const { artifact } = await ns.createVolume({
          volumeId,
          operationId: newId("op"),
          sizeBytes: 64n * MiB,
          format: "raw",
        });
        expect(artifact.path).toBe(`rbd:rbd/tenant1/stowage-${volumeId}`);
        expect((await ns.list()).volumes.map((v) => v.volumeId)).toEqual([volumeId]);
        expect((await driver.list()).volumes).toEqual([]);
        // qemu opens the namespaced path as it is.
        const io = await execa("qemu-io", [
          "-f",
          "raw",
          "-c",
          "write 0 64k",
          `${artifact.path}:conf=${ceph.conf}`,
        ]);
        expect(io.stdout).toMatch(/wrote 65536\/65536 bytes/);
        expect(await ns.deleteVolume(volumeId)).toEqual({ existed: true });
      } finally {
        await rbd("namespace", "rm", "rbd/tenant1");
      }
    });
  });

  describe("snapshots", () => {
    it("records each snapshot in the image metadata before taking it", async () => {
      const { volumeId } = await newVolume();
      const snapshotId = newId("snap");
      const operationId = newId("op");
      const at = new Date("2026-01-02T03:04:05.678Z");
      const d = createRbdDriver({ ...options, runner: createToolRunner(), now: () => at });
      const { snapshot, adopted } = await d.createSnapshot(volumeId, snapshotId, { operationId });
      expect(adopted).toBe(false);
      expect(snapshot).toEqual({
        snapshotId,
        volumeId,
        sizeBytes: 64n * MiB,
        createdAt: at.toISOString(),
        operationId,
      });
      expect(
        JSON.parse((await meta(`stowage-${volumeId}`))[`${RBD_META.snapshotPrefix}${snapshotId}`]!),
      ).toEqual({
        operationId,
        createdAt: at.toISOString(),
      });
      expect(await snapNames(`stowage-${volumeId}`)).toEqual([{ name: snapshotId, protected: "false" }]);
      expect(await d.deleteSnapshot(volumeId, snapshotId, { operationId: newId("op") })).toEqual({
        existed: true,
      });
      expect(await meta(`stowage-${volumeId}`)).not.toHaveProperty(`${RBD_META.snapshotPrefix}${snapshotId}`);
    });

    it("does not list, adopt or delete a snapshot it has no record of", async () => {
      const { volumeId } = await newVolume();
      const snapshotId = newId("snap");
      await rbd("snap", "create", "--no-progress", `rbd/stowage-${volumeId}@${snapshotId}`);
      await rbd("snap", "create", "--no-progress", `rbd/stowage-${volumeId}@manual`);
      expect(await driver.listSnapshots(volumeId)).toEqual([]);
      const op = { operationId: newId("op") };
      expect((await rejection(driver.createSnapshot(volumeId, snapshotId, op))).code).toBe("already_exists");
      expect((await rejection(driver.deleteSnapshot(volumeId, snapshotId, op))).code).toBe(
        "failed_precondition",
      );
      expect((await rejection(driver.revertSnapshot(volumeId, snapshotId, op))).code).toBe("not_found");
      expect((await snapNames(`stowage-${volumeId}`)).map((s) => s.name)).toEqual([snapshotId, "manual"]);
    });

    it("finishes a snapshot whose record was written before a crash", async () => {
      const { volumeId } = await newVolume();
      const snapshotId = newId("snap");
      const record = JSON.stringify({ operationId: newId("op"), createdAt: "2026-01-01T00:00:00.000Z" });
      await rbd(
        "image-meta",
        "set",
        `rbd/stowage-${volumeId}`,
        `${RBD_META.snapshotPrefix}${snapshotId}`,
        record,
      );
      expect(await driver.listSnapshots(volumeId)).toEqual([]);
      const { adopted } = await driver.createSnapshot(volumeId, snapshotId, { operationId: newId("op") });
      expect(adopted).toBe(false);
      expect((await driver.listSnapshots(volumeId)).map((s) => s.snapshotId)).toEqual([snapshotId]);
    });

    it("refuses to delete a snapshot that clones depend on, naming them, and deletes it once they are gone", async () => {
      const { volumeId } = await newVolume();
      const snapshotId = newId("snap");
      await driver.createSnapshot(volumeId, snapshotId, { operationId: newId("op") });
      const cloneId = newId("vol");
      await driver.cloneVolume({
        volumeId: cloneId,
        operationId: newId("op"),
        sourceVolumeId: volumeId,
        sourceSnapshotId: snapshotId,
        format: "raw",
      });
      const e = await rejection(driver.deleteSnapshot(volumeId, snapshotId, { operationId: newId("op") }));
      expect(e.code).toBe("failed_precondition");
      expect(e.message).toBe(
        `snapshot ${snapshotId} of volume ${volumeId} cannot be deleted: clones depend on it: ${cloneId}; delete or flatten them first`,
      );
      await driver.deleteVolume(cloneId);
      // Protected for the clone; unprotected and removed now that nothing hangs from it.
      expect(await snapNames(`stowage-${volumeId}`)).toEqual([{ name: snapshotId, protected: "true" }]);
      expect(await driver.deleteSnapshot(volumeId, snapshotId, { operationId: newId("op") })).toEqual({
        existed: true,
      });
      expect(await snapNames(`stowage-${volumeId}`)).toEqual([]);
    });

    it("refuses to revert a volume that a client has open", async () => {
      const { volumeId, artifact } = await newVolume();
      const snapshotId = newId("snap");
      await driver.createSnapshot(volumeId, snapshotId, { operationId: newId("op") });
      // It must exit on its own: a killed client's watch and exclusive lock linger ~30 s, stalling what follows.
      const holder = execa(
        "qemu-io",
        ["-f", "raw", "-c", "sleep 5000", `${artifact.path}:conf=${ceph.conf}`],
        {
          reject: false,
        },
      );
      try {
        for (let i = 0; i < 50; i++) {
          const st = JSON.parse(await rbd("status", "--format", "json", `rbd/stowage-${volumeId}`));
          if (st.watchers.length > 0) break;
          await sleep(100);
        }
        const e = await rejection(driver.revertSnapshot(volumeId, snapshotId, { operationId: newId("op") }));
        expect(e.code).toBe("failed_precondition");
        expect(e.message).toMatch(/is in use \(client\.\d+ 127\.0\.0\.1:.*\); stop the VM before reverting/);
        expect(events.some((ev) => ev.argv[1] === "rollback")).toBe(false);
      } finally {
        await holder;
      }
    });
  });

  describe("clones", () => {
    it("rewrites the marker a clone inherits and drops its source's snapshot records", async () => {
      const { volumeId } = await newVolume();
      const snapshotId = newId("snap");
      await driver.createSnapshot(volumeId, snapshotId, { operationId: newId("op") });
      const cloneId = newId("vol");
      const operationId = newId("op");
      const { artifact } = await driver.cloneVolume({
        volumeId: cloneId,
        operationId,
        sourceVolumeId: volumeId,
        sourceSnapshotId: snapshotId,
        format: "raw",
      });
      expect(artifact).toMatchObject({ volumeId: cloneId, operationId, path: `rbd:rbd/stowage-${cloneId}` });
      expect(await meta(`stowage-${cloneId}`)).toEqual({
        [RBD_META.volumeId]: cloneId,
        [RBD_META.operationId]: operationId,
      });
      expect(await driver.listSnapshots(cloneId)).toEqual([]);
      const info = JSON.parse(await rbd("info", "--format", "json", `rbd/stowage-${cloneId}`));
      expect(info.parent).toMatchObject({ image: `stowage-${volumeId}`, snapshot: snapshotId });
    });

    it("hangs a clone of current data from a hidden snapshot, removed with the clone", async () => {
      const { volumeId } = await newVolume();
      const cloneId = newId("vol");
      await driver.cloneVolume({
        volumeId: cloneId,
        operationId: newId("op"),
        sourceVolumeId: volumeId,
        format: "raw",
      });
      expect(await snapNames(`stowage-${volumeId}`)).toEqual([
        { name: `stowage-clone-${cloneId}`, protected: "true" },
      ]);
      expect(await driver.listSnapshots(volumeId)).toEqual([]);
      expect(await driver.deleteVolume(cloneId)).toEqual({ existed: true });
      expect(await snapNames(`stowage-${volumeId}`)).toEqual([]);
    });

    it("removes the hidden snapshot when the clone is flattened, and with flatten: true at once", async () => {
      const { volumeId } = await newVolume();
      const cloneId = newId("vol");
      await driver.cloneVolume({
        volumeId: cloneId,
        operationId: newId("op"),
        sourceVolumeId: volumeId,
        format: "raw",
      });
      await driver.flattenVolume(cloneId, { operationId: newId("op") });
      expect(await snapNames(`stowage-${volumeId}`)).toEqual([]);
      const flatId = newId("vol");
      await driver.cloneVolume({
        volumeId: flatId,
        operationId: newId("op"),
        sourceVolumeId: volumeId,
        format: "raw",
        flatten: true,
      });
      expect(await snapNames(`stowage-${volumeId}`)).toEqual([]);
      expect(
        JSON.parse(await rbd("info", "--format", "json", `rbd/stowage-${flatId}`)).parent,
      ).toBeUndefined();
      expect(await driver.deleteVolume(volumeId)).toEqual({ existed: true });
    });

    it("cleans up the hidden snapshot when a delete of the clone crashed after removing the image", async () => {
      const { volumeId } = await newVolume();
      const cloneId = newId("vol");
      await driver.cloneVolume({
        volumeId: cloneId,
        operationId: newId("op"),
        sourceVolumeId: volumeId,
        format: "raw",
      });
      // The crash: the clone's image is gone, its hidden snapshot on the source is not.
      await rbd("rm", "--no-progress", `rbd/stowage-${cloneId}`);
      expect(await snapNames(`stowage-${volumeId}`)).toHaveLength(1);
      expect(await driver.deleteVolume(cloneId)).toEqual({ existed: false });
      expect(await snapNames(`stowage-${volumeId}`)).toEqual([]);
    });

    it("removes the clone a crashed attempt left under the temp name and clones again", async () => {
      const { volumeId } = await newVolume();
      const cloneId = newId("vol");
      await rbd("snap", "create", "--no-progress", `rbd/stowage-${volumeId}@stowage-clone-${cloneId}`);
      await rbd("snap", "protect", `rbd/stowage-${volumeId}@stowage-clone-${cloneId}`);
      await rbd("clone", `rbd/stowage-${volumeId}@stowage-clone-${cloneId}`, `rbd/stowage-tmp-${cloneId}`);
      const { adopted } = await driver.cloneVolume({
        volumeId: cloneId,
        operationId: newId("op"),
        sourceVolumeId: volumeId,
        format: "raw",
      });
      expect(adopted).toBe(false);
      expect(await images()).toEqual([`stowage-${volumeId}`, `stowage-${cloneId}`].sort());
      expect(await snapNames(`stowage-${volumeId}`)).toEqual([
        { name: `stowage-clone-${cloneId}`, protected: "true" },
      ]);
    });

    it("refuses a clone smaller than its source and leaves no hidden snapshot", async () => {
      const { volumeId } = await newVolume();
      const e = await rejection(
        driver.cloneVolume({
          volumeId: newId("vol"),
          operationId: newId("op"),
          sourceVolumeId: volumeId,
          format: "raw",
          sizeBytes: 32n * MiB,
        }),
      );
      expect(e.code).toBe("invalid_argument");
      expect(await snapNames(`stowage-${volumeId}`)).toEqual([]);
      expect(await images()).toEqual([`stowage-${volumeId}`]);
    });
  });
});

describe.skipIf(!cephAvailable())("rbd driver under tool faults", CEPH_TEST, () => {
  let fakes: string;
  const realRbd = () => cephToolPath("rbd")!;

  beforeAll(async () => {
    fakes = await mkdtemp(join(tmpdir(), "stowage-fake-rbd-"));
  });
  afterAll(async () => {
    await rm(fakes, { recursive: true, force: true });
  });
  beforeEach(async () => {
    await wipePool();
  });

  /** A bash `rbd` that runs `body` for one subcommand and hands everything else to the real rbd. */
  async function fakeRbd(name: string, subcommand: string, body: string): Promise<string> {
    const dir = join(fakes, name);
    await mkdir(dir, { recursive: true });
    const script = `#!/bin/bash\nREAL=${realRbd()}\nif [ "$1" = "${subcommand}" ]; then\n${body}\nfi\nexec "$REAL" "$@"\n`;
    await writeFile(join(dir, "rbd"), script);
    await chmod(join(dir, "rbd"), 0o755);
    return dir;
  }

  it("a hung rbd create is killed at the timeout, leaves nothing, and a retry succeeds", async () => {
    // Creates the image for real, then hangs: the worst case, an image under the temp name and no answer.
    const bin = await fakeRbd("hang", "create", `"$REAL" "$@"\nsleep 300 & wait\nexit 0`);
    const hung = createRbdDriver({
      ...options,
      runner: createToolRunner({ pathPrefix: [bin], defaultTimeoutMs: 4_000, killGraceMs: 200 }),
    });
    const spec = {
      volumeId: newId("vol"),
      operationId: newId("op"),
      sizeBytes: 64n * MiB,
      format: "raw" as const,
    };
    const t0 = Date.now();
    const err = await hung.createVolume(spec).catch((e) => e);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(err).toBeInstanceOf(ToolError);
    expect(err).toMatchObject({ code: "deadline_exceeded", timedOut: true, tool: "rbd" });
    expect(err.argv[0]).toBe("create");
    expect(await hung.list()).toEqual({ volumes: [], foreign: [] });

    const { artifact, adopted } = await driver.createVolume(spec);
    expect(adopted).toBe(false);
    expect(artifact.sizeBytes).toBe(64n * MiB);
    // The temp image the hung attempt made was removed by the retry at the latest.
    expect(await images()).toEqual([`stowage-${spec.volumeId}`]);
  });

  it("a failing rbd gives an error naming the tool, argv and stderr, and leaves nothing", async () => {
    const bin = await fakeRbd(
      "fail",
      "create",
      `echo "rbd: create error: (28) No space left on device" >&2\necho "2026-11-22T15:54:22.341+0000 7f65 -1 librbd: fake" >&2\nexit 1`,
    );
    const d = createRbdDriver({ ...options, runner: createToolRunner({ pathPrefix: [bin] }) });
    const volumeId = newId("vol");
    const err = await d
      .createVolume({ volumeId, operationId: newId("op"), sizeBytes: 64n * MiB, format: "raw" })
      .catch((e) => e);
    expect(err).toBeInstanceOf(ToolError);
    expect(err).toMatchObject({ code: "internal", tool: "rbd", exitCode: 1, timedOut: false });
    expect(err.argv).toEqual([
      "create",
      "--size",
      `${64n * MiB}B`,
      "--no-progress",
      "--conf",
      ceph.conf,
      "--id",
      "admin",
      "--keyring",
      ceph.keyring,
      `rbd/stowage-tmp-${volumeId}`,
    ]);
    expect(err.stderr).toMatch(/No space left on device/);
    expect(err.message).toMatch(
      new RegExp(
        `^rbd create --size 67108864B .* rbd/stowage-tmp-${volumeId} exited with code 1: rbd: create error: \\(28\\) No space left on device`,
      ),
    );
    expect(await images()).toEqual([]);
  });

  it("broken JSON from rbd du gives a clear parse error and changes nothing", async () => {
    const { volumeId, artifact } = await newVolume();
    const image = `stowage-${volumeId}`;
    const before = [
      await meta(image),
      JSON.parse(await rbd("info", "--format", "json", `rbd/${image}`)).size,
    ];
    const bin = await fakeRbd(
      "badjson",
      "du",
      `echo '{"images": [{"name": "${image}", "provisioned_size": '\nexit 0`,
    );
    const seen: string[] = [];
    const broken = createRbdDriver({
      ...options,
      runner: createToolRunner({
        pathPrefix: [bin],
        onInvocation: (e) => seen.push(e.argv.slice(0, 2).join(" ")),
      }),
    });
    const attempts = [
      () => broken.info(volumeId),
      () => broken.createVolume({ volumeId, operationId: newId("op"), sizeBytes: 64n * MiB, format: "raw" }),
      () => broken.resizeVolume(volumeId, 128n * MiB, { allowShrink: false, operationId: newId("op") }),
      () => broken.list(),
      () => broken.capacity(),
    ];
    for (const attempt of attempts) {
      const err = await attempt().catch((e) => e);
      expect(err).toBeInstanceOf(ToolOutputError);
      expect(err.message).toMatch(/^rbd du printed output that is not the expected JSON: /);
    }
    // Only reads ran (capacity asks ceph df before rbd du): the resize never reached rbd resize.
    expect(
      seen.filter((s) => !["du --format", "image-meta list", "ls -l", "df --format"].includes(s)),
    ).toEqual([]);
    expect([
      await meta(image),
      JSON.parse(await rbd("info", "--format", "json", `rbd/${image}`)).size,
    ]).toEqual(before);
    expect(await driver.info(volumeId)).toEqual(artifact);
  });

  it("ids are refused before any tool runs", async () => {
    const hex = "0123456789abcdef0123456789abcdef";
    for (const id of [
      "../x",
      `vol-${hex}/x`,
      `vol-${hex.toUpperCase()}`,
      `snap-${hex}`,
      "vol-$(reboot)",
      "",
    ]) {
      const op = newId("op");
      const calls = [
        () => driver.createVolume({ volumeId: id, operationId: op, sizeBytes: 64n * MiB, format: "raw" }),
        () => driver.deleteVolume(id),
        () => driver.resizeVolume(id, 128n * MiB, { allowShrink: true, operationId: op }),
        () => driver.info(id),
        () => driver.createSnapshot(id, newId("snap"), { operationId: op }),
        () => driver.listSnapshots(id),
        () => driver.flattenVolume(id, { operationId: op }),
        () =>
          driver.cloneVolume({ volumeId: newId("vol"), operationId: op, sourceVolumeId: id, format: "raw" }),
      ];
      for (const call of calls) expect((await rejection(call())).code).toBe("invalid_argument");
    }
    expect(events).toEqual([]);
  });
});
