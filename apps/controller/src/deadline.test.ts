import { create, fromBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  AgentCommandSchema,
  CreateVolumeRequestSchema,
  DeleteVolumeRequestSchema,
  InventorySchema,
  OperationResultSchema,
  PoolKind,
  VolumeFormat,
} from "@stowage/proto";
import {
  getOperation,
  getVolumeById,
  ledgerDiscrepancies,
  listFindings,
  type OperationRow,
} from "@stowage/store";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { applyInventory } from "./agents.js";
import type { ControllerContext } from "./context.js";
import { commandDeadlineMs } from "./deadline.js";
import { adoptFinding } from "./finding-service.js";
import { reconcileOnce } from "./reconciler.js";
import { relayOnce } from "./relay.js";
import { applyResult } from "./results.js";
import { addVolume, GiB, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";
import { createVolume, deleteVolume } from "./volume-service.js";

const TTL = 60_000;

describe("deadlines, late results and re-sends (on PGlite)", () => {
  let f: ServiceFixture;
  let pool: string;
  /** Publications the relay made, by message id. */
  const published: string[] = [];
  let ctx: ControllerContext;

  const pooled = async () => {
    const [p] = await f.sql<
      { reservedBytes: bigint; allocatedBytes: bigint; volumeCount: number }[]
    >`select reserved_bytes, allocated_bytes, volume_count from pools where id = ${pool}`;
    return p!;
  };
  /** Moves an operation (and its reservation) `ms` into the past, as if it had been written then. */
  const age = async (op: OperationRow | undefined, ms: number) => {
    await f.sql`update operations set created_at = created_at - make_interval(secs => ${ms / 1000}),
      sent_at = sent_at - make_interval(secs => ${ms / 1000}) where id = ${op!.id}`;
    await f.sql`update reservations set expires_at = expires_at - make_interval(secs => ${ms / 1000})
      where volume_id = ${op!.volumeId}`;
  };
  const succeed = (op: OperationRow | undefined, path: string) =>
    applyResult(
      ctx,
      create(OperationResultSchema, {
        operationId: op!.id,
        hostId: "h1",
        success: true,
        artifact: {
          volumeId: op!.volumeId,
          poolName: "files",
          sizeBytes: 40n * GiB,
          format: VolumeFormat.RAW,
          allocatedBytes: 4096n,
          path,
        },
      }),
    );
  const make = async (name: string, sizeBytes = 40n * GiB) =>
    createVolume(
      ctx,
      create(CreateVolumeRequestSchema, { name, sizeBytes, format: VolumeFormat.RAW }),
      "test",
    );

  beforeAll(async () => {
    f = await openServiceFixture({ reservationTtlMs: TTL, resendAfterMs: 1000, resendMaxAttempts: 3 });
    pool = await f.addPool("files", "dir", ["raw"]);
    ctx = {
      ...f.ctx,
      bus: {
        js: {
          publish: async (_subject: string, _data: Uint8Array, o: { msgID: string }) => {
            published.push(o.msgID);
            return { duplicate: false };
          },
        },
      },
    } as unknown as ControllerContext;
  });
  afterAll(async () => {
    await f?.close();
  });

  it("gives every command a deadline a margin before the operation's time to live", async () => {
    const out = await make("deadline-of-create", GiB);
    const cmd = fromBinary(AgentCommandSchema, out.operation!.command);
    const issued = timestampDate(cmd.issuedAt!).getTime();
    expect(timestampDate(cmd.deadline!).getTime() - issued).toBe(commandDeadlineMs(TTL));
    expect(commandDeadlineMs(TTL)).toBe(TTL - 12_000);
    expect(commandDeadlineMs(15 * 60_000)).toBe(14 * 60_000);
    // The reservation outlives the deadline: an agent that starts at the last moment is still in time.
    const [r] = await f.sql<
      { expiresAt: Date }[]
    >`select expires_at from reservations where volume_id = ${out.volume!.id}`;
    expect(r!.expiresAt.getTime()).toBeGreaterThan(timestampDate(cmd.deadline!).getTime());
  });

  it("fails an operation that could not be delivered at its deadline: capacity released, volume error", async () => {
    const before = await pooled();
    const out = await make("never-delivered", GiB);
    expect((await pooled()).reservedBytes).toBe(before.reservedBytes + GiB);
    await age(out.operation, TTL + 1000);
    await reconcileOnce(ctx);
    // A create fails through its reservation's expiry (code expired), at the same time to live.
    const op = await getOperation(f.sql, out.operation!.id);
    expect(op?.state).toBe("failed");
    expect(op?.error).toMatchObject({ code: "expired", message: expect.stringMatching(/within 60s/) });
    const v = await getVolumeById(f.sql, out.volume!.id);
    expect(v).toMatchObject({ state: "error", error: { code: "expired" } });
    expect(await pooled()).toEqual(before);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("fails a delete that was never answered, and applies its late success: the volume is deleted, its bytes released", async () => {
    const v = await addVolume(f.sql, { name: "slow-delete", poolId: pool, format: "raw" });
    const before = await pooled();
    const out = await deleteVolume(ctx, create(DeleteVolumeRequestSchema, { volume: "slow-delete" }), "test");
    await age(out.operation, TTL + 1000);
    await reconcileOnce(ctx);
    expect((await getVolumeById(f.sql, v.id))?.state).toBe("error");
    expect((await getOperation(f.sql, out.operation!.id))?.error).toMatchObject({
      code: "deadline_exceeded",
      message: expect.stringMatching(/did not answer .* within its time to live of 60s/),
    });
    await applyResult(
      ctx,
      create(OperationResultSchema, { operationId: out.operation!.id, hostId: "h1", success: true }),
    );
    expect((await getVolumeById(f.sql, v.id))?.state).toBe("deleted");
    expect((await pooled()).allocatedBytes).toBe(before.allocatedBytes - GiB);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("adopts a create that succeeds after its operation failed, when the pool can still hold it", async () => {
    const before = await pooled();
    const out = await make("late-but-fits");
    await age(out.operation, TTL + 1000);
    await reconcileOnce(ctx);
    expect((await getVolumeById(f.sql, out.volume!.id))?.state).toBe("error");
    expect(await pooled()).toEqual(before);
    await succeed(out.operation, "/pool/late-but-fits");
    expect(await getVolumeById(f.sql, out.volume!.id)).toMatchObject({
      state: "available",
      error: null,
      hostPath: "/pool/late-but-fits",
      allocatedBytes: 4096n,
    });
    expect(await pooled()).toMatchObject({
      allocatedBytes: before.allocatedBytes + 40n * GiB,
      volumeCount: before.volumeCount + 1,
    });
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
    // Its result again changes nothing.
    await succeed(out.operation, "/pool/late-but-fits");
    expect((await pooled()).allocatedBytes).toBe(before.allocatedBytes + 40n * GiB);
    expect(await listFindings(f.sql, { kind: "orphan" })).toEqual([]);
  });

  it("reports a late create as an orphan finding when the pool cannot hold it any more, and the inventory agrees", async () => {
    const out = await make("late-no-room");
    await age(out.operation, TTL + 1000);
    await reconcileOnce(ctx);
    // Meanwhile the space went elsewhere: the pool has room for 1 GiB more, not 40.
    await f.sql`update pools set total_bytes = allocated_bytes + reserved_bytes + ${GiB}::int8,
      free_bytes = allocated_bytes + reserved_bytes + ${GiB}::int8 where id = ${pool}`;
    const before = await pooled();
    await succeed(out.operation, "/pool/late-no-room");
    const v = await getVolumeById(f.sql, out.volume!.id);
    expect(v).toMatchObject({ state: "error", error: { code: "orphaned" } });
    expect(await pooled()).toEqual(before);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
    const findings = await listFindings(f.sql, { kind: "orphan" });
    expect(findings).toEqual([
      expect.objectContaining({
        hostId: "h1",
        subject: v!.id,
        poolId: pool,
        sizeBytes: 40n * GiB,
        format: "raw",
        path: "/pool/late-no-room",
        operationId: out.operation!.id,
      }),
    ]);
    // The agent's delta after the create, and its next full inventory, judge it the same: still an orphan.
    const artefact = {
      volumeId: v!.id,
      poolName: "files",
      sizeBytes: 40n * GiB,
      format: VolumeFormat.RAW,
      allocatedBytes: 4096n,
      path: "/pool/late-no-room",
    };
    await applyInventory(ctx, create(InventorySchema, { hostId: "h1", delta: true, volumes: [artefact] }));
    expect((await listFindings(f.sql, { kind: "orphan" })).map((x) => x.subject)).toEqual([v!.id]);
    await f.sql`update hosts set inventory_at = null where id = 'h1'`;
    await applyInventory(
      ctx,
      create(InventorySchema, {
        hostId: "h1",
        host: { name: "h1" },
        pools: [
          {
            name: "files",
            kind: PoolKind.DIR,
            healthy: true,
            totalBytes: 100n * GiB,
            freeBytes: 100n * GiB,
            formats: [VolumeFormat.RAW],
          },
        ],
        volumes: [artefact],
      }),
    );
    const orphans = await listFindings(f.sql, { kind: "orphan" });
    expect(orphans.map((x) => [x.subject, x.seq])).toEqual([[v!.id, findings[0]!.seq]]);
    expect(orphans[0]!.detail).toMatch(/in error whose space the ledger released/);
    // Once there is room, adopting the finding holds the volume again and makes it available.
    await f.sql`update pools set total_bytes = 200 * ${GiB}::int8, free_bytes = 200 * ${GiB}::int8 where id = ${pool}`;
    const adopted = await adoptFinding(ctx, { volumeId: v!.id, hostId: "", name: "", labels: {} }, "ops");
    expect(adopted).toMatchObject({ id: v!.id, state: "available", hostPath: "/pool/late-no-room" });
    expect(await listFindings(f.sql, { kind: "orphan" })).toEqual([]);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("backs re-sends off, doubling each time, and stops at the cap", async () => {
    const out = await make("resent", GiB);
    const id = out.operation!.id;
    const sends = () => published.filter((m) => m === id).length;
    // The writer's fast path is a no-op here: the relay publishes it (attempt 1).
    await relayOnce(ctx);
    expect(sends()).toBe(1);
    const at = async (attempts: number, sentAgoMs: number) =>
      f.sql`update operations set attempts = ${attempts}, sent_at = now() - make_interval(secs => ${sentAgoMs / 1000})
        where id = ${id}`;
    // After the first publication: again after 1 s.
    await at(1, 500);
    await relayOnce(ctx);
    expect(sends()).toBe(1);
    await at(1, 1100);
    await relayOnce(ctx);
    expect(sends()).toBe(2);
    expect((await getOperation(f.sql, id))?.attempts).toBe(2);
    // After the second: 2 s.
    await at(2, 1500);
    await relayOnce(ctx);
    expect(sends()).toBe(2);
    await at(2, 2100);
    await relayOnce(ctx);
    expect(sends()).toBe(3);
    // Three publications is the cap: no more, however long it waits, until its deadline fails it.
    await at(3, 50_000);
    await relayOnce(ctx);
    expect(sends()).toBe(3);
    expect((await getOperation(f.sql, id))?.state).toBe("sent");
    await age(out.operation, TTL + 1000);
    await reconcileOnce(ctx);
    expect((await getOperation(f.sql, id))?.state).toBe("failed");
  });

  it("does not publish an operation once its command's deadline has passed", async () => {
    const out = await make("too-late-to-send", GiB);
    await age(out.operation, commandDeadlineMs(TTL) + 500);
    await relayOnce(ctx);
    expect(published).not.toContain(out.operation!.id);
  });
});
