import { create } from "@bufbuild/protobuf";
import { InventorySchema, PoolKind, VolumeFormat } from "@stowage/proto";
import {
  applyPoolReports,
  type Database,
  getOperation,
  getVolumeById,
  insertOperation,
  insertVolume,
  ledgerDiscrepancies,
  migrate,
  openDatabase,
  reserveCapacity,
  upsertHost,
} from "@stowage/store";
import { createLogger } from "@stowage/telemetry";
import { makeTempDir } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { diffInventory } from "./agents.js";
import { loadControllerConfig } from "./config.js";
import type { ControllerContext } from "./context.js";
import { reconcileOnce } from "./reconciler.js";

const GiB = 1024n ** 3n;

describe("reconciler (on PGlite)", () => {
  let db: Database;
  let dir: Awaited<ReturnType<typeof makeTempDir>>;
  let ctx: ControllerContext;

  beforeAll(async () => {
    dir = await makeTempDir("stowage-reconcile-");
    db = await openDatabase({ dataDir: dir.path });
    await migrate(db.sql);
    ctx = {
      config: loadControllerConfig({}, { reservationTtlMs: 1000, hostDownAfterMs: 1000 }),
      db,
      sql: db.sql,
      log: createLogger("test", "silent"),
      notifyChange: () => {},
      kickRelay: () => {},
    } as unknown as ControllerContext;
    await upsertHost(db.sql, {
      id: "h1",
      zone: "",
      labels: {},
      numaNodes: [],
      cpuCount: 1,
      memoryBytes: 1n,
      agentVersion: "t",
      initiatorName: "",
      metricsAddress: "",
    });
    await applyPoolReports(db.sql, "h1", [
      {
        name: "p",
        kind: "dir",
        numaNode: null,
        healthy: true,
        healthMessage: "",
        totalBytes: 100n * GiB,
        usedBytes: 0n,
        freeBytes: 100n * GiB,
        provisionedBytes: 0n,
        dataPercent: null,
        metadataPercent: null,
        overcommitRatio: 1,
        maxUsedPercent: 90,
        reservedPercent: 0,
        maxVolumes: 0,
        labels: {},
        formats: ["raw"],
        shared: false,
      },
    ]);
  }, 60_000);
  afterAll(async () => {
    await db?.close();
    await dir?.cleanup();
  });

  it("releases a reservation never confirmed within its time to live, and fails its volume and operation", async () => {
    const id = "vol-00000000000000000000000000000001";
    const op = "op-00000000000000000000000000000001";
    await db.sql.begin(async (tx) => {
      await insertVolume(tx, {
        id,
        name: "stuck",
        sizeBytes: 10n * GiB,
        format: "raw",
        poolId: "h1/p",
        hostId: "h1",
        numaNode: null,
        cpuSet: "",
        labels: {},
        qcow2: {},
        requestId: null,
        operationId: op,
        antiAffinityGroup: "",
      });
      expect(await reserveCapacity(tx, { poolId: "h1/p", volumeId: id, bytes: 10n * GiB, ttlMs: 1 })).toBe(
        true,
      );
      await insertOperation(tx, {
        id: op,
        kind: "create_volume",
        hostId: "h1",
        poolId: "h1/p",
        volumeId: id,
        command: new Uint8Array(),
        requestedBy: "t",
      });
    });
    await new Promise((r) => setTimeout(r, 50));
    await reconcileOnce(ctx);
    expect((await getVolumeById(db.sql, id))?.state).toBe("error");
    expect((await getVolumeById(db.sql, id))?.error?.code).toBe("expired");
    expect((await getOperation(db.sql, op))?.state).toBe("failed");
    const [pool] = await db.sql<
      { reservedBytes: bigint; volumeCount: number }[]
    >`select reserved_bytes, volume_count from pools where id = 'h1/p'`;
    expect(pool).toMatchObject({ reservedBytes: 0n, volumeCount: 0 });
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
    // A second pass changes nothing.
    await reconcileOnce(ctx);
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });

  it("marks a host down after it misses its heartbeats", async () => {
    await db.sql`update hosts set last_heartbeat_at = now() - interval '10 seconds' where id = 'h1'`;
    await reconcileOnce(ctx);
    const [h] = await db.sql<{ state: string }[]>`select state from hosts where id = 'h1'`;
    expect(h!.state).toBe("down");
  });
});

describe("diffInventory", () => {
  const inv = (volumes: { volumeId: string; poolName: string; path: string }[], foreign: string[] = []) =>
    create(InventorySchema, {
      pools: [{ name: "p", kind: PoolKind.DIR }],
      volumes: volumes.map((v) => ({ ...v, format: VolumeFormat.RAW })),
      foreignArtifacts: foreign,
    });
  const a = "vol-0000000000000000000000000000000a";
  const b = "vol-0000000000000000000000000000000b";

  it("reports what the host has and the database lacks as orphans, never anything else", () => {
    const f = diffInventory(inv([{ volumeId: a, poolName: "p", path: "/x/a" }]), "h1", []);
    expect(f).toEqual([expect.objectContaining({ kind: "orphan", subject: a, poolId: "h1/p" })]);
  });
  it("reports available volumes the host lacks as missing, and foreign files as foreign", () => {
    const f = diffInventory(inv([], ["p/old.img"]), "h1", [
      { id: b, state: "available", poolId: "h1/p" },
      { id: a, state: "available", poolId: "h1/gone" },
    ]);
    expect(f.map((x) => [x.kind, x.subject])).toEqual([
      ["missing", b],
      ["foreign", "p/old.img"],
    ]);
  });
  it("finds nothing when they agree", () => {
    expect(
      diffInventory(inv([{ volumeId: a, poolName: "p", path: "/x/a" }]), "h1", [
        { id: a, state: "available", poolId: "h1/p" },
      ]),
    ).toEqual([]);
  });
});
