import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  AgentService,
  PlacementService,
  PoolKind,
  PoolService,
  VolumeFormat,
  VolumeService,
  VolumeState,
} from "@stowage/proto";
import { ledgerDiscrepancies, openDatabase } from "@stowage/store";
import {
  freePort,
  makeTempDir,
  type NatsServer,
  natsAvailable,
  postgresAvailable,
  type Service,
  spawnService,
  startNats,
  type TestPostgres,
  testPostgres,
} from "@stowage/testkit";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "./support/cluster.js";

const GiB = 1024n ** 3n;

/**
 * Scheduling against real PostgreSQL with two controller processes. The hosts are simulated: they register
 * over gRPC with pools of a fixed size and never consume their commands, so volumes stay `creating` and hold
 * their reservations, which is what the ledger must account for.
 */
describe.skipIf(!natsAvailable() || !postgresAvailable())("scheduling across two controllers", () => {
  let pg: TestPostgres;
  let nats: NatsServer;
  const controllers: { service: Service; url: string }[] = [];
  let tmp: Awaited<ReturnType<typeof makeTempDir>>;

  const transport = (url: string) => createGrpcTransport({ baseUrl: url });
  const volumes = (k: number) => createClient(VolumeService, transport(controllers[k % 2]!.url));

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-race-");
    pg = await testPostgres();
    nats = await startNats({ dir: join(tmp.path, "nats") });
    for (const k of [0, 1]) {
      const grpc = await freePort();
      const metrics = await freePort();
      const service = await spawnService({
        name: `controller-${k}`,
        command: process.execPath,
        args: [join(ROOT, "apps/controller/dist/main.js")],
        env: {
          STOWAGE_GRPC_LISTEN: `127.0.0.1:${grpc}`,
          STOWAGE_METRICS_LISTEN: `127.0.0.1:${metrics}`,
          STOWAGE_DATABASE_URL: pg.url,
          STOWAGE_NATS_URL: nats.url,
          // Simulated hosts send no heartbeats: keep them up for the test's length.
          STOWAGE_HOST_DOWN_AFTER_MS: "600000",
        },
        readyWhen: `http://127.0.0.1:${metrics}/readyz`,
        readyTimeoutMs: 60_000,
        logFile: join(tmp.path, `controller-${k}.log`),
      });
      controllers.push({ service, url: `http://127.0.0.1:${grpc}` });
    }
    const agents = createClient(AgentService, transport(controllers[0]!.url));
    const pool = (name: string, numaNode: number, total: bigint) => ({
      name,
      kind: PoolKind.DIR,
      numaNode,
      healthy: true,
      totalBytes: total,
      usedBytes: 0n,
      freeBytes: total,
      formats: [VolumeFormat.QCOW2, VolumeFormat.RAW],
      overcommitRatio: 1,
    });
    for (const host of ["sim1", "sim2"]) {
      await agents.registerAgent({
        host: {
          name: host,
          zone: host === "sim1" ? "z1" : "z2",
          numaNodes: [
            { id: 0, cpuList: "0-3", cpus: [0, 1, 2, 3], memoryBytes: 8n * GiB },
            { id: 1, cpuList: "4-7", cpus: [4, 5, 6, 7], memoryBytes: 8n * GiB },
          ],
          cpuCount: 8,
        },
        pools: [pool("race", 0, 10n * GiB), pool("group", 1, 10n * GiB)],
      });
    }
  }, 180_000);

  afterAll(async () => {
    await Promise.all(controllers.map((c) => c.service.stop()));
    await nats?.stop();
    await pg?.release();
    await tmp?.cleanup();
  });

  it("grants exactly the requests that fit, refuses the rest with RESOURCE_EXHAUSTED, and the ledger adds up to the byte", async () => {
    // 50 parallel 1 GiB volumes, alternating between the two controllers, for four 10 GiB pools on two hosts:
    // exactly 40 fit.
    const results = await Promise.allSettled(
      Array.from({ length: 50 }, (_, k) =>
        volumes(k).createVolume({ name: `race-${k}`, sizeBytes: GiB, format: VolumeFormat.QCOW2 }),
      ),
    );
    const granted = results.filter((r) => r.status === "fulfilled");
    const refused = results.filter((r) => r.status === "rejected");
    expect(granted).toHaveLength(40);
    for (const r of refused) {
      expect(r.reason).toBeInstanceOf(ConnectError);
      expect((r.reason as ConnectError).code).toBe(Code.ResourceExhausted);
      expect((r.reason as ConnectError).rawMessage).toMatch(
        /no pool can take 1 GiB qcow2: 4 refused \(4 by capacity\)/,
      );
    }
    const db = await openDatabase({ url: pg.url, max: 2 });
    try {
      expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
      const pools = await db.sql<
        { id: string; reservedBytes: bigint; allocatedBytes: bigint; totalBytes: bigint }[]
      >`
        select id, reserved_bytes, allocated_bytes, total_bytes from pools order by id`;
      for (const p of pools) {
        expect(p.reservedBytes + p.allocatedBytes).toBe(10n * GiB);
        expect(p.reservedBytes + p.allocatedBytes <= p.totalBytes).toBe(true);
      }
      const [sum] = await db.sql<{ live: bigint; n: number }[]>`
        select coalesce(sum(size_bytes), 0)::int8 as live, count(*)::int as n from volumes where state <> 'deleted'`;
      expect(sum!.n).toBe(40);
      expect(sum!.live).toBe(40n * GiB);
    } finally {
      await db.close();
    }
  });

  it("places the disks of a VM all or nothing", async () => {
    const placement = createClient(PlacementService, transport(controllers[1]!.url));
    const pools = createClient(PoolService, transport(controllers[1]!.url));
    // The race filled every pool: a third host brings one small pool on NUMA node 0 and a large one on node 1.
    const agents = createClient(AgentService, transport(controllers[1]!.url));
    await agents.registerAgent({
      host: {
        name: "sim3",
        numaNodes: [
          { id: 0, cpuList: "0-1" },
          { id: 1, cpuList: "2-3" },
        ],
      },
      pools: [
        {
          name: "n0",
          kind: PoolKind.DIR,
          numaNode: 0,
          healthy: true,
          totalBytes: 8n * GiB,
          freeBytes: 8n * GiB,
          formats: [VolumeFormat.QCOW2, VolumeFormat.RAW],
          overcommitRatio: 1,
        },
        {
          name: "n1",
          kind: PoolKind.DIR,
          numaNode: 1,
          healthy: true,
          totalBytes: 100n * GiB,
          freeBytes: 100n * GiB,
          formats: [VolumeFormat.QCOW2, VolumeFormat.RAW],
          overcommitRatio: 1,
        },
      ],
    });
    const disk = (name: string, gib: bigint) => ({
      name,
      sizeBytes: gib * GiB,
      format: VolumeFormat.RAW,
      constraints: { numa: { hostId: "sim3", numaNode: 0, required: true } },
    });
    const explained = await placement.explainGroupPlacement({
      volumes: [disk("vm9-root", 4n), disk("vm9-data", 4n)],
    });
    expect(explained.feasible).toBe(true);
    expect(explained.placements.map((p) => [p.poolId, p.cpuSet])).toEqual([
      ["sim3/n0", "0-1"],
      ["sim3/n0", "0-1"],
    ]);
    // 4 + 5 GiB does not fit node 0's 8 GiB: nothing is created.
    const v = createClient(VolumeService, transport(controllers[0]!.url));
    await expect(
      v.createVolumeGroup({ volumes: [disk("vm9-root", 4n), disk("vm9-data", 5n)], requestId: "vm9-a" }),
    ).rejects.toMatchObject({
      code: Code.ResourceExhausted,
    });
    expect((await v.listVolumes({ namePrefix: "vm9-" })).volumes).toHaveLength(0);
    expect((await pools.getPool({ poolId: "sim3/n0" })).pool?.capacity?.reservedBytes).toBe(0n);
    // 4 + 4 GiB fits: both are created, on node 0; a retry with the same request id returns the same volumes.
    const made = await v.createVolumeGroup({
      volumes: [disk("vm9-root", 4n), disk("vm9-data", 4n)],
      requestId: "vm9-b",
    });
    expect(made.volumes.map((x) => [x.volume?.poolId, x.volume?.numaNode, x.volume?.state])).toEqual([
      ["sim3/n0", 0, VolumeState.CREATING],
      ["sim3/n0", 0, VolumeState.CREATING],
    ]);
    const again = await volumes(1).createVolumeGroup({
      volumes: [disk("vm9-root", 4n), disk("vm9-data", 4n)],
      requestId: "vm9-b",
    });
    expect(again.volumes.map((x) => x.volume?.id)).toEqual(made.volumes.map((x) => x.volume?.id));
  });

  it("explains placements through stowctl, and dry runs reserve nothing", async () => {
    const stowctl = (args: string[]) =>
      execa(
        process.execPath,
        [join(ROOT, "apps/cli/bin/stowctl.js"), "--server", controllers[0]!.url, ...args],
        { reject: false },
      );
    const explain = await stowctl([
      "placement",
      "explain",
      "--size",
      "50G",
      "--numa-host",
      "sim3",
      "--numa-node",
      "1",
      "-o",
      "json",
    ]);
    expect(explain.exitCode).toBe(0);
    const e = JSON.parse(explain.stdout);
    expect(e.feasible).toBe(true);
    expect(e.placement.poolId).toBe("sim3/n1");
    expect(e.placement.cpuSet).toBe("2-3");
    const refused = e.placement.candidates.filter((c: { feasible: boolean }) => !c.feasible);
    expect(refused.length).toBeGreaterThan(0);
    for (const c of refused) expect(c.reason).not.toBe("");
    const table = await stowctl(["placement", "explain", "--size", "50G"]);
    expect(table.stdout).toMatch(/REFUSED_BY/);
    expect(table.stdout).toMatch(/capacity/);
    const dry = await stowctl(["volume", "create", "dry-one", "--size", "10G", "--dry-run", "-o", "json"]);
    expect(dry.exitCode).toBe(0);
    expect(JSON.parse(dry.stdout).placement.poolId).toBe("sim3/n1");
    const list = await stowctl(["volume", "list", "--prefix", "dry-", "-o", "json"]);
    expect(JSON.parse(list.stdout)).toEqual([]);
    // A group through the CLI: both disks on sim3's NUMA node 1, or nothing.
    const group = await stowctl([
      "volume",
      "create-group",
      "--disk",
      "vm7-root:10G",
      "--disk",
      "vm7-data:20G:raw",
      "--numa-host",
      "sim3",
      "--numa-node",
      "1",
      "--numa-required",
      "-o",
      "json",
    ]);
    expect(group.exitCode).toBe(0);
    expect(JSON.parse(group.stdout).map((r: { volume: { poolId: string } }) => r.volume.poolId)).toEqual([
      "sim3/n1",
      "sim3/n1",
    ]);
    const tooBig = await stowctl([
      "volume",
      "create-group",
      "--disk",
      "vm8-root:10G",
      "--disk",
      "vm8-data:900G",
      "--numa-host",
      "sim3",
      "--numa-node",
      "1",
      "--numa-required",
    ]);
    expect(tooBig.exitCode).toBe(5);
    expect(JSON.parse((await stowctl(["volume", "list", "--prefix", "vm8-", "-o", "json"])).stdout)).toEqual(
      [],
    );
  });
});
