import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { commandSubject, connectBus } from "@stowage/bus";
import { AgentCommandSchema, OperationKind, VolumeFormat } from "@stowage/proto";
import { natsAvailable, netnsAvailable, postgresAvailable } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, qemuImgInfo, startCluster, waitFor } from "./support/cluster.js";
import { type FleetCluster, startFleetCluster } from "./support/fleet.js";

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

/**
 * Where the suite runs: a loopback cluster on embedded PGlite, the same on PostgreSQL, and once on a secure
 * test fleet (three hosts in their own network namespaces, TLS, tokens, joined agents; test/support/fleet.ts).
 */
type Setting = "pglite" | "postgres" | "fleet";
const netns = netnsAvailable();
const settings: Setting[] = ["pglite", "postgres", "fleet"];

/** What the suite uses of either kind of cluster, and how it publishes a command past the controller. */
type E2eCluster = Pick<Cluster, "stowctl" | "stowctlJson" | "startController" | "stop"> & {
  controller: Cluster["controller"];
  agents: { name: string; poolDir: string; service: Cluster["agents"][number]["service"] }[];
  publishCommand(subject: string, data: Uint8Array, msgID: string): Promise<void>;
};

async function startE2e(setting: Setting): Promise<E2eCluster> {
  if (setting === "fleet") {
    const f: FleetCluster = await startFleetCluster({
      prefix: `e2${(process.pid % 100_000).toString(36)}`,
      hosts: 3,
      secure: true,
    });
    return Object.assign(f, {
      async publishCommand(subject: string, data: Uint8Array, msgID: string) {
        // From the controller's namespace, as a user of the cluster's NATS account (signed with its key).
        const r = await f.probe("ctl", {
          op: "nats-js-publish",
          natsUrl: f.natsUrl,
          ca: f.caFile,
          accountSeedFile: `${f.controllerDir}/pki/nats-account.nk`,
          subject,
          dataBase64: Buffer.from(data).toString("base64"),
          msgID,
        });
        if (!r.ok) throw new Error(`publishing ${subject} failed: ${JSON.stringify(r)}`);
      },
    });
  }
  if (setting === "postgres" && !postgresAvailable())
    throw new Error(
      "PostgreSQL 15 is needed for this suite: install postgresql-15 or set STOWAGE_TEST_PG_URL",
    );
  const c = await startCluster({ database: setting, agents: ["node1", "node2"] });
  return Object.assign(c, {
    async publishCommand(subject: string, data: Uint8Array, msgID: string) {
      const bus = await connectBus({ servers: c.nats.url, name: "e2e-redeliver" });
      await bus.js.publish(subject, data, { msgID });
      await bus.close();
    },
  });
}

/** `stowctl volume create … -o json` prints the whole response; the volume is under `.volume`. */
async function createVolume(c: E2eCluster, args: string[]): Promise<VolumeJson> {
  return (await c.stowctlJson<{ volume: VolumeJson }>(["volume", "create", ...args])).volume;
}

/** Files in a pool directory that are volumes (the .stowage sidecar directory aside). */
const volumeFiles = (dir: string) => readdirSync(dir).filter((f) => f.startsWith("vol-"));

describe.skipIf(!natsAvailable())("end to end", () => {
  describe.each(settings)("on %s", (database) => {
    let c: E2eCluster;
    // The fleet needs root and `ip netns`; on a machine without them that setting says so and runs nothing.
    const skip = database === "fleet" && !netns.ok ? `SKIPPED, ${netns.ok ? "" : netns.reason}` : undefined;
    if (skip) {
      it.skip(`the suite on a secure test fleet: ${skip}`, () => {});
      return;
    }

    beforeAll(async () => {
      c = await startE2e(database);
    }, 180_000);
    afterAll(async () => {
      await c?.stop();
    });

    it("shows both hosts up with their NUMA nodes, and their pools", async () => {
      const hosts = await c.stowctlJson<
        { id: string; state: string; numaNodes: { id: number; cpuList: string }[] }[]
      >(["host", "list"]);
      const names = c.agents.map((a) => a.name).sort();
      expect(hosts.map((h) => h.id).sort()).toEqual(names);
      for (const h of hosts) {
        expect(h.state).toBe("up");
        expect(h.numaNodes.map((n) => n.cpuList)).toEqual(["0-1", "2-3"]);
      }
      const pools = await c.stowctlJson<{ id: string; kind: string; capacity: { totalBytes: string } }[]>([
        "pool",
        "list",
      ]);
      expect(pools.map((p) => p.id).sort()).toEqual(names.map((n) => `${n}/default`));
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

    it("prints the libvirt <disk> of a volume for its host, which libvirt's schema accepts", async () => {
      const v = await c.stowctlJson<VolumeJson>(["volume", "get", "vm1-disk0"]);
      const r = await c.stowctl(["volume", "xml", "vm1-disk0", "--iothread", "1"], { reject: true });
      expect(r.stdout).toContain(`<source file="${v.hostPath}"/>`);
      expect(r.stdout).toContain(`<serial>${v.id}</serial>`);
      const dir = mkdtempSync(join(tmpdir(), "stowage-e2e-xml-"));
      const file = join(dir, "domain.xml");
      writeFileSync(
        file,
        `<domain type='kvm'><name>e2e</name><memory unit='MiB'>64</memory><iothreads>1</iothreads><os><type arch='x86_64'>hvm</type></os><devices>${r.stdout.split("<iothreadpin")[0]}</devices></domain>`,
      );
      execFileSync("virt-xml-validate", [file, "domain"], { stdio: "pipe" });
      const elsewhere = await c.stowctl([
        "volume",
        "xml",
        "vm1-disk0",
        "--host",
        c.agents.find((a) => a.name !== v.hostId)!.name,
      ]);
      expect(elsewhere.exitCode).toBe(6);
      expect(elsewhere.stderr).toMatch(
        /no active iscsi export allows host .*stowctl volume export vm1-disk0 --allow/,
      );
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
      await c.publishCommand(
        commandSubject(v.hostId),
        toBinary(AgentCommandSchema, cmd),
        `${v.operationId}-again`,
      );
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
