import { create } from "@bufbuild/protobuf";
import { CAPABILITIES } from "@stowage/core";
import {
  CloneVolumeRequestSchema,
  CreateSnapshotRequestSchema,
  DeleteSnapshotRequestSchema,
  DeleteVolumeRequestSchema,
  OperationResultSchema,
  ResizeVolumeRequestSchema,
  RevertSnapshotRequestSchema,
} from "@stowage/proto";
import {
  getOperation,
  getSnapshotById,
  getVolumeById,
  insertSnapshot,
  ledgerDiscrepancies,
  transitionSnapshot,
} from "@stowage/store";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ControllerContext } from "./context.js";
import {
  cloneVolume,
  createSnapshot,
  deleteSnapshot,
  resizeVolume,
  revertSnapshot,
} from "./lifecycle-service.js";
import { reconcileOnce } from "./reconciler.js";
import { applyResult } from "./results.js";
import {
  addVolume,
  codeOf,
  countRows,
  GiB,
  openServiceFixture,
  type ServiceFixture,
} from "./testing/service-fixture.js";
import { deleteVolume } from "./volume-service.js";

describe("lifecycle service (on PGlite)", () => {
  let f: ServiceFixture;
  let dirPool: string;

  beforeAll(async () => {
    f = await openServiceFixture();
    dirPool = await f.addPool("files", "dir", ["qcow2", "raw"]);
  });
  afterAll(async () => {
    await f?.close();
  });

  describe("capabilities at the API edge", () => {
    it("refuses a snapshot of a raw volume on a dir pool with FAILED_PRECONDITION, writing nothing", async () => {
      await addVolume(f.sql, { name: "raw-disk", poolId: dirPool, format: "raw" });
      const before = await Promise.all(
        (["snapshots", "operations", "audit_log"] as const).map((t) => countRows(f.sql, t)),
      );
      const req = create(CreateSnapshotRequestSchema, { volume: "raw-disk", name: "s1" });
      await expect(createSnapshot(f.ctx, req, "test")).rejects.toThrow(
        /raw volumes on dir pools do not support snapshots/,
      );
      expect(await codeOf(createSnapshot(f.ctx, req, "test"))).toBe("failed_precondition");
      const after = await Promise.all(
        (["snapshots", "operations", "audit_log"] as const).map((t) => countRows(f.sql, t)),
      );
      expect(after).toEqual(before);
    });

    it("accepts the same snapshot once the dir/raw row of the table allows snapshots", async () => {
      const capabilities = {
        ...CAPABILITIES,
        dir: { ...CAPABILITIES.dir, raw: { ...CAPABILITIES.dir.raw!, snapshots: true } },
      };
      const ctx: ControllerContext = { ...f.ctx, capabilities };
      const auditBefore = await countRows(f.sql, "audit_log");
      const req = create(CreateSnapshotRequestSchema, { volume: "raw-disk", name: "s1" });
      const out = await createSnapshot(ctx, req, "test");
      expect(out.snapshot.state).toBe("creating");
      expect(out.operation?.kind).toBe("create_snapshot");
      expect(await countRows(f.sql, "audit_log")).toBe(auditBefore + 1);
    });

    it("refuses a clone, a flatten and a shrink the table does not offer, before writing anything", async () => {
      const v = await addVolume(f.sql, { name: "no-copies", poolId: dirPool, format: "qcow2" });
      const capabilities = {
        ...CAPABILITIES,
        dir: { ...CAPABILITIES.dir, qcow2: { ...CAPABILITIES.dir.qcow2!, flatten: false, shrink: false } },
      };
      const ctx: ControllerContext = { ...f.ctx, capabilities };
      const ops = await countRows(f.sql, "operations");
      const clone = (flatten: boolean) =>
        cloneVolume(
          ctx,
          create(CloneVolumeRequestSchema, { sourceVolume: v.name, name: "copy", flatten }),
          "test",
        );
      expect(await codeOf(clone(true))).toBe("failed_precondition");
      const shrink = create(ResizeVolumeRequestSchema, {
        volume: v.name,
        newSizeBytes: GiB / 2n,
        allowShrink: true,
      });
      await expect(resizeVolume(ctx, shrink, "test")).rejects.toThrow(/do not support shrinking/);
      const noClones = {
        ...capabilities,
        dir: { ...capabilities.dir, qcow2: { ...capabilities.dir.qcow2, clones: false } },
      };
      expect(
        await codeOf(
          cloneVolume(
            { ...ctx, capabilities: noClones },
            create(CloneVolumeRequestSchema, { sourceVolume: v.name, name: "copy" }),
            "test",
          ),
        ),
      ).toBe("failed_precondition");
      expect(await countRows(f.sql, "operations")).toBe(ops);
      expect((await clone(false)).operation?.kind).toBe("clone_volume");
    });
  });

  describe("revert", () => {
    it("moves the volume to reverting, answers a repeat with the same operation, and refuses a delete meanwhile", async () => {
      const v = await addVolume(f.sql, { name: "golden", poolId: dirPool, format: "qcow2" });
      const snap = await f.sql.begin(async (tx) => {
        const s = await insertSnapshot(tx, {
          id: "snap-00000000000000000000000000000001",
          name: "v1",
          volumeId: v.id,
          sizeBytes: v.sizeBytes,
          operationId: "op-x",
        });
        return transitionSnapshot(tx, s, "available");
      });
      const req = create(RevertSnapshotRequestSchema, { volume: "golden", snapshot: "v1" });
      const out = await revertSnapshot(f.ctx, req, "test");
      expect(out.operation?.kind).toBe("revert_snapshot");
      expect(out.operation?.snapshotId).toBe(snap.id);
      expect((await getVolumeById(f.sql, v.id))?.state).toBe("reverting");
      expect((await revertSnapshot(f.ctx, req, "test")).operation?.id).toBe(out.operation?.id);
      const del = deleteVolume(f.ctx, create(DeleteVolumeRequestSchema, { volume: "golden" }), "test");
      await expect(del).rejects.toThrow(/golden is reverting: wait for it to finish/);
    });

    it("refuses a revert where the pool kind and format cannot revert", async () => {
      const capabilities = {
        ...CAPABILITIES,
        dir: { ...CAPABILITIES.dir, qcow2: { ...CAPABILITIES.dir.qcow2!, revert: false } },
      };
      const req = create(RevertSnapshotRequestSchema, { volume: "golden", snapshot: "v1" });
      await expect(revertSnapshot({ ...f.ctx, capabilities }, req, "test")).rejects.toThrow(
        /do not support reverting to a snapshot/,
      );
    });
  });

  it("moves a volume to resizing, holding the new size, and keeps its size until the agent confirms", async () => {
    const v = await addVolume(f.sql, { name: "grow", poolId: dirPool, format: "raw" });
    const out = await resizeVolume(
      f.ctx,
      create(ResizeVolumeRequestSchema, { volume: "grow", newSizeBytes: 2n * GiB }),
      "test",
    );
    expect(out.volume.state).toBe("resizing");
    expect(out.volume.sizeBytes).toBe(v.sizeBytes);
    expect(out.operation?.kind).toBe("resize_volume");
  });
});

describe("request ids make lifecycle calls retry-safe (on PGlite)", () => {
  let f: ServiceFixture;
  let pool: string;

  beforeAll(async () => {
    f = await openServiceFixture();
    pool = await f.addPool("files", "dir", ["qcow2", "raw"]);
  });
  afterAll(async () => {
    await f?.close();
  });

  /** What the agent's result does to the volume: the operation is over and the volume available again. */
  const finish = (volumeId: string) =>
    f.sql`update volumes set state = 'available', operation_id = null where id = ${volumeId}`;

  it("a revert retried with its request id after it finished returns that revert and runs no second one", async () => {
    const v = await addVolume(f.sql, { name: "vm-root", poolId: pool, format: "qcow2" });
    await f.sql.begin(async (tx) => {
      const s = await insertSnapshot(tx, {
        id: "snap-00000000000000000000000000000009",
        name: "before-upgrade",
        volumeId: v.id,
        sizeBytes: v.sizeBytes,
        operationId: "op-x",
      });
      return transitionSnapshot(tx, s, "available");
    });
    const req = create(RevertSnapshotRequestSchema, {
      volume: "vm-root",
      snapshot: "before-upgrade",
      requestId: "revert-1",
    });
    const first = await revertSnapshot(f.ctx, req, "test");
    await finish(v.id);
    const ops = await countRows(f.sql, "operations");
    // The answer was lost; the client retries: the same operation, nothing new, the volume left as it is.
    for (let i = 0; i < 3; i++) {
      const again = await revertSnapshot(f.ctx, req, "test");
      expect(again.operation?.id).toBe(first.operation?.id);
      expect(again.snapshot.name).toBe("before-upgrade");
    }
    expect(await countRows(f.sql, "operations")).toBe(ops);
    expect((await getVolumeById(f.sql, v.id))?.state).toBe("available");
    // Without a request id a second revert is a new call.
    const fresh = await revertSnapshot(f.ctx, { ...req, requestId: "" }, "test");
    expect(fresh.operation?.id).not.toBe(first.operation?.id);
  });

  it("a resize retried with its request id returns its operation; the id used for another call is ALREADY_EXISTS", async () => {
    const v = await addVolume(f.sql, { name: "data", poolId: pool, format: "raw" });
    const req = create(ResizeVolumeRequestSchema, {
      volume: "data",
      newSizeBytes: 2n * GiB,
      requestId: "grow-1",
    });
    const first = await resizeVolume(f.ctx, req, "test");
    expect(first.operation?.requestId).toBe("grow-1");
    await finish(v.id);
    expect((await resizeVolume(f.ctx, req, "test")).operation?.id).toBe(first.operation?.id);
    const ops = await countRows(f.sql, "operations");
    const reuse = create(DeleteVolumeRequestSchema, { volume: "data", requestId: "grow-1" });
    await expect(deleteVolume(f.ctx, reuse, "test")).rejects.toMatchObject({
      code: "already_exists",
      message: expect.stringMatching(/request id grow-1 was already used for resize volume of volume vol-/),
    });
    expect(await countRows(f.sql, "operations")).toBe(ops);
    expect((await getVolumeById(f.sql, v.id))?.state).toBe("available");
  });
});

describe("snapshots and clone bases hold capacity (on PGlite)", () => {
  let f: ServiceFixture;
  let vg: string;
  let files: string;
  let thin: string;

  /** A pool's ledger columns. */
  const ledger = async (poolId: string) => {
    const [row] = await f.sql<{ allocatedBytes: bigint; reservedBytes: bigint; volumeCount: number }[]>`
      select allocated_bytes, reserved_bytes, volume_count from pools where id = ${poolId}`;
    return row!;
  };
  const result = (op: { id: string } | undefined, success: boolean) =>
    applyResult(
      f.ctx,
      create(OperationResultSchema, {
        operationId: op!.id,
        hostId: "h1",
        success,
        ...(success ? {} : { error: { code: "tool_failed", message: "lvcreate failed" } }),
      }),
    );

  beforeAll(async () => {
    f = await openServiceFixture();
    vg = await f.addPool("vg", "lvm", ["raw"]);
    files = await f.addPool("files", "dir", ["qcow2", "raw"]);
    thin = await f.addPool("thin", "lvmthin", ["raw"]);
    // 1.5 GiB of LVM: room for a 1 GiB volume, not for its 100%ORIGIN snapshot as well.
    await f.sql`update pools set total_bytes = ${(3n * GiB) / 2n}, free_bytes = ${(3n * GiB) / 2n} where id = ${vg}`;
  });
  afterAll(async () => {
    await f?.close();
  });

  it("refuses a thick LVM snapshot that does not fit with RESOURCE_EXHAUSTED, and changes nothing", async () => {
    await addVolume(f.sql, { name: "lv-disk", poolId: vg, format: "raw" });
    const before = await Promise.all(
      (["snapshots", "operations", "audit_log"] as const).map((t) => countRows(f.sql, t)),
    );
    const ledgerBefore = await ledger(vg);
    const req = create(CreateSnapshotRequestSchema, { volume: "lv-disk", name: "s1" });
    await expect(createSnapshot(f.ctx, req, "test")).rejects.toMatchObject({
      code: "resource_exhausted",
      message: expect.stringMatching(/cannot take a snapshot of lv-disk: a lvm snapshot holds 1 GiB/),
    });
    const after = await Promise.all(
      (["snapshots", "operations", "audit_log"] as const).map((t) => countRows(f.sql, t)),
    );
    expect(after).toEqual(before);
    expect(await ledger(vg)).toEqual(ledgerBefore);
    const [held] = await f.sql<{ n: number }[]>`select count(*)::int as n from snapshot_reservations`;
    expect(held!.n).toBe(0);
    // With room for it, the same call reserves the origin's size.
    await f.sql`update pools set total_bytes = ${3n * GiB}, free_bytes = ${3n * GiB} where id = ${vg}`;
    const out = await createSnapshot(f.ctx, req, "test");
    expect(out.snapshot.state).toBe("creating");
    expect(await ledger(vg)).toEqual({ ...ledgerBefore, reservedBytes: ledgerBefore.reservedBytes + GiB });
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("a snapshot, then its delete, returns the ledger to where it was; results applied twice change nothing", async () => {
    await addVolume(f.sql, { name: "q-disk", poolId: files, format: "qcow2" });
    const start = await ledger(files);
    const made = await createSnapshot(
      f.ctx,
      create(CreateSnapshotRequestSchema, { volume: "q-disk", name: "s1" }),
      "test",
    );
    // A repeat of the call holds nothing more.
    await createSnapshot(
      f.ctx,
      create(CreateSnapshotRequestSchema, { volume: "q-disk", name: "s1" }),
      "test",
    );
    expect(await ledger(files)).toEqual({ ...start, reservedBytes: start.reservedBytes + GiB });
    await result(made.operation, true);
    await result(made.operation, true);
    expect(await ledger(files)).toEqual({ ...start, allocatedBytes: start.allocatedBytes + GiB });
    expect((await getSnapshotById(f.sql, made.snapshot.id))?.state).toBe("available");
    const del = await deleteSnapshot(
      f.ctx,
      create(DeleteSnapshotRequestSchema, { volume: "q-disk", snapshot: "s1" }),
      "test",
    );
    // Being deleted, it still holds its bytes; a failed delete keeps them (the snapshot is still there).
    expect(await ledger(files)).toEqual({ ...start, allocatedBytes: start.allocatedBytes + GiB });
    await result(del.operation, true);
    await result(del.operation, true);
    expect(await ledger(files)).toEqual(start);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("a failed snapshot gives its reservation back; a failed delete keeps what it holds", async () => {
    const start = await ledger(vg);
    const failed = await createSnapshot(
      f.ctx,
      create(CreateSnapshotRequestSchema, { volume: "lv-disk", name: "broken" }),
      "test",
    );
    expect((await ledger(vg)).reservedBytes).toBe(start.reservedBytes + GiB);
    await result(failed.operation, false);
    await result(failed.operation, false);
    expect(await ledger(vg)).toEqual(start);
    expect((await getSnapshotById(f.sql, failed.snapshot.id))?.state).toBe("error");

    const held = await ledger(files);
    const made = await createSnapshot(
      f.ctx,
      create(CreateSnapshotRequestSchema, { volume: "q-disk", name: "kept" }),
      "test",
    );
    await result(made.operation, true);
    const del = await deleteSnapshot(
      f.ctx,
      create(DeleteSnapshotRequestSchema, { volume: "q-disk", snapshot: "kept" }),
      "test",
    );
    await result(del.operation, false);
    expect(await ledger(files)).toEqual({ ...held, allocatedBytes: held.allocatedBytes + GiB });
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("a thin snapshot holds no bytes", async () => {
    await addVolume(f.sql, { name: "thin-disk", poolId: thin, format: "raw" });
    const start = await ledger(thin);
    const made = await createSnapshot(
      f.ctx,
      create(CreateSnapshotRequestSchema, { volume: "thin-disk", name: "s1" }),
      "test",
    );
    await result(made.operation, true);
    expect(await ledger(thin)).toEqual(start);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("linked clones of a dir snapshot hold its base image once, given back with the snapshot", async () => {
    const src = await addVolume(f.sql, { name: "golden-img", poolId: files, format: "qcow2" });
    const start = await ledger(files);
    const snap = await createSnapshot(
      f.ctx,
      create(CreateSnapshotRequestSchema, { volume: src.name, name: "gold" }),
      "test",
    );
    await result(snap.operation, true);
    const clone = (name: string, flatten = false) =>
      cloneVolume(
        f.ctx,
        create(CloneVolumeRequestSchema, { sourceVolume: src.name, sourceSnapshot: "gold", name, flatten }),
        "test",
      );
    const c1 = await clone("vm-1");
    const c2 = await clone("vm-2");
    const flat = await clone("vm-flat", true);
    // The snapshot (1 GiB), three clones (1 GiB each) and one base (1 GiB), however many clones stand on it.
    expect(await ledger(files)).toEqual({
      ...start,
      allocatedBytes: start.allocatedBytes + GiB,
      reservedBytes: start.reservedBytes + 4n * GiB,
      volumeCount: start.volumeCount + 3,
    });
    for (const c of [c1, c2, flat]) await result(c.operation, true);
    // The base is settled from its clones; the reconciler does it for clones confirmed in a batch.
    await reconcileOnce(f.ctx);
    expect(await ledger(files)).toEqual({
      ...start,
      allocatedBytes: start.allocatedBytes + 5n * GiB,
      volumeCount: start.volumeCount + 3,
    });
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
    for (const c of [c1, c2, flat]) {
      const del = await deleteVolume(
        f.ctx,
        create(DeleteVolumeRequestSchema, { volume: c.volume.name }),
        "test",
      );
      await result(del.operation, true);
    }
    // The base stays with its snapshot (the driver keeps it until the snapshot goes).
    expect((await ledger(files)).allocatedBytes).toBe(start.allocatedBytes + 2n * GiB);
    const del = await deleteSnapshot(
      f.ctx,
      create(DeleteSnapshotRequestSchema, { volume: src.name, snapshot: "gold" }),
      "test",
    );
    await result(del.operation, true);
    expect(await ledger(files)).toEqual(start);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("gives a base back when its only clone failed", async () => {
    const start = await ledger(files);
    const snap = await createSnapshot(
      f.ctx,
      create(CreateSnapshotRequestSchema, { volume: "golden-img", name: "gold2" }),
      "test",
    );
    await result(snap.operation, true);
    const c = await cloneVolume(
      f.ctx,
      create(CloneVolumeRequestSchema, { sourceVolume: "golden-img", sourceSnapshot: "gold2", name: "vm-x" }),
      "test",
    );
    expect((await ledger(files)).reservedBytes).toBe(start.reservedBytes + 2n * GiB);
    await result(c.operation, false);
    expect(await ledger(files)).toEqual({ ...start, allocatedBytes: start.allocatedBytes + GiB });
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("refuses a linked clone when it and its base do not both fit, writing nothing", async () => {
    const src = await addVolume(f.sql, { name: "tight", poolId: files, format: "qcow2" });
    const snap = await createSnapshot(
      f.ctx,
      create(CreateSnapshotRequestSchema, { volume: src.name, name: "t" }),
      "test",
    );
    await result(snap.operation, true);
    const l = await ledger(files);
    // Room for the clone's 1 GiB, not for the base as well.
    const total = l.allocatedBytes + l.reservedBytes + GiB + GiB / 2n;
    await f.sql`update pools set total_bytes = ${total}, free_bytes = ${total} where id = ${files}`;
    const volumes = await countRows(f.sql, "volumes");
    await expect(
      cloneVolume(
        f.ctx,
        create(CloneVolumeRequestSchema, { sourceVolume: src.name, sourceSnapshot: "t", name: "vm-t" }),
        "test",
      ),
    ).rejects.toMatchObject({ code: "resource_exhausted", message: expect.stringMatching(/cannot take/) });
    expect(await countRows(f.sql, "volumes")).toBe(volumes);
    expect(await ledger(files)).toEqual(l);
    // A flattened clone needs no base: it fits.
    const flat = await cloneVolume(
      f.ctx,
      create(CloneVolumeRequestSchema, {
        sourceVolume: src.name,
        sourceSnapshot: "t",
        name: "vm-t",
        flatten: true,
      }),
      "test",
    );
    expect(flat.volume.state).toBe("creating");
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });
});

describe("an expired snapshot reservation (on PGlite)", () => {
  let f: ServiceFixture;

  beforeAll(async () => {
    f = await openServiceFixture({ reservationTtlMs: 1000 });
    await f.addPool("vg", "lvm", ["raw"]);
  });
  afterAll(async () => {
    await f?.close();
  });

  it("is released by the reconciler, failing the snapshot and its operation; a late result changes nothing", async () => {
    await addVolume(f.sql, { name: "slow", poolId: "h1/vg", format: "raw" });
    const [start] = await f.sql`select allocated_bytes, reserved_bytes from pools where id = 'h1/vg'`;
    const out = await createSnapshot(
      f.ctx,
      create(CreateSnapshotRequestSchema, { volume: "slow", name: "s1" }),
      "test",
    );
    await new Promise((r) => setTimeout(r, 1100));
    await reconcileOnce(f.ctx);
    await reconcileOnce(f.ctx);
    expect(await getSnapshotById(f.sql, out.snapshot.id)).toMatchObject({
      state: "error",
      error: { code: "expired" },
    });
    expect((await getOperation(f.sql, out.operation!.id))?.state).toBe("failed");
    const [after] = await f.sql`select allocated_bytes, reserved_bytes from pools where id = 'h1/vg'`;
    expect(after).toEqual(start);
    await applyResult(
      f.ctx,
      create(OperationResultSchema, { operationId: out.operation!.id, hostId: "h1", success: true }),
    );
    const [late] = await f.sql`select allocated_bytes, reserved_bytes from pools where id = 'h1/vg'`;
    expect(late).toEqual(start);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });
});
