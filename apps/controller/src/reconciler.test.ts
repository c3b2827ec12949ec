import { create } from "@bufbuild/protobuf";
import { InventorySchema, PoolKind, VolumeFormat } from "@stowage/proto";
import {
  getOperation,
  getVolumeById,
  insertOperation,
  insertVolume,
  ledgerDiscrepancies,
  reserveCapacity,
} from "@stowage/store";
import { newVolume } from "@stowage/store/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { diffInventory } from "./agents.js";
import type { ControllerContext } from "./context.js";
import { reconcileOnce } from "./reconciler.js";
import { GiB, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";

describe("reconciler (on PGlite)", () => {
  let f: ServiceFixture;
  let ctx: ControllerContext;

  beforeAll(async () => {
    f = await openServiceFixture({ reservationTtlMs: 1000, hostDownAfterMs: 1000 });
    await f.addPool("p", "dir", ["raw"]);
    ctx = f.ctx;
  });
  afterAll(async () => {
    await f?.close();
  });

  it("releases a reservation never confirmed within its time to live, and fails its volume and operation", async () => {
    const id = "vol-00000000000000000000000000000001";
    const op = "op-00000000000000000000000000000001";
    await f.sql.begin(async (tx) => {
      await insertVolume(tx, newVolume(id, "h1/p", 10n * GiB, { name: "stuck", operationId: op }));
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
    expect((await getVolumeById(f.sql, id))?.state).toBe("error");
    expect((await getVolumeById(f.sql, id))?.error?.code).toBe("expired");
    expect((await getOperation(f.sql, op))?.state).toBe("failed");
    const [pool] = await f.sql<
      { reservedBytes: bigint; volumeCount: number }[]
    >`select reserved_bytes, volume_count from pools where id = 'h1/p'`;
    expect(pool).toMatchObject({ reservedBytes: 0n, volumeCount: 0 });
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
    // A second pass changes nothing.
    await reconcileOnce(ctx);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("marks a host down after it misses its heartbeats", async () => {
    await f.sql`update hosts set last_heartbeat_at = now() - interval '10 seconds' where id = 'h1'`;
    await reconcileOnce(ctx);
    const [h] = await f.sql<{ state: string }[]>`select state from hosts where id = 'h1'`;
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
  it("carries what the agent said of an orphan's artefact, so that it can be adopted", () => {
    const v = create(InventorySchema, {
      pools: [{ name: "p", kind: PoolKind.DIR }],
      volumes: [
        {
          volumeId: a,
          poolName: "p",
          path: "/x/a.qcow2",
          sizeBytes: 5n << 30n,
          format: VolumeFormat.QCOW2,
          allocatedBytes: 4096n,
          operationId: "op-1",
        },
      ],
    });
    expect(diffInventory(v, "h1", [])[0]?.artefact).toEqual({
      sizeBytes: 5n << 30n,
      format: "qcow2",
      allocatedBytes: 4096n,
      path: "/x/a.qcow2",
      operationId: "op-1",
    });
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
  it("reports an artefact of an error volume whose bytes were released, or of a deleted one, as an orphan", () => {
    const found = diffInventory(
      inv([
        { volumeId: a, poolName: "p", path: "/x/a" },
        { volumeId: b, poolName: "p", path: "/x/b" },
      ]),
      "h1",
      [
        { id: a, state: "error", poolId: "h1/p", holds: false },
        { id: b, state: "deleted", poolId: "h1/p", holds: false },
      ],
    );
    expect(found.map((x) => [x.kind, x.subject])).toEqual([
      ["orphan", a],
      ["orphan", b],
    ]);
    expect(found[0]!.detail).toMatch(/in error whose space the ledger released/);
    expect(found[1]!.detail).toMatch(/deleted volume/);
  });
  it("knows an artefact of an error volume that the ledger still holds (a failed delete)", () => {
    expect(
      diffInventory(inv([{ volumeId: a, poolName: "p", path: "/x/a" }]), "h1", [
        { id: a, state: "error", poolId: "h1/p", holds: true },
      ]),
    ).toEqual([]);
  });
  it("finds nothing when they agree", () => {
    expect(
      diffInventory(inv([{ volumeId: a, poolName: "p", path: "/x/a" }]), "h1", [
        { id: a, state: "available", poolId: "h1/p" },
      ]),
    ).toEqual([]);
  });
});
