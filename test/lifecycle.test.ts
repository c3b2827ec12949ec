import { existsSync } from "node:fs";
import { natsAvailable } from "@stowage/testkit";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, qemuImgInfo, startCluster } from "./support/cluster.js";

interface VolumeJson {
  id: string;
  name: string;
  state: string;
  sizeBytes: string;
  hostPath: string;
  sourceVolumeId?: string;
  sourceSnapshotId?: string;
  error?: { message: string };
}

const MiB = 1024 ** 2;

/** qemu-io's pattern check: true when the range holds the byte everywhere. */
async function holds(
  path: string,
  format: string,
  pattern: number,
  offset: number,
  length: number,
): Promise<boolean> {
  const r = await execa("qemu-io", [
    "-r",
    "-U",
    "-f",
    format,
    "-c",
    `read -P ${pattern} ${offset} ${length}`,
    path,
  ]);
  return !/Pattern verification failed/.test(r.stdout + r.stderr);
}

async function write(
  path: string,
  format: string,
  pattern: number,
  offset: number,
  length: number,
): Promise<void> {
  await execa("qemu-io", ["-f", format, "-c", `write -P ${pattern} ${offset} ${length}`, path]);
}

/** The volume lifecycle through stowctl, the controller and a real agent on a dir pool. */
describe.skipIf(!natsAvailable())("volume lifecycle: resize, snapshots, clones, wipe", () => {
  let c: Cluster;
  const create = async (args: string[]) =>
    (await c.stowctlJson<{ volume: VolumeJson }>(["volume", "create", ...args])).volume;

  beforeAll(async () => {
    c = await startCluster({ database: "pglite", agents: ["lnode1"] });
  }, 180_000);
  afterAll(async () => {
    await c?.stop();
  });

  it("grows a volume, refuses to shrink it without --allow-shrink, and shrinks it with", async () => {
    const v = await create(["grow-me", "--size", "64M", "--wait"]);
    const grown = await c.stowctlJson<VolumeJson>([
      "volume",
      "resize",
      "grow-me",
      "--size",
      "128M",
      "--wait",
    ]);
    expect(grown.state).toBe("available");
    expect(grown.sizeBytes).toBe(String(128 * MiB));
    expect((await qemuImgInfo(v.hostPath))["virtual-size"]).toBe(128 * MiB);
    // Repeating the same resize converges without a new operation.
    const again = await c.stowctlJson<VolumeJson>(["volume", "resize", "grow-me", "--size", "128M"]);
    expect(again.sizeBytes).toBe(String(128 * MiB));
    const refused = await c.stowctl(["volume", "resize", "grow-me", "--size", "32M"]);
    expect(refused.exitCode).toBe(6);
    expect(refused.stderr).toMatch(/throws away the data past the new end/);
    const shrunk = await c.stowctlJson<VolumeJson>([
      "volume",
      "resize",
      "grow-me",
      "--size",
      "32M",
      "--allow-shrink",
      "--wait",
    ]);
    expect((await qemuImgInfo(shrunk.hostPath))["virtual-size"]).toBe(32 * MiB);
    const pools = await c.stowctlJson<{ capacity: { provisionedBytes: string } }[]>(["pool", "list"]);
    const volumes = await c.stowctlJson<VolumeJson[]>(["volume", "list"]);
    expect(pools[0]!.capacity.provisionedBytes).toBe(
      String(volumes.reduce((s, x) => s + BigInt(x.sizeBytes), 0n)),
    );
  });

  it("snapshots, reverts and clones with the right data", async () => {
    const v = await create(["golden", "--size", "64M", "--format", "qcow2", "--wait"]);
    await write(v.hostPath, "qcow2", 0xaa, 0, MiB);
    const snap = await c.stowctlJson<{ id: string; name: string; state: string }>([
      "snapshot",
      "create",
      "golden",
      "v1",
      "--wait",
    ]);
    expect(snap.state).toBe("available");
    // The same name again is the same snapshot.
    expect((await c.stowctlJson<{ id: string }>(["snapshot", "create", "golden", "v1"])).id).toBe(snap.id);
    await write(v.hostPath, "qcow2", 0xbb, 0, MiB);

    const fromSnap = await c.stowctlJson<VolumeJson>([
      "volume",
      "clone",
      "golden",
      "clone-v1",
      "--snapshot",
      "v1",
      "--wait",
    ]);
    expect(fromSnap.state).toBe("available");
    expect(fromSnap.sourceSnapshotId).toBe(snap.id);
    expect(await holds(fromSnap.hostPath, "qcow2", 0xaa, 0, MiB)).toBe(true);
    const fromNow = await c.stowctlJson<VolumeJson>([
      "volume",
      "clone",
      "golden",
      "clone-now",
      "--size",
      "128M",
      "--wait",
    ]);
    expect(await holds(fromNow.hostPath, "qcow2", 0xbb, 0, MiB)).toBe(true);
    expect((await qemuImgInfo(fromNow.hostPath))["virtual-size"]).toBe(128 * MiB);

    await c.stowctl(["snapshot", "revert", "golden", "v1", "--wait"], { reject: true });
    expect(await holds(v.hostPath, "qcow2", 0xaa, 0, MiB)).toBe(true);
    // Clones are independent of the source's later writes.
    expect(await holds(fromSnap.hostPath, "qcow2", 0xaa, 0, MiB)).toBe(true);

    const list = await c.stowctlJson<{ name: string; cloneCount: number }[]>(["snapshot", "list", "golden"]);
    expect(list).toEqual([expect.objectContaining({ name: "v1", cloneCount: 1 })]);
    // A snapshot with clones, and a volume with snapshots, are not deleted.
    const busy = await c.stowctl(["snapshot", "delete", "golden", "v1"]);
    expect(busy.exitCode).toBe(6);
    expect(busy.stderr).toMatch(/has clones \(clone-v1\)/);
    const withSnaps = await c.stowctl(["volume", "delete", "golden"]);
    expect(withSnaps.exitCode).toBe(6);
    expect(withSnaps.stderr).toMatch(/has 1 snapshot/);

    await c.stowctl(["volume", "delete", "clone-v1", "--wait"], { reject: true });
    await c.stowctl(["snapshot", "delete", "golden", "v1", "--wait"], { reject: true });
    expect(await c.stowctlJson<unknown[]>(["snapshot", "list", "golden"])).toEqual([]);
    await c.stowctl(["volume", "delete", "golden", "--wait"], { reject: true });
    expect(existsSync(v.hostPath)).toBe(false);
  });

  it("wipes a volume on delete when asked", async () => {
    const v = await create(["secret", "--size", "16M", "--format", "raw", "--wait"]);
    await write(v.hostPath, "raw", 0x5a, 0, MiB);
    const r = await c.stowctl(["volume", "delete", "secret", "--wipe", "zero", "--wait"]);
    expect(r.exitCode).toBe(0);
    expect(existsSync(v.hostPath)).toBe(false);
  });
});
