/**
 * A netfs pool shared by two hosts of a test fleet (issue 12): NFS-Ganesha and its own rpcbind run in the
 * namespace of a fleet host without an agent (h3, 203.0.113.13); h1 and h2 each run a real agent with the
 * netfs pool in its config (reported healthy, shared, with the export's capacity), and a netfs driver on the
 * same export driven by a short script through `fleet.exec`, so each driver's NFS client and qemu-img really
 * run on that host's network. Volumes are carved from both hosts, a linked clone stands on a base image whose backing
 * file is an absolute nfs:// URL on the export, and every volume is read back through nfs:// from the other
 * host with the checksum it was written with. Both hosts see the same share and the same capacity.
 *
 * Needs root, `ip netns`, nats-server, nfs-ganesha with FSAL_VFS, rpcbind and qemu's nfs block driver; runs
 * the built packages and apps (npm run build).
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { newId } from "@stowage/core";
import {
  type GaneshaService,
  ganeshaAvailable,
  makeTempDir,
  natsAvailable,
  netnsAvailable,
  startGanesha,
  type TempDir,
} from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FleetCluster, startFleetCluster } from "./support/fleet.js";

const ROOT = new URL("..", import.meta.url).pathname;
const net = netnsAvailable();
const nfs = ganeshaAvailable();
const skipReason = !net.ok
  ? net.reason
  : !natsAvailable()
    ? "nats-server is not installed"
    : !nfs.ok
      ? nfs.reason
      : !existsSync("/usr/lib/x86_64-linux-gnu/qemu/block-nfs.so")
        ? "qemu's nfs block driver not installed (qemu-block-extra)"
        : !existsSync(join(ROOT, "packages/drivers/dist/netfs/index.js"))
          ? "packages/drivers is not built (npm run build)"
          : undefined;
const title = skipReason
  ? `netfs pool shared by two fleet hosts: SKIPPED, ${skipReason}`
  : "netfs pool shared by two fleet hosts";
const prefix = `nf${(process.pid % 100_000).toString(36)}`;
const MiB = 1024n * 1024n;

/**
 * Runs one driver call on a fleet host, with the built @stowage/drivers: argv[1] is a JSON request, stdout one
 * JSON line. Big integers travel as strings.
 */
const DRIVER_SCRIPT = `
import { createNetfsDriver, createToolRunner, parseNetfsUrl } from "@stowage/drivers";
const req = JSON.parse(process.argv[1]);
const json = (v) => JSON.stringify(v, (_, x) => (typeof x === "bigint" ? x.toString() : x));
const driver = createNetfsDriver({ poolName: "shared", url: req.url, runner: createToolRunner() });
const ops = {
  create: () => driver.createVolume({ volumeId: req.volumeId, operationId: req.operationId, format: req.format, sizeBytes: BigInt(req.sizeBytes) }),
  snapshot: () => driver.createSnapshot(req.volumeId, req.snapshotId, { operationId: req.operationId }),
  clone: () => driver.cloneVolume({ volumeId: req.volumeId, operationId: req.operationId, format: "qcow2", sourceVolumeId: req.sourceVolumeId, sourceSnapshotId: req.snapshotId }),
  delete: () => driver.deleteVolume(req.volumeId, { operationId: req.operationId }),
  deleteSnapshot: () => driver.deleteSnapshot(req.volumeId, req.snapshotId, { operationId: req.operationId }),
  report: async () => ({ share: parseNetfsUrl(req.url).url, check: await driver.check(), capacity: await driver.capacity(), list: await driver.list() }),
};
try {
  process.stdout.write(json({ ok: true, result: await ops[req.op]() }) + "\\n");
} catch (e) {
  process.stdout.write(json({ ok: false, error: String(e?.message ?? e), code: e?.code }) + "\\n");
}
process.exit(0);
`;

describe.skipIf(skipReason !== undefined)(title, () => {
  let c: FleetCluster;
  let tmp: TempDir;
  let g: GaneshaService;
  let url: string;
  const fleet = {
    exec: (...a: Parameters<FleetCluster["fleet"]["exec"]>) => c.fleet.exec(...a),
    connect: (...a: Parameters<FleetCluster["fleet"]["connect"]>) => c.fleet.connect(...a),
  };

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-netfs-fleet-");
    c = await startFleetCluster({
      prefix,
      hosts: 3,
      agentHosts: ["h1", "h2"],
      beforeAgents: async (f, dir) => {
        const server = f.node("h3");
        g = await startGanesha({
          dir: join(dir, "ganesha"),
          netns: server.netns,
          address: server.address,
          exportPath: "/vm",
        });
        url = g.url;
        return [g];
      },
      // The same export on both hosts, written differently: the agents keep the canonical URL.
      agentConfig: (name, { defaultPool }) => ({
        pools: [defaultPool, { name: "shared", kind: "netfs", url: name === "h1" ? url : `${url}/` }],
      }),
    });
  }, 180_000);

  afterAll(async () => {
    await c?.stop();
    await tmp?.cleanup();
  }, 60_000);

  type PoolJson = {
    id: string;
    hostId: string;
    kind: string;
    healthy: boolean;
    shared: boolean;
    share?: string;
    attachedHostIds?: string[];
    capacity: { totalBytes: string; provisionedBytes?: string; reservedBytes?: string };
  };
  const netfsPools = async () =>
    (await c.stowctlJson<PoolJson[]>(["pool", "list"], { on: "h1" })).filter((p) => /netfs/i.test(p.kind));
  let pool: PoolJson;

  it("keeps the share both agents report as one pool, healthy, with the export's capacity counted once", async () => {
    let pools: PoolJson[] = [];
    for (let i = 0; i < 50; i++) {
      pools = await netfsPools();
      if (pools.length === 1 && pools[0]!.healthy && pools[0]!.attachedHostIds?.length === 1) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(pools).toHaveLength(1);
    pool = pools[0]!;
    // Whichever host reported it first owns the row; the other is attached.
    expect([pool.hostId, ...(pool.attachedHostIds ?? [])].sort()).toEqual(["h1", "h2"]);
    expect(pool).toMatchObject({ healthy: true, shared: true, share: url });
    expect(BigInt(pool.capacity.totalBytes)).toBeGreaterThan(0n);
  });

  it("places volumes through the API on either host of the share; the one ledger holds both, and each host's <disk> is NFS", async () => {
    const ids: string[] = [];
    for (const host of ["h1", "h2"]) {
      const v = await c.stowctlJson<{ volume: { id: string; hostId: string; poolId: string } }>([
        ...["volume", "create", `api-${host}`, "--size", "8M", "--format", "qcow2"],
        ...["--pool", pool.id, "--host", host, "--wait"],
      ]);
      expect(v.volume).toMatchObject({ hostId: host, poolId: pool.id });
      ids.push(v.volume.id);
    }
    const [after] = await netfsPools();
    expect(
      BigInt(after!.capacity.provisionedBytes ?? "0") + BigInt(after!.capacity.reservedBytes ?? "0"),
    ).toBe(16n * MiB);
    // The volume made through h2's agent, read through nfs:// on h1, and the other way round.
    for (const [i, other] of [
      [0, "h2"],
      [1, "h1"],
    ] as const) {
      const { hostPath } = await c.stowctlJson<{ hostPath: string }>(["volume", "get", ids[i]!]);
      expect(hostPath.startsWith(`${url}/`)).toBe(true);
      const info = JSON.parse(await onHost(other, "qemu-img", ["info", "-U", "--output=json", hostPath]));
      expect(info).toMatchObject({ format: "qcow2", "virtual-size": Number(8n * MiB) });
      const xml = (await c.stowctl(["volume", "xml", ids[i]!, "--host", other], { reject: true })).stdout;
      const exportPath = new URL(url).pathname;
      expect(xml).toContain(`<source protocol="nfs" name="${exportPath}/${hostPath.slice(url.length + 1)}">`);
      expect(xml).toContain(`<host name="${new URL(url).hostname}"/>`);
    }
    for (const id of ids) await c.stowctl(["volume", "delete", id, "--wait"], { reject: true });
    const [empty] = await netfsPools();
    expect(
      BigInt(empty!.capacity.provisionedBytes ?? "0") + BigInt(empty!.capacity.reservedBytes ?? "0"),
    ).toBe(0n);
  });

  async function driverOn<T>(host: string, req: Record<string, unknown>): Promise<T> {
    const r = await fleet.exec(
      host,
      process.execPath,
      ["--input-type=module", "-e", DRIVER_SCRIPT, JSON.stringify({ url, ...req })],
      {
        cwd: ROOT,
        timeoutMs: 120_000,
      },
    );
    const line = r.stdout.trim().split("\n").at(-1) ?? "";
    let out: { ok: boolean; result?: T; error?: string };
    try {
      out = JSON.parse(line);
    } catch {
      throw new Error(`driver on ${host} (exit ${r.exitCode}): ${r.stdout}\n${r.stderr}`);
    }
    if (!out.ok) throw new Error(`driver on ${host}, ${String(req.op)}: ${out.error}`);
    return out.result as T;
  }

  async function onHost(host: string, command: string, args: string[]): Promise<string> {
    const r = await fleet.exec(host, command, args, { timeoutMs: 120_000 });
    if (r.exitCode !== 0)
      throw new Error(`${command} ${args.join(" ")} on ${host} exited ${r.exitCode}: ${r.stderr}`);
    return r.stdout;
  }

  /** The whole disk as `host` reads it through nfs:// (qemu-img convert to raw), as a sha256. */
  async function checksumOn(host: string, path: string, format: string): Promise<string> {
    const out = join(tmp.path, `${host}-${newId("op")}.raw`);
    await onHost(host, "qemu-img", ["convert", "-U", "-f", format, "-O", "raw", path, out]);
    return createHash("sha256")
      .update(await readFile(out))
      .digest("hex");
  }

  it("carves volumes from both hosts, clones on an absolute nfs:// backing file, and reads them all back from the other host", async () => {
    // Ganesha answers only on h3's address: the hosts reach it over the fleet network.
    expect((await fleet.connect("h1", g.address, 111)).ok).toBe(true);
    expect((await fleet.connect("h2", g.address, 2049)).ok).toBe(true);

    const a = newId("vol");
    const b = newId("vol");
    const c = newId("vol");
    const snap = newId("snap");
    const made = await driverOn<{ artifact: { path: string } }>("h1", {
      op: "create",
      volumeId: a,
      operationId: newId("op"),
      format: "qcow2",
      sizeBytes: String(64n * MiB),
    });
    expect(made.artifact.path).toBe(`${url}/${a}.qcow2`);
    const madeB = await driverOn<{ artifact: { path: string } }>("h2", {
      op: "create",
      volumeId: b,
      operationId: newId("op"),
      format: "raw",
      sizeBytes: String(32n * MiB),
    });
    expect(madeB.artifact.path).toBe(`${url}/${b}.raw`);

    // Data written on each host through nfs:// (qemu-io on that host's network).
    await onHost("h1", "qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "write -P 0xa1 0 1M",
      "-c",
      "write -P 0xa2 40M 1M",
      `${url}/${a}.qcow2`,
    ]);
    await onHost("h2", "qemu-io", [
      "-f",
      "raw",
      "-c",
      "write -P 0xb1 0 1M",
      "-c",
      "write -P 0xb2 20M 1M",
      `${url}/${b}.raw`,
    ]);

    // h2 snapshots h1's volume, then changes it; h1 clones the snapshot.
    await driverOn("h2", { op: "snapshot", volumeId: a, snapshotId: snap, operationId: newId("op") });
    const before = await checksumOn("h2", `${url}/${a}.qcow2`, "qcow2");
    await onHost("h2", "qemu-io", ["-f", "qcow2", "-c", "write -P 0xa3 0 1M", `${url}/${a}.qcow2`]);
    const clone = await driverOn<{ artifact: { path: string } }>("h1", {
      op: "clone",
      volumeId: c,
      sourceVolumeId: a,
      snapshotId: snap,
      operationId: newId("op"),
    });
    expect(clone.artifact.path).toBe(`${url}/${c}.qcow2`);

    // The clone is linked: its backing file is the snapshot's base image, named by an absolute nfs:// URL.
    const info = JSON.parse(
      await onHost("h2", "qemu-img", ["info", "-U", "--output=json", `${url}/${c}.qcow2`]),
    );
    expect(info["backing-filename"]).toBe(`${url}/.stowage/base-${snap}.qcow2`);
    expect((await stat(join(g.exportDir, ".stowage", `base-${snap}.qcow2`))).mode & 0o777).toBe(0o444);

    // Each volume reads the same from both hosts; the clone reads the snapshot's data, not the later write.
    const sums = {
      a: [
        await checksumOn("h1", `${url}/${a}.qcow2`, "qcow2"),
        await checksumOn("h2", `${url}/${a}.qcow2`, "qcow2"),
      ],
      b: [await checksumOn("h1", `${url}/${b}.raw`, "raw"), await checksumOn("h2", `${url}/${b}.raw`, "raw")],
      c: [
        await checksumOn("h2", `${url}/${c}.qcow2`, "qcow2"),
        await checksumOn("h1", `${url}/${c}.qcow2`, "qcow2"),
      ],
    };
    expect(sums.a[0]).toBe(sums.a[1]);
    expect(sums.b[0]).toBe(sums.b[1]);
    expect(sums.c[0]).toBe(sums.c[1]);
    expect(sums.c[0]).toBe(before);
    expect(sums.a[0]).not.toBe(before);
    // And what was written is there, byte for byte, read on the other host than the writer.
    await onHost("h2", "qemu-io", [
      "-f",
      "raw",
      "-c",
      "read -P 0xb1 0 1M",
      "-c",
      "read -P 0xb2 20M 1M",
      `${url}/${b}.raw`,
    ]);
    await onHost("h1", "qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "read -P 0xa1 0 1M",
      "-c",
      "read -P 0xa2 40M 1M",
      `${url}/${c}.qcow2`,
    ]);
    await onHost("h2", "qemu-io", ["-f", "qcow2", "-c", "read -P 0xa3 0 1M", `${url}/${a}.qcow2`]);

    // Both hosts: the same share, the same capacity, the same three volumes.
    type Report = {
      share: string;
      check: { healthy: boolean; message: string };
      capacity: { totalBytes: string; freeBytes: string; provisionedBytes: string };
      list: { volumes: { volumeId: string }[]; foreign: string[] };
    };
    const r1 = await driverOn<Report>("h1", { op: "report" });
    const r2 = await driverOn<Report>("h2", { op: "report" });
    expect(r1.check.healthy, r1.check.message).toBe(true);
    expect(r2.check.healthy, r2.check.message).toBe(true);
    expect(r1.share).toBe(url);
    expect(r2.share).toBe(r1.share);
    expect(r2.capacity.totalBytes).toBe(r1.capacity.totalBytes);
    expect(BigInt(r1.capacity.totalBytes)).toBeGreaterThan(0n);
    expect(r1.capacity.provisionedBytes).toBe(String(64n * MiB + 32n * MiB + 64n * MiB));
    expect(r2.capacity.provisionedBytes).toBe(r1.capacity.provisionedBytes);
    expect(r1.list.volumes.map((v) => v.volumeId)).toEqual([a, b, c].sort());
    expect(r2.list.volumes.map((v) => v.volumeId)).toEqual(r1.list.volumes.map((v) => v.volumeId));
    expect(r1.list.foreign).toEqual([]);

    // The base stays while the clone stands on it; cleanup from either host.
    await expect(
      driverOn("h2", { op: "deleteSnapshot", volumeId: a, snapshotId: snap, operationId: newId("op") }),
    ).rejects.toThrow(/depend on it/);
    await driverOn("h2", { op: "delete", volumeId: c, operationId: newId("op") });
    await driverOn("h1", { op: "deleteSnapshot", volumeId: a, snapshotId: snap, operationId: newId("op") });
    await driverOn("h1", { op: "delete", volumeId: b, operationId: newId("op") });
    await driverOn("h2", { op: "delete", volumeId: a, operationId: newId("op") });
    const end = await driverOn<Report>("h1", { op: "report" });
    expect(end.list.volumes).toEqual([]);
    expect(end.capacity.provisionedBytes).toBe("0");
  }, 300_000);
});
