import { existsSync, readdirSync } from "node:fs";
import { create, toBinary } from "@bufbuild/protobuf";
import { commandSubject, connectBus } from "@stowage/bus";
import { AgentCommandSchema, OperationKind, VolumeFormat } from "@stowage/proto";
import { natsAvailable, postgresAvailable } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, type DatabaseKind, qemuImgInfo, startCluster, waitFor } from "./support/cluster.js";

interface VolumeJson {
  id: string;
  name: string;
  state: string;
  sizeBytes: string;
  format: string;
  hostId: string;
  poolId: string;
  hostPath: string;
  operationId: string;
  numaNode?: number;
  cpuSet?: string;
}

const GiB = 1024 ** 3;
const databases: DatabaseKind[] = ["pglite", "postgres"];

/** `stowctl volume create … -o json` prints the whole response; the volume is under `.volume`. */
async function createVolume(c: Cluster, args: string[]): Promise<VolumeJson> {
  return (await c.stowctlJson<{ volume: VolumeJson }>(["volume", "create", ...args])).volume;
}

/** Files in a pool directory that are volumes (the .stowage sidecar directory aside). */
const volumeFiles = (dir: string) => readdirSync(dir).filter((f) => f.startsWith("vol-"));

describe.skipIf(!natsAvailable())("end to end", () => {
  describe.each(databases)("on %s", (database) => {
    let c: Cluster;

    beforeAll(async () => {
      if (database === "postgres" && !postgresAvailable())
        throw new Error(
          "PostgreSQL 15 is needed for this suite: install postgresql-15 or set STOWAGE_TEST_PG_URL",
        );
      c = await startCluster({ database, agents: ["node1", "node2"] });
    }, 180_000);
    afterAll(async () => {
      await c?.stop();
    });

    it("shows both hosts up with their NUMA nodes, and their pools", async () => {
      const hosts = await c.stowctlJson<
        { id: string; state: string; numaNodes: { id: number; cpuList: string }[] }[]
      >(["host", "list"]);
      expect(hosts.map((h) => h.id).sort()).toEqual(["node1", "node2"]);
      for (const h of hosts) {
        expect(h.state).toBe("up");
        expect(h.numaNodes.map((n) => n.cpuList)).toEqual(["0-1", "2-3"]);
      }
      const pools = await c.stowctlJson<{ id: string; kind: string; capacity: { totalBytes: string } }[]>([
        "pool",
        "list",
      ]);
      expect(pools.map((p) => p.id).sort()).toEqual(["node1/default", "node2/default"]);
      for (const p of pools) {
        expect(p.kind).toBe("dir");
        expect(BigInt(p.capacity.totalBytes)).toBeGreaterThan(0n);
      }
    });

    it("creates a qcow2 and a raw volume that qemu-img sees with the asked size and format", async () => {
      const q = await createVolume(c, [
        "vm1-disk0",
        "--size",
        "1G",
        "--format",
        "qcow2",
        "--cluster-size",
        "128K",
        "--wait",
      ]);
      const r = await createVolume(c, ["vm1-disk1", "--size", "512M", "--format", "raw", "--wait"]);
      expect(q.state).toBe("available");
      expect(r.state).toBe("available");
      const qi = await qemuImgInfo(q.hostPath);
      expect(qi.format).toBe("qcow2");
      expect(qi["virtual-size"]).toBe(GiB);
      expect(qi["cluster-size"]).toBe(128 * 1024);
      const ri = await qemuImgInfo(r.hostPath);
      expect(ri.format).toBe("raw");
      expect(ri["virtual-size"]).toBe(512 * 1024 ** 2);
      // Paths derive from the pool root and the volume id, never from the user's name.
      expect(q.hostPath.endsWith(`/${q.id}.qcow2`)).toBe(true);
      const pool = c.agents.find((a) => a.name === q.hostId)!.poolDir;
      expect(q.hostPath.startsWith(pool)).toBe(true);
    });

    it("makes one volume when the same CreateVolume is sent twice", async () => {
      const a = await createVolume(c, [
        "twice",
        "--size",
        "64M",
        "--request-id",
        `req-${database}-twice`,
        "--wait",
      ]);
      const b = await createVolume(c, [
        "twice",
        "--size",
        "64M",
        "--request-id",
        `req-${database}-twice`,
        "--wait",
      ]);
      expect(b.id).toBe(a.id);
      const byName = await createVolume(c, ["twice", "--size", "64M", "--wait"]);
      expect(byName.id).toBe(a.id);
      const list = await c.stowctlJson<VolumeJson[]>(["volume", "list", "--prefix", "twice"]);
      expect(list).toHaveLength(1);
      const files = volumeFiles(c.agents.find((x) => x.name === a.hostId)!.poolDir).filter((f) =>
        f.startsWith(a.id),
      );
      expect(files).toEqual([`${a.id}.qcow2`]);
      // The same name with another size is a conflict, not a second volume.
      const clash = await c.stowctl(["volume", "create", "twice", "--size", "128M"]);
      expect(clash.exitCode).toBe(4);
      expect(clash.stderr).toMatch(/already exists with a different size/);
    });

    it("makes one volume when the same operation is delivered twice to an agent", async () => {
      const v = await createVolume(c, ["redeliver", "--size", "32M", "--wait"]);
      // The command as the controller sent it; a different message id gets past JetStream's dedup, as a re-send
      // after the duplicate window would.
      const cmd = create(AgentCommandSchema, {
        operationId: v.operationId,
        kind: OperationKind.CREATE_VOLUME,
        hostId: v.hostId,
        poolName: v.poolId.split("/")[1]!,
        attempt: 2,
        payload: {
          case: "createVolume",
          value: { volumeId: v.id, sizeBytes: BigInt(v.sizeBytes), format: VolumeFormat.QCOW2 },
        },
      });
      const bus = await connectBus({ servers: c.nats.url, name: "e2e-redeliver" });
      await bus.js.publish(commandSubject(v.hostId), toBinary(AgentCommandSchema, cmd), {
        msgID: `${v.operationId}-again`,
      });
      await bus.close();
      const agent = c.agents.find((a) => a.name === v.hostId)!;
      await waitFor(
        "the agent to adopt the redelivered operation",
        async () =>
          agent.service.logs().includes(`"operationId":"${v.operationId}"`) &&
          /"adopted":true/.test(agent.service.logs()),
      );
      expect(volumeFiles(agent.poolDir).filter((f) => f.startsWith(v.id))).toEqual([`${v.id}.qcow2`]);
      const after = await c.stowctlJson<VolumeJson>(["volume", "get", v.id]);
      expect(after.state).toBe("available");
    });

    it("refuses bad input with a clear error and changes nothing", async () => {
      const before = await c.stowctlJson<VolumeJson[]>(["volume", "list", "--all"]);
      const cases: [string[], number, RegExp][] = [
        [["volume", "create", "../x", "--size", "1G"], 2, /not valid/],
        [["volume", "create", "ok-name", "--size", "0"], 2, /greater than zero|size/],
        [["volume", "create", "ok-name", "--size", "100P"], 2, /maximum|larger/],
        [
          ["volume", "create", "ok-name", "--size", "1G", "--pool", "nohost/nopool"],
          3,
          /pool nohost\/nopool not found/,
        ],
        [["volume", "get", "no-such-volume"], 3, /not found/],
        [["volume", "delete", "no-such-volume"], 3, /not found/],
      ];
      for (const [args, code, message] of cases) {
        const r = await c.stowctl(args);
        expect(r.exitCode, args.join(" ")).toBe(code);
        expect(r.stderr, args.join(" ")).toMatch(message);
      }
      const after = await c.stowctlJson<VolumeJson[]>(["volume", "list", "--all"]);
      expect(after).toEqual(before);
    });

    it("deletes a volume and its file", async () => {
      const v = await createVolume(c, ["short-lived", "--size", "16M", "--wait"]);
      expect(existsSync(v.hostPath)).toBe(true);
      await c.stowctl(["volume", "delete", "short-lived", "--wait"], { reject: true });
      expect(existsSync(v.hostPath)).toBe(false);
      const gone = await c.stowctlJson<VolumeJson>(["volume", "get", v.id]);
      expect(gone.state).toBe("deleted");
      // Deleting again is harmless.
      const again = await c.stowctl(["volume", "delete", v.id]);
      expect(again.exitCode).toBe(0);
    });

    it("knows every volume after a controller restart, even one created while it was down", async () => {
      const before = await c.stowctlJson<VolumeJson[]>(["volume", "list"]);
      // Create, then crash the controller before the result can be applied.
      const pending = await createVolume(c, ["across-restart", "--size", "8M"]);
      await c.controller.kill();
      await c.startController();
      const after = await c.stowctlJson<VolumeJson[]>(["volume", "list"]);
      expect(after.map((v) => v.id).sort()).toEqual([...before.map((v) => v.id), pending.id].sort());
      // A result the killed controller had pulled but not acked comes back after the consumer's ack wait.
      const done = await waitFor(
        "the volume to become available",
        async () => {
          const v = await c.stowctlJson<VolumeJson>(["volume", "get", pending.id]);
          return v.state === "available" ? v : undefined;
        },
        60_000,
      );
      expect((await qemuImgInfo(done.hostPath))["virtual-size"]).toBe(8 * 1024 ** 2);
      // And it still provisions.
      const next = await createVolume(c, ["after-restart", "--size", "8M", "--wait"]);
      expect(next.state).toBe("available");
    }, 120_000);

    it("keeps the ledger equal to the volumes it holds", async () => {
      const pools = await c.stowctlJson<
        { id: string; capacity: { provisionedBytes: string; reservedBytes: string } }[]
      >(["pool", "list"]);
      const volumes = await c.stowctlJson<VolumeJson[]>(["volume", "list"]);
      for (const p of pools) {
        const held = BigInt(p.capacity.provisionedBytes) + BigInt(p.capacity.reservedBytes);
        const live = volumes
          .filter((v) => v.poolId === p.id)
          .reduce((sum, v) => sum + BigInt(v.sizeBytes), 0n);
        expect(held, p.id).toBe(live);
      }
    });
  });
});
